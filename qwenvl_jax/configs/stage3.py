"""Stage 3, supervised fine-tuning (paper §3.3, Table 8): ChatML dialogues, ViT frozen.

Initialise from stage 2 (`--init STAGE2_WORKDIR`). Loss on the assistant answers and the special
tokens only (the data's loss_mask). Frozen as in the released finetune.py (`fix_vit`): the whole
visual tower except `attn_pool`; our adapter module holds attn_pool *and* ln_post / proj, so those
two are frozen explicitly. `--set optim.frozen="('visual',)"` trains them too.
"""

from qwenvl_jax.configs.stages import mesh, model, optim, pick, run_config

FROZEN = ("visual", "adapter.ln_post", "adapter.proj")
DATA = dict(paths=(), tokenizer="", tfds_dir="", format="chatml", layout="unpacked")


def full():
  # Table 8: model parallelism 2, grad_accum 8 = 16-row microbatches. Full remat, scanned layers. A
  # 4-chip v5p: `--set mesh.tensor=1` (4 rows per chip per microbatch). 16 v5e chips (v5e:4x4):
  # `--set mesh.tensor=1` with this grad_accum (1 row per chip: 15.1 of 15.75 GiB; tensor=2 does not
  # fit). `qwenvl-jax aot`, docs/tpu.md.
  return run_config(
      stage=3, model=model("qwen_vl_7b", 448, remat="full", scan_layers=True),
      seq_len=2048, batch_size=128, grad_accum=8, steps=8000,
      optim=optim(peak_lr=1e-5, min_lr=1e-6, warmup_steps=3000, frozen=FROZEN), mesh=mesh(tensor=2),
      data=dict(DATA, source="jsonl", max_images=4, num_workers=8))


def tiny():
  return run_config(
      stage=3, model=model("tiny", 56), seq_len=64, batch_size=16, grad_accum=2, steps=20,
      optim=optim(peak_lr=1e-3, min_lr=1e-5, warmup_steps=2, frozen=FROZEN), mesh=mesh(),
      data=dict(DATA, source="synthetic", max_images=2, num_workers=0), checkpoint_every=10,
      log_every=5)


def small():
  return run_config(
      stage=3, model=model("small", 224), seq_len=256, batch_size=32, grad_accum=2, steps=500,
      optim=optim(peak_lr=1e-4, min_lr=1e-6, warmup_steps=50, frozen=FROZEN), mesh=mesh(),
      data=dict(DATA, source="synthetic", max_images=2, num_workers=0), checkpoint_every=100)


def get_config(variant=None):
  return pick(dict(full=full, tiny=tiny, small=small), variant)
