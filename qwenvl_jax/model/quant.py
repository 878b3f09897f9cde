"""Weight-only quantisation of `Linear` kernels: int8, int4 and NF4, dequantised inside the matmul.

Formats (symmetric, no zero point):
  int8  one scale per output channel (over all input dims); values int8; |err| <= scale / 2.
  int4  one scale per group of `group_size` consecutive input features; values packed two per uint8;
        |err| <= scale / 2 with scale = absmax / 7.
  nf4   NormalFloat-4 (QLoRA, Dettmers et al. 2023): the 16 code values below times the group's
        absmax; packed two per uint8; |err| <= absmax * (largest gap between codes) / 2.

Groups run along the kernel's LAST input dim (the minor one of the flattened input, so they are
groups of consecutive input features as in GPTQ / bitsandbytes); that dim must be a multiple of
`group_size`. The packed values and the scales keep the kernel's rank and logical axis names, so
the sharding rules place them like the kernel they replace, including the leading `layers` axis of
scanned, stacked layers.

A quantised `Linear` holds `kernel_q` (`QuantValues`) and `kernel_scale` (`QuantScales`) instead
of `kernel`; neither is an `nnx.Param`, so they are frozen by construction (no gradients, no
optimizer state). `Linear.weight()` is the only place that dequantises (see `dequantize`).

qwix 0.1.8 (Google's JAX quantisation library) was tried first: its NNX PTQ and LoRA interception
both fail on this model's vmap-stacked / scanned layers (the `layers` entry of the variables'
sharding metadata does not match the per-layer arrays inside `nnx.scan`), hence this module.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding

FORMATS = ("int8", "int4", "nf4")

# The NF4 code book: quantiles of N(0, 1) rescaled to [-1, 1], with an exact zero (QLoRA paper,
# Appendix E; the same 16 values as bitsandbytes).
NF4_CODES = np.asarray([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0], np.float32)


class QuantValues(nnx.Variable):
  """Quantised kernel values (int8, or two 4-bit codes per uint8). Frozen: not an nnx.Param."""


class QuantScales(nnx.Variable):
  """Per-channel / per-group dequantisation scales of a quantised kernel."""


@dataclasses.dataclass(frozen=True)
class QuantSpec:
  """Static description of one quantised kernel (part of the module graph, not of its state)."""
  fmt: str
  group_size: int  # 0 for int8 (per output channel)
  n_in: int
  n_out: int


def _check_format(fmt: str, group_size: int):
  if fmt not in FORMATS:
    raise ValueError(f"quantisation format '{fmt}' unknown; choose one of {FORMATS}")
  if fmt != "int8" and (group_size <= 0 or group_size % 2):
    raise ValueError(f"group_size must be a positive even number for {fmt}, got {group_size}")


# --------------------------------------------------------------------------------------------
# Array-level quantise / dequantise. `w` is [*lead, *in, *out] with `lead` stacked-layer dims.


def _pack(codes: jax.Array, axis: int) -> jax.Array:
  """Two 4-bit codes (0..15) per uint8 along `axis`: even index in the low nibble."""
  lo = jax.lax.slice_in_dim(codes, 0, None, 2, axis).astype(jnp.uint8)
  hi = jax.lax.slice_in_dim(codes, 1, None, 2, axis).astype(jnp.uint8)
  return lo | (hi << 4)


def _unpack(packed: jax.Array, axis: int) -> jax.Array:
  lo, hi = packed & 0xF, packed >> 4
  both = jnp.stack([lo, hi], axis=axis + 1)
  shape = list(packed.shape)
  shape[axis] *= 2
  return both.reshape(shape)


def _grouped(x: jax.Array, axis: int, group_size: int) -> jax.Array:
  """Splits `axis` into (n_groups, group_size)."""
  shape = list(x.shape)
  return x.reshape(shape[:axis] + [shape[axis] // group_size, group_size] + shape[axis + 1:])


def quantize_array(w: jax.Array, spec: QuantSpec, scale_dtype=jnp.float32):
  """(values, scales) for a kernel [*lead, *in, *out]; see the module docstring for the layout."""
  n_lead = w.ndim - spec.n_in - spec.n_out
  w = w.astype(jnp.float32)
  if spec.fmt == "int8":
    in_axes = tuple(range(n_lead, n_lead + spec.n_in))
    scale = (jnp.max(jnp.abs(w), axis=in_axes, keepdims=True) / 127.0).astype(scale_dtype)
    safe = jnp.where(scale == 0, 1, scale).astype(jnp.float32)
    return jnp.clip(jnp.round(w / safe), -127, 127).astype(jnp.int8), scale
  axis = n_lead + spec.n_in - 1  # the last input dim
  if w.shape[axis] % spec.group_size:
    raise ValueError(f"input dim {w.shape[axis]} is not a multiple of group_size {spec.group_size}")
  g = _grouped(w, axis, spec.group_size)
  absmax = jnp.max(jnp.abs(g), axis=axis + 1, keepdims=True)
  if spec.fmt == "int4":
    scale = (absmax / 7.0).astype(scale_dtype)
    safe = jnp.where(scale == 0, 1, scale).astype(jnp.float32)
    codes = jnp.clip(jnp.round(g / safe), -8, 7).astype(jnp.int32) + 8
  else:  # nf4: nearest code by the midpoints between codes
    scale = absmax.astype(scale_dtype)
    safe = jnp.where(scale == 0, 1, scale).astype(jnp.float32)
    mids = jnp.asarray((NF4_CODES[1:] + NF4_CODES[:-1]) / 2)
    codes = jnp.searchsorted(mids, jnp.clip(g / safe, -1, 1))
  codes = codes.reshape(w.shape)
  return _pack(codes, axis), jnp.squeeze(scale, axis + 1)


def dequantize(values: jax.Array, scales: jax.Array, spec: QuantSpec, dtype) -> jax.Array:
  """The kernel [*lead, *in, *out] in `dtype` (works on per-layer slices inside a scan too)."""
  if spec.fmt == "int8":
    return (values.astype(jnp.float32) * scales.astype(jnp.float32)).astype(dtype)
  n_lead = values.ndim - spec.n_in - spec.n_out
  axis = n_lead + spec.n_in - 1
  codes = _unpack(values, axis)
  if spec.fmt == "int4":
    levels = codes.astype(jnp.float32) - 8
  else:  # 16 fused compare-selects: a table gather would build an int32 index array per kernel
    levels = jnp.zeros(codes.shape, jnp.float32)
    for i, code in enumerate(NF4_CODES):
      levels = jnp.where(codes == i, np.float32(code), levels)
  g = _grouped(levels, axis, spec.group_size) * jnp.expand_dims(scales.astype(jnp.float32), axis + 1)
  return g.reshape(codes.shape).astype(dtype)


def error_bound(w: jax.Array, spec: QuantSpec) -> jax.Array:
  """Largest |w - dequantize(quantize(w))| each element may have, from its channel/group absmax."""
  n_lead = w.ndim - spec.n_in - spec.n_out
  w = jnp.abs(w.astype(jnp.float32))
  if spec.fmt == "int8":
    absmax = jnp.max(w, axis=tuple(range(n_lead, n_lead + spec.n_in)), keepdims=True)
    return jnp.broadcast_to(absmax / 127.0 / 2, w.shape)
  axis = n_lead + spec.n_in - 1
  absmax = jnp.max(_grouped(w, axis, spec.group_size), axis=axis + 1, keepdims=True)
  step = 1 / 7.0 if spec.fmt == "int4" else float(np.max(np.diff(NF4_CODES)))
  return jnp.broadcast_to(absmax * step / 2, _grouped(w, axis, spec.group_size).shape).reshape(w.shape)


# --------------------------------------------------------------------------------------------
# Model-level API.


def default_include(path: str) -> bool:
  """LLM and ViT linear kernels. The adapter stays in float: it is small and fully trained in
  fine-tuning (the released `fix_vit` trains it), and the embedding / LM head are not `Linear`s."""
  return path.startswith(("llm.", "visual."))


def _linears(model: nnx.Module):
  from qwenvl_jax.model.layers import Linear  # layers imports this module

  for path, module in nnx.iter_modules(model):
    if isinstance(module, Linear):
      yield ".".join(str(p) for p in path), module


def quantize_model(model: nnx.Module, fmt: str = "int8", group_size: int = 64,
                   include: Callable[[str], bool] | None = None, scale_dtype=jnp.float32) -> list[str]:
  """Quantises, in place, every `Linear` kernel whose dotted path (e.g. `llm.blocks.mlp.w1.kernel`)
  passes `include` (default `default_include`). Returns the quantised paths.

  Works on stacked layers (leading `layers` axis) and on sharded models: the new variables keep
  the kernel's logical names and are placed on the kernel's mesh by the sharding rules.
  """
  _check_format(fmt, group_size)
  include = include or default_include
  done = []
  for path, linear in _linears(model):
    if linear.kernel is None or not include(f"{path}.kernel"):
      continue
    var = linear.kernel
    w = var.get_value()
    names = tuple(var.get_metadata().get("out_sharding") or (None,) * w.ndim)
    n_lead = sum(1 for n in names if n == "layers")
    spec = QuantSpec(fmt, 0 if fmt == "int8" else group_size, linear.n_in,
                     w.ndim - n_lead - linear.n_in)
    if fmt != "int8" and w.shape[n_lead + spec.n_in - 1] % group_size:
      raise ValueError(f"{path}.kernel: input dim {w.shape[n_lead + spec.n_in - 1]} is not a "
                       f"multiple of group_size {group_size}")
    quantize = jax.jit(lambda a: quantize_array(a, spec, scale_dtype))
    values, scales = jax.lax.map(quantize, w) if n_lead == 1 else quantize(w)  # one layer at a time
    scale_names = names
    if fmt == "int8":  # the reduced input dims are size 1: unsharded
      scale_names = tuple(None if n_lead <= i < n_lead + spec.n_in else n for i, n in enumerate(names))
    qvar = QuantValues(values, out_sharding=names, eager_sharding=False)
    svar = QuantScales(scales, out_sharding=scale_names, eager_sharding=False)
    if isinstance(getattr(w, "sharding", None), NamedSharding):
      from qwenvl_jax.sharding import param_shardings

      placed = param_shardings({"q": qvar, "s": svar}, w.sharding.mesh)
      qvar.set_value(jax.device_put(values, placed["q"]))
      svar.set_value(jax.device_put(scales, placed["s"]))
    linear.kernel_q, linear.kernel_scale, linear.quant = qvar, svar, spec
    linear.kernel = None
    done.append(f"{path}.kernel")
  return done


def weight_bytes(model_or_state) -> int:
  """Bytes of every array variable of a model (or state / abstract state): what it holds in memory."""
  state = nnx.state(model_or_state) if isinstance(model_or_state, nnx.Module) else model_or_state
  total = 0
  for leaf in jax.tree.leaves(state):
    if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
      total += int(np.prod(leaf.shape)) * jnp.dtype(leaf.dtype).itemsize
  return total


__all__ = ["FORMATS", "NF4_CODES", "QuantValues", "QuantScales", "QuantSpec", "quantize_array",
           "dequantize", "error_bound", "default_include", "quantize_model", "weight_bytes"]
