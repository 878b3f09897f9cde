"""Stage 2, multi-task pre-training (paper §3.2, Table 8): 448px, everything trained, packed rows.

Initialise from stage 1 (`--init STAGE1_WORKDIR`): the ViT's position table is a fixed
pos_grid x pos_grid table resized to the patch grid on every forward, so 224 -> 448 changes no
tensor. Seven tasks packed into 2048-token rows (at most 2048 // 258 = 7 images per row).
Model parallelism 2 (Table 8) = the `tensor` mesh axis.
"""

from qwenvl_jax.configs.stages import mesh, model, optim, pick, run_config

TASKS = ("caption", "vqa", "grounding", "ref_grounding", "grounded_caption", "ocr", "pure_text")
DATA = dict(paths=(), tokenizer="", tfds_dir="", format="pretrain", tasks=TASKS, layout="packed")


def full():
  # Table 8: model parallelism 2 (`tensor`), grad_accum 8 = 512-row microbatches, for a pod where
  # data x fsdp shards hold 1-2 rows each. Smaller slices keep the batch with more microbatches:
  # grad_accum = 4096 / (data x fsdp x rows per shard); a 4-chip v5p fits with `--set mesh.tensor=1
  # --set grad_accum=1024` (1 row per chip, 89.5 of 95 GiB: `qwenvl-jax aot`, docs/tpu.md). Full
  # remat, scanned layers.
  # 16 v5e chips do NOT hold this stage with float32 moments on the device (fp32 weights, Adam
  # moments and the gradient accumulator of the 9.6B model are 9 GiB of a chip's 15.75 at fsdp=16,
  # before one microbatch's gradient, the row's activations and its 7 images): fsdp=16 needs
  # > 16.9 GiB, tensor=2 or 4 more. 16 v4 chips do (22.9 of 30.75 GiB, `--set mesh.tensor=1
  # --set grad_accum=256`); see docs/tpu.md for v5e
  # (the vocabulary-parallel loss head, `model.loss_shard_vocab`, and bf16 Adam moments,
  # `--set optim.moment_dtype=bfloat16`, with what they measured). For v5e also
  # `--set optim.offload_moments=True` (Adam moments in host memory): 14.05 GiB per chip at fsdp 16
  # with --set mesh.tensor=1 --set grad_accum=256: fits (12.70 adding `--set
  # model.vit_remat_group=8`, ViT remat in groups, 13% more FLOPs; docs/tpu.md).
  return run_config(
      stage=2, model=model("qwen_vl_7b", 448, remat="full", scan_layers=True),
      seq_len=2048, batch_size=4096, grad_accum=8, steps=19_000,
      optim=optim(peak_lr=5e-5, min_lr=1e-5, warmup_steps=400), mesh=mesh(tensor=2),
      data=dict(DATA, source="array_record", max_images=7, num_workers=8))


def tiny():
  return run_config(
      stage=2, model=model("tiny", 56), seq_len=64, batch_size=16, grad_accum=2, steps=20,
      optim=optim(peak_lr=1e-3, min_lr=1e-5, warmup_steps=2), mesh=mesh(),
      data=dict(DATA, source="synthetic", max_images=2, num_workers=0), checkpoint_every=10,
      log_every=5)


def small():
  return run_config(
      stage=2, model=model("small", 224), seq_len=256, batch_size=32, grad_accum=2, steps=1000,
      optim=optim(peak_lr=5e-4, min_lr=1e-5, warmup_steps=50), mesh=mesh(),
      data=dict(DATA, source="synthetic", max_images=2, num_workers=0), checkpoint_every=200)


def get_config(variant=None):
  return pick(dict(full=full, tiny=tiny, small=small), variant)
