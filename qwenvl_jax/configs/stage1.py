"""Stage 1, pre-training (paper §3.1, Table 8): image-text pairs at 224px, LLM frozen.

ViT from OpenCLIP-bigG and LLM from Qwen-7B (`--init` a converted checkpoint), adapter random.
Loss on the caption tokens. Variants: full (default), tiny (28px, seconds on a CPU), small.
Table 8 lists no activation checkpointing; `model.remat` is a memory choice that does not change the
numbers, so the full variant keeps the model config's setting (pick per slice with `qwenvl-jax aot`).
"""

from qwenvl_jax.configs.stages import build

FROZEN = ("llm",)

VALUES = {
    "full": dict(stage=1, image_size=224, seq_len=512, batch_size=30720, grad_accum=6, steps=50_000,
                 peak_lr=2e-4, min_lr=1e-6, warmup_steps=500, frozen=FROZEN,
                 mesh=dict(data=1, fsdp=-1, tensor=1),  # optimizer sharding, no model parallelism
                 # grad_accum 6 (Table 8) = 5120-row microbatches, for a pod of ~160 chips at 32 rows
                 # per chip. Smaller slices keep the batch with more microbatches: grad_accum =
                 # 30720 / (chips x rows per chip), e.g. 240 on a 4-chip v5p (checked with
                 # `qwenvl-jax aot`, docs/tpu.md). Full remat (Table 8 has none) and scanned layers.
                 model=dict(remat="full", scan_layers=True),
                 data=dict(source="array_record", paths=(), tokenizer="", tfds_dir="", format="pretrain",
                           tasks=("caption",), layout="unpacked", max_images=1, num_workers=8)),
    "tiny": dict(stage=1, image_size=28, seq_len=32, batch_size=16, grad_accum=2, steps=20,
                 peak_lr=1e-3, min_lr=1e-5, warmup_steps=2, frozen=FROZEN, checkpoint_every=10,
                 log_every=5, mesh=dict(data=1, fsdp=-1, tensor=1),
                 data=dict(source="synthetic", paths=(), tokenizer="", tfds_dir="", format="pretrain",
                           tasks=("caption",), layout="unpacked", max_images=1, num_workers=0)),
    "small": dict(stage=1, image_size=112, seq_len=128, batch_size=32, grad_accum=2, steps=1000,
                  peak_lr=1e-3, min_lr=1e-5, warmup_steps=50, frozen=FROZEN, checkpoint_every=200,
                  mesh=dict(data=1, fsdp=-1, tensor=1),
                  data=dict(source="synthetic", paths=(), tokenizer="", tfds_dir="", format="pretrain",
                            tasks=("caption",), layout="unpacked", max_images=1, num_workers=0)),
}


def get_config(variant=None):
  return build(variant, VALUES)
