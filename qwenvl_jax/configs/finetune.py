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
from qwenvl_jax.configs.stages import build


def _stage3_values():
  return stage3.VALUES


LORA = dict(enabled=True, rank=64, alpha=16.0, dropout=0.05, targets=("c_attn", "attn.c_proj", "w1", "w2"),
            modules_to_save=(), quantize="", group_size=64, init="")
TINY_LORA = dict(LORA, rank=4, alpha=8.0, group_size=8)  # tiny widths: head_dim 8


def _variant(base: str, lora: dict | None, **changes):
  v = dict(_stage3_values()[base], **changes)
  config = build(base, {base: v})
  config.lora = dict(lora or dict(LORA, enabled=False))
  return config


def get_config(variant=None):
  variant = variant or "lora"
  # Released SFT: bf16, lr 1e-5, cosine, 2,048-token rows. Micro-batch 1 row per chip with full
  # remat (1 chip for Q-LoRA, 4 for the others: `--set grad_accum=...` for other slices). Compiled
  # (`qwenvl-jax aot`, docs/finetune.md): Q-LoRA on v5e:1x1 14.9 of 15.75 GiB, LoRA on v5e:2x2 10.0;
  # full does not fit 4 v5e chips (state alone 23.5 GiB per chip): use 16 (v5e:4x4, fsdp 16,
  # `--set grad_accum=4`). LoRA's
  # peak_lr 1e-4 is our choice (the factors start at zero and learn slowly at 1e-5).
  full = dict(batch_size=64, grad_accum=16, steps=2000, warmup_steps=20,
              mesh=dict(data=1, fsdp=-1, tensor=1))
  # LoRA: the frozen base is stored in bf16 (it never changes, and the released weights are bf16);
  # the LoRA factors stay float32 master weights (model/lora.py creates them so).
  lora_model = dict(remat="full", scan_layers=True, param_dtype="bfloat16")
  if variant == "full":
    return _variant("full", None, **full)
  if variant == "lora":
    return _variant("full", LORA, **dict(full, peak_lr=1e-4, model=lora_model))
  if variant == "qlora":
    return _variant("full", dict(LORA, quantize="nf4"),
                    **dict(full, batch_size=16, peak_lr=1e-4, model=lora_model))
  tiny = dict(steps=8, warmup_steps=2, checkpoint_every=4)
  if variant == "tiny_full":
    return _variant("tiny", None, **tiny)
  if variant == "tiny_lora":
    return _variant("tiny", TINY_LORA, **tiny)
  if variant == "tiny_qlora":
    return _variant("tiny", dict(TINY_LORA, quantize="nf4"), **tiny)
  raise ValueError(f"unknown variant {variant!r}; known: full, lora, qlora, tiny_full, tiny_lora, "
                   "tiny_qlora")
