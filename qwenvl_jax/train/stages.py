"""Builds the stage configs (configs/stage{1,2,3}.py) from their Table-8 values and a model variant.

A stage config file lists its own values (the paper's, and scaled-down `tiny` / `small` ones); this
module adds what all three share and the model of the variant:
  full (default)  configs/qwen_vl_7b.py, at the stage's image size
  tiny            configs/tiny.py  (runs in seconds on a CPU; used by the tests)
  small           configs/small.py (the from-scratch experiments)
"""

from __future__ import annotations

import importlib.util
import pathlib

import ml_collections

MODEL_FILES = {"full": "qwen_vl_7b.py", "tiny": "tiny.py", "small": "small.py"}

# Table 8, identical in the three stages.
COMMON_OPTIM = dict(b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.05, grad_clip=1.0, vit_lr_decay=0.95)


def _model(config_dir: pathlib.Path, variant: str) -> ml_collections.ConfigDict:
  path = config_dir / MODEL_FILES[variant]
  spec = importlib.util.spec_from_file_location(f"qwenvl_model_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(None).model


def build(config_dir, variant: str | None, values: dict[str, dict]) -> ml_collections.ConfigDict:
  """`values[variant]` holds: stage, image_size, seq_len, batch_size, grad_accum, steps, peak_lr,
  min_lr, warmup_steps, frozen, mesh (dict), data (dict) and optional model overrides (`model`)."""
  variant = variant or "full"
  if variant not in values:
    raise ValueError(f"unknown variant {variant!r}; known: {sorted(values)}")
  v = dict(values[variant])
  model = _model(pathlib.Path(config_dir), variant)
  model.vision.image_size = v.pop("image_size")
  for key, value in v.pop("model", {}).items():
    node, *rest = key.split(".")
    if rest:
      model[node][rest[0]] = value
    else:
      model[node] = value
  optim = dict(COMMON_OPTIM, peak_lr=v.pop("peak_lr"), min_lr=v.pop("min_lr"),
               warmup_steps=v.pop("warmup_steps"), frozen=tuple(v.pop("frozen")))
  mesh, data = v.pop("mesh"), v.pop("data")
  top = dict(seed=0, checkpoint_every=1000, keep_checkpoints=3, async_checkpoint=True, log_every=10,
             init="", peak_flops=0.0, pause_after_step=0)
  top.update(v)
  return ml_collections.ConfigDict(dict(model=model, mesh=mesh, optim=optim, data=data, **top))
