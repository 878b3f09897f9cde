"""The optimizer of Table 8: clip -> AdamW -> ViT layer-wise LR decay -> warmup + cosine, with freezing.

Parameters are the pure dict of the model's `nnx.Param`s (fixed `Buffer`s such as the adapter's
sin-cos table never reach the optimizer). Paths below are dotted, e.g. `visual.blocks.mlp.fc_in.kernel`.

Freezing. `optax.multi_transform` labels every leaf "train" or "frozen"; frozen leaves go through
`optax.set_to_zero()`, so no Adam moments are allocated for them (unlike `optax.masked` around adam),
and the gradient clip sees only trained leaves (as PyTorch does when frozen tensors have no grad).

Layer-wise decay (BEiT / EVA convention, factor d = `vit_lr_decay`, L = ViT depth). The ViT blocks are
stacked on a leading [L] axis under `visual.blocks`, so block i (0-based) gets its factor as a per-row
scale of the update along that axis:
  visual.blocks.*                               d^(L - i)   (last block d, first block d^L)
  visual.patch_embed, visual.pos_embed, ln_pre  d^(L + 1)   (the deepest: they come before block 0)
  adapter.*, llm.*                              1
The factor multiplies the whole AdamW update including its decoupled weight decay, i.e. it acts as the
tensor's learning rate (PyTorch param groups with lr * factor).

Weight decay (0.05) applies to matrices only. No decay for: norm scales and biases (`*.scale`,
`*.bias`), the token embedding (`llm.embed`), position tables (`visual.pos_embed`) and the adapter's
learnable queries (`adapter.query`, a set of embeddings). Decayed: every projection kernel,
`visual.patch_embed`, `adapter.proj` and `llm.lm_head`.

Schedule: linear warmup from 0 to `peak_lr` over `warmup_steps`, then cosine to `min_lr` at `steps`.

Moments: float32 by default; `moment_dtype = "bfloat16"` stores both Adam moments in bf16
(`stored_as`), half the optimizer state (at 7B on 16 chips: 4.5 -> 2.25 GiB per chip).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from qwenvl_jax.config import ModelConfig, OptimConfig

TRAIN, FROZEN = "train", "frozen"
NO_DECAY_LEAVES = ("scale", "bias")
NO_DECAY_PATHS = ("llm.embed", "visual.pos_embed", "adapter.query")
VIT_STEM = ("visual.patch_embed", "visual.pos_embed", "visual.ln_pre")


def path_str(path) -> str:
  """A jax key path -> 'a.b.c'."""
  return ".".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _under(path: str, prefix: str) -> bool:
  return path == prefix or path.startswith(prefix + ".")


def map_with_paths(fn: Callable[[str, Any], Any], tree):
  return jax.tree_util.tree_map_with_path(lambda p, x: fn(path_str(p), x), tree)


def check_frozen(params, frozen) -> None:
  """Every frozen prefix must name at least one parameter (typos would silently train)."""
  paths = [path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
  for prefix in frozen:
    if not any(_under(p, prefix) for p in paths):
      tops = sorted({p.split(".")[0] for p in paths})
      raise ValueError(f"config field 'optim.frozen': '{prefix}' matches no parameter "
                       f"(top-level modules: {tops})")


def is_frozen(path: str, frozen) -> bool:
  return any(_under(path, f) for f in frozen)


def labels(params, frozen) -> Any:
  """'train' / 'frozen' per leaf."""
  return map_with_paths(lambda p, _: FROZEN if is_frozen(p, frozen) else TRAIN, params)


def decays(path: str) -> bool:
  return path.split(".")[-1] not in NO_DECAY_LEAVES and not any(_under(path, p) for p in NO_DECAY_PATHS)


def layer_factor(path: str, n_vit_layers: int, decay: float):
  """The LR factor of one parameter: a float, or a [L] array for stacked ViT blocks."""
  if _under(path, "visual.blocks"):
    return decay ** (n_vit_layers - np.arange(n_vit_layers, dtype=np.float64))
  if any(_under(path, p) for p in VIT_STEM):
    return decay ** (n_vit_layers + 1)
  return 1.0


class LayerScaleState(optax.EmptyState):
  pass


def scale_by_layer(n_vit_layers: int, decay: float) -> optax.GradientTransformation:
  """Multiplies each update by its `layer_factor` (per row of the stacked ViT blocks)."""

  def init_fn(params):
    del params
    return LayerScaleState()

  def update_fn(updates, state, params=None):
    del params

    def scale(path, u):
      f = layer_factor(path, n_vit_layers, decay)
      if isinstance(f, float):
        return u if f == 1.0 else u * jnp.asarray(f, u.dtype)
      return u * jnp.asarray(f, u.dtype).reshape((-1,) + (1,) * (u.ndim - 1))

    return map_with_paths(scale, updates), state

  return optax.GradientTransformation(init_fn, update_fn)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformationExtraArgs:
  """`optax.clip_by_global_norm` as one scalar multiply per element (factor min(1, max_norm / norm),
  as PyTorch's `clip_grad_norm_`), taking the norm from the caller when it has it (`update(...,
  global_norm=n)`, the train step's, of the same trained leaves).

  Same state (empty) and the same result up to rounding when clipping. Why: on CPU, XLA writes out
  any tree it cannot recompute inside its readers' loops: optax's select against `t / norm *
  max_norm` (XLA does not duplicate a divide), and the input of the norm's reduction (a YNNPACK
  call that fuses nothing before it). Each costs a write and a read of every trained parameter's
  size: an AdamW update of 200M fp32 parameters on 2 cores takes 0.36-0.47 s with optax's clip,
  0.20-0.23 s with this one (`docs/performance.md`)."""

  def update_fn(updates, state, params=None, *, global_norm=None, **extra_args):
    del params, extra_args
    norm = optax.global_norm(updates) if global_norm is None else global_norm
    factor = jnp.minimum(1.0, max_norm / norm)
    return jax.tree.map(lambda t: t * factor.astype(t.dtype), updates), state

  return optax.GradientTransformationExtraArgs(optax.init_empty_state, update_fn)


def stored_as(inner: optax.GradientTransformation, dtype) -> optax.GradientTransformation:
  """`inner` with its floating-point state stored in `dtype` and updated in float32.

  For Adam in bf16: optax's `mu_dtype` covers the first moment only; this rounds both moments
  (round to nearest) after each float32 update, and the update itself is computed from the
  float32 moments of this step, before rounding. Counters (integers) are untouched."""
  dtype = jnp.dtype(dtype)
  if dtype == jnp.float32:
    return inner

  def cast(tree, to):
    return jax.tree.map(lambda x: x.astype(to) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)

  def init_fn(params):
    return cast(inner.init(params), dtype)

  def update_fn(updates, state, params=None):
    updates, new_state = inner.update(updates, cast(state, jnp.float32), params)
    return updates, cast(new_state, dtype)

  return optax.GradientTransformation(init_fn, update_fn)


def schedule(cfg: OptimConfig, steps: int) -> optax.Schedule:
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=cfg.peak_lr, warmup_steps=cfg.warmup_steps,
      decay_steps=max(steps, cfg.warmup_steps + 1), end_value=cfg.min_lr)


def make_optimizer(cfg: OptimConfig, model_cfg: ModelConfig, params, steps: int):
  """(optax transformation, label tree) for the parameter pure dict `params` (arrays or shapes)."""
  check_frozen(params, cfg.frozen)
  decay_mask = lambda tree: map_with_paths(lambda p, _: decays(p), tree)
  trained = optax.chain(
      clip_by_global_norm(cfg.grad_clip),
      stored_as(optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps), cfg.moment_dtype),
      optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask),
      scale_by_layer(model_cfg.vision.layers, cfg.vit_lr_decay),
      optax.scale_by_learning_rate(schedule(cfg, steps)),
  )
  label_tree = labels(params, cfg.frozen)
  tx = optax.multi_transform({TRAIN: trained, FROZEN: optax.set_to_zero()}, label_tree)
  return tx, label_tree


def lr_groups(cfg: OptimConfig, model_cfg: ModelConfig, steps: int, step: int) -> dict[str, float]:
  """Learning rates of the parameter groups at `step` (0-based update count), for the metrics.

  Frozen groups are left out. ViT groups: the stem (patch/pos embeddings, ln_pre), the first and the
  last block.
  """
  lr = float(schedule(cfg, steps)(step))
  n, d = model_cfg.vision.layers, cfg.vit_lr_decay
  groups = {"llm": ("llm.embed", lr), "adapter": ("adapter.query", lr),
            "vit_stem": ("visual.pos_embed", lr * d ** (n + 1)),
            "vit_block_0": ("visual.blocks", lr * d ** n), f"vit_block_{n - 1}": ("visual.blocks", lr * d)}
  return {name: v for name, (path, v) in groups.items() if not is_frozen(path, cfg.frozen)}


def count_state(opt_state) -> int:
  """Number of array elements held by an optimizer state (moments + counters)."""
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(opt_state)))
