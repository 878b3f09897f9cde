"""Stage 1, pre-training (paper §3.1, Table 8): image-text pairs at 224px, LLM frozen.

ViT from OpenCLIP-bigG and LLM from Qwen-7B (`--init` a converted checkpoint), adapter random.
Loss on the caption tokens. Variants: full (default), tiny (28px, seconds on a CPU), small.
Table 8 lists no activation checkpointing; `model.remat` is a memory choice that does not change the
numbers, so the full variant keeps the model config's setting (pick per slice with `qwenvl-jax aot`).
"""

from qwenvl_jax.configs.stages import mesh, model, optim, pick, run_config

FROZEN = ("llm",)
DATA = dict(paths=(), tokenizer="", tfds_dir="", format="pretrain", tasks=("caption",), layout="unpacked",
            max_images=1)


def full():
  return run_config(
      stage=1, model=model("qwen_vl_7b", 224, remat="full", scan_layers=True),
      seq_len=512, batch_size=30720, grad_accum=6, steps=50_000,
      optim=optim(peak_lr=2e-4, min_lr=1e-6, warmup_steps=500, frozen=FROZEN),
      mesh=mesh(),  # optimizer sharding, no model parallelism
      data=dict(DATA, source="array_record", num_workers=8))


def tiny():
  return run_config(
      stage=1, model=model("tiny", 28), seq_len=32, batch_size=16, grad_accum=2, steps=20,
      optim=optim(peak_lr=1e-3, min_lr=1e-5, warmup_steps=2, frozen=FROZEN), mesh=mesh(),
      data=dict(DATA, source="synthetic", num_workers=0), checkpoint_every=10, log_every=5)


def small():
  return run_config(
      stage=1, model=model("small", 112), seq_len=128, batch_size=32, grad_accum=2, steps=1000,
      optim=optim(peak_lr=1e-3, min_lr=1e-5, warmup_steps=50, frozen=FROZEN), mesh=mesh(),
      data=dict(DATA, source="synthetic", num_workers=0), checkpoint_every=200)


def get_config(variant=None):
  return pick(dict(full=full, tiny=tiny, small=small), variant)
