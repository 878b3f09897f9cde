"""Builds the stage configs (stage1/2/3 in this package) from their Table-8 values and a model variant.

A stage config lists its own values (the paper's, and scaled-down `tiny` / `small` ones); this
module adds what all three share and the model of the variant:
  full (default)  qwen_vl_7b, at the stage's image size
  tiny            tiny  (runs in seconds on a CPU; used by the tests)
  small           small (the from-scratch experiments)
"""

from __future__ import annotations

import importlib

import ml_collections

MODEL_MODULES = {"full": "qwen_vl_7b", "tiny": "tiny", "small": "small"}

# Table 8, identical in the three stages.
COMMON_OPTIM = dict(b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.05, grad_clip=1.0, vit_lr_decay=0.95)


def _model(variant: str) -> ml_collections.ConfigDict:
  return importlib.import_module(f"qwenvl_jax.configs.{MODEL_MODULES[variant]}").model_config()


def build(variant: str | None, values: dict[str, dict]) -> ml_collections.ConfigDict:
  """`values[variant]` holds: stage, image_size, seq_len, batch_size, grad_accum, steps, peak_lr,
  min_lr, warmup_steps, frozen, mesh (dict), data (dict) and optional model overrides (`model`)."""
  variant = variant or "full"
  if variant not in values:
    raise ValueError(f"unknown variant {variant!r}; known: {sorted(values)}")
  v = dict(values[variant])
  model = _model(variant)
  model.vision.image_size = v.pop("image_size")
  for key, value in v.pop("model", {}).items():
    node, *rest = key.split(".")
    if rest:
      model[node][rest[0]] = value
    else:
      model[node] = value
  optim = dict(COMMON_OPTIM, peak_lr=v.pop("peak_lr"), min_lr=v.pop("min_lr"),
               warmup_steps=v.pop("warmup_steps"), frozen=tuple(v.pop("frozen")))
  mesh, data = dict(dict(rules=()), **v.pop("mesh")), v.pop("data")
  top = dict(seed=0, checkpoint_every=1000, keep_checkpoints=3, async_checkpoint=True, log_every=10,
             init="", peak_flops=0.0, pause_after_step=0)
  top.update(v)
  return ml_collections.ConfigDict(dict(model=model, mesh=mesh, optim=optim, data=data, **top))
