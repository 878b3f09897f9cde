"""Fine-tuning Qwen-VL(-Chat) on one's own data: full, LoRA and Q-LoRA (the released finetune.py).

    qwenvl-jax train --config configs/finetune.py:lora --init BASE --workdir DIR \
        --set "data.paths=('train.json',)" --set data.tokenizer=BASE/qwen.tiktoken

Variants: `full` (stage-3 freezing: ViT frozen, adapter trained, as `fix_vit`), `lora` (r 64,
alpha 16, dropout 0.05 on c_attn / attn.c_proj / w1 / w2, everything else frozen), `qlora` (LoRA
over an NF4 base, groups of 64), and `tiny_full` / `tiny_lora` / `tiny_qlora`, which run on a CPU.
Data: the released fine-tuning JSON (`data.source=jsonl` reads it, `format=chatml`). A non-chat
base: `--set "lora.modules_to_save=('wte','lm_head')"` as the released script does. Continue a
PEFT adapter: `--set lora.init=ADAPTER`. See docs/finetune.md.
"""

from qwenvl_jax.configs import stage3
from qwenvl_jax.configs.stages import pick

LORA = dict(enabled=True, rank=64, alpha=16.0, dropout=0.05, targets=("c_attn", "attn.c_proj", "w1", "w2"),
            modules_to_save=(), quantize="", group_size=64, init="")
TINY_LORA = dict(LORA, rank=4, alpha=8.0, group_size=8)  # tiny widths: head_dim 8


def _finetune(config, lora: dict | None = None, *, optim: dict = (), model: dict = (), **run):
  """`config` with these run / optim / model fields changed and its `lora` section (off: None)."""
  for section, values in ((config, run), (config.optim, dict(optim)), (config.model, dict(model))):
    for key, value in values.items():
      section[key] = value
  config.lora = dict(lora or dict(LORA, enabled=False))
  return config


def full(lora: dict | None = None, **run):
  # Released SFT: bf16, lr 1e-5, cosine, 2,048-token rows. Micro-batch 1 row per chip with full
  # remat (1 chip for Q-LoRA, 4 for the others: `--set grad_accum=...` for other slices). Compiled
  # (`qwenvl-jax aot`, docs/finetune.md): Q-LoRA on v5e:1x1 14.9 of 15.75 GiB, LoRA on v5e:2x2 10.0;
  # full does not fit 4 v5e chips (state alone 23.5 GiB per chip): use 16 (v5e:4x4, fsdp 16,
  # `--set grad_accum=4`).
  config = stage3.full()
  config.mesh.tensor = 1
  run = dict(dict(batch_size=64, grad_accum=16, steps=2000), **run)
  if lora is None:
    return _finetune(config, optim=dict(warmup_steps=20), **run)
  # LoRA's peak_lr 1e-4 is our choice (the factors start at zero and learn slowly at 1e-5). The frozen
  # base is stored in bf16 (it never changes, and the released weights are bf16); the LoRA factors stay
  # float32 master weights (model/lora.py creates them so).
  return _finetune(config, lora, optim=dict(warmup_steps=20, peak_lr=1e-4),
                   model=dict(param_dtype="bfloat16"), **run)


def lora():
  return full(LORA)


def qlora():
  return full(dict(LORA, quantize="nf4"), batch_size=16)


def tiny_full(lora: dict | None = None):
  return _finetune(stage3.tiny(), lora, optim=dict(warmup_steps=2), steps=8, checkpoint_every=4)


def tiny_lora():
  return tiny_full(TINY_LORA)


def tiny_qlora():
  return tiny_full(dict(TINY_LORA, quantize="nf4"))


def get_config(variant=None):
  return pick(dict(full=full, lora=lora, qlora=qlora, tiny_full=tiny_full, tiny_lora=tiny_lora,
                   tiny_qlora=tiny_qlora), variant or "lora")
