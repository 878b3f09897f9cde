"""What the three stage configs share (Table 8) and the pieces a run config is assembled from.

Each stage module (stage1/2/3 in this package) writes its variants as functions:
  full()   the paper's run: the 7B model (qwen_vl_7b) at the stage's image size
  tiny()   the tiny model; runs in seconds on a CPU (the tests)
  small()  the small model (the from-scratch experiments)
"""

from __future__ import annotations

import ml_collections

from qwenvl_jax.configs import qwen_vl_7b, small as small_model, tiny as tiny_model

MODELS = {"qwen_vl_7b": qwen_vl_7b, "tiny": tiny_model, "small": small_model}

# Table 8, identical in the three stages.
COMMON_OPTIM = dict(b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.05, grad_clip=1.0, vit_lr_decay=0.95)

# Run settings every stage starts from.
RUN_DEFAULTS = dict(seed=0, checkpoint_every=1000, keep_checkpoints=3, async_checkpoint=True, log_every=10,
                    init="", peak_flops=0.0, pause_after_step=0)


def model(name: str, image_size: int, **fields) -> ml_collections.ConfigDict:
  """The model config `name` (qwen_vl_7b, tiny, small) at `image_size`, with top-level `fields` set."""
  cfg = MODELS[name].model_config()
  cfg.vision.image_size = image_size
  for key, value in fields.items():
    cfg[key] = value
  return cfg


def optim(peak_lr: float, min_lr: float, warmup_steps: int, frozen: tuple = ()) -> dict:
  """Table 8's AdamW with this stage's learning-rate schedule and frozen parameter prefixes."""
  return dict(COMMON_OPTIM, peak_lr=peak_lr, min_lr=min_lr, warmup_steps=warmup_steps,
              frozen=tuple(frozen))


def mesh(data: int = 1, fsdp: int = -1, tensor: int = 1) -> dict:
  return dict(data=data, fsdp=fsdp, tensor=tensor, rules=())


def run_config(*, stage: int, model: ml_collections.ConfigDict, optim: dict, mesh: dict, data: dict,
               **run) -> ml_collections.ConfigDict:
  """A stage's run config: `run` holds seq_len, batch_size, grad_accum, steps and any of
  RUN_DEFAULTS to change."""
  return ml_collections.ConfigDict(dict(model=model, mesh=mesh, optim=optim, data=data,
                                        **dict(RUN_DEFAULTS, stage=stage, **run)))


def pick(variants: dict, variant: str | None) -> ml_collections.ConfigDict:
  """`variants[variant]()`, "full" by default."""
  variant = variant or "full"
  if variant not in variants:
    raise ValueError(f"unknown variant {variant!r}; known: {sorted(variants)}")
  return variants[variant]()


def build(variant: str | None, values: dict[str, dict]) -> ml_collections.ConfigDict:
  """A run config from a table of values per variant (the research configs in experiments/ and the
  demo keep theirs so): stage, image_size, seq_len, batch_size, grad_accum, steps, peak_lr, min_lr,
  warmup_steps, frozen, mesh, data, optional `model` field overrides; the model is the variant's
  (full -> qwen_vl_7b, tiny, small)."""
  variant = variant or "full"
  if variant not in values:
    raise ValueError(f"unknown variant {variant!r}; known: {sorted(values)}")
  v = dict(values[variant])
  m = model({"full": "qwen_vl_7b"}.get(variant, variant), v.pop("image_size"))
  for key, value in v.pop("model", {}).items():
    node, *rest = key.split(".")
    if rest:
      m[node][rest[0]] = value
    else:
      m[node] = value
  o = optim(v.pop("peak_lr"), v.pop("min_lr"), v.pop("warmup_steps"), v.pop("frozen"))
  return run_config(model=m, optim=o, mesh=dict(dict(rules=()), **v.pop("mesh")), data=v.pop("data"),
                    **v)
