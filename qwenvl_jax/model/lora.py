"""LoRA (Hu et al. 2021) on `Linear` layers: y = x W + dropout(x) A B * alpha / r.

A `Linear` kernel [*in, *out] gets `lora_a` [*in, r] and `lora_b` [r, *out] (`LoRAParam`s): A
keeps the kernel's input axis names and B its output names, so the sharding rules shard them like
the kernel (the rank axis is replicated); stacked layers get the leading `layers` axis. As in HF
PEFT, A starts Kaiming-uniform (bound 1 / sqrt(fan_in)) and B at zero, so the model is unchanged
until B trains. The base kernel may be float or quantised (`quant.py`): Q-LoRA is LoRA over a
quantised base, the LoRA factors in `lora_dtype` (bf16 by default in the configs).

Dropout on the LoRA input needs a key at trace time: the train step opens `dropout(key)` around
the forward pass; outside it (eval, chat, export) dropout is off. Inside a layer scan the same key
serves every layer (masks differ by layer only through their inputs); that keeps the scanned
graph a single body.

Which parameters train is the optimizer's business (`optim.trainable`), not this module's.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Iterable

import jax
import jax.numpy as jnp
from flax import nnx

_DROPOUT_KEY: contextvars.ContextVar = contextvars.ContextVar("lora_dropout_key", default=None)


class LoRAParam(nnx.Param):
  """A LoRA factor (trainable; also what the PEFT export writes)."""


@contextlib.contextmanager
def dropout(key: jax.Array | None):
  """Enables LoRA dropout with `key` for the forward passes traced inside the block."""
  token = _DROPOUT_KEY.set(key)
  try:
    yield
  finally:
    _DROPOUT_KEY.reset(token)


def lora_delta(linear, x: jax.Array) -> jax.Array:
  """dropout(x) . A . B * scale, contracting x's trailing `n_in` dims (the `Linear` hook)."""
  dtype, n = linear.dtype, linear.n_in
  key = _DROPOUT_KEY.get()
  if key is not None and linear.lora_dropout > 0:
    keep = jax.random.bernoulli(key, 1 - linear.lora_dropout, x.shape)
    x = jnp.where(keep, x / (1 - linear.lora_dropout), 0)
  a = linear.lora_a[...].astype(dtype)
  b = linear.lora_b[...].astype(dtype)
  h = jax.lax.dot_general(x.astype(dtype), a,
                          ((tuple(range(x.ndim - n, x.ndim)), tuple(range(n))), ((), ())))
  y = jax.lax.dot_general(h, b, (((h.ndim - 1,), (0,)), ((), ())))
  return y * jnp.asarray(linear.lora_scale, dtype)


def _names(var: nnx.Variable, ndim: int) -> tuple:
  return tuple(var.get_metadata().get("out_sharding") or (None,) * ndim)


def linear_modules(model: nnx.Module) -> dict:
  """Every `Linear` by dotted module path, e.g. `llm.blocks.attn.qkv`."""
  from qwenvl_jax.model import layers  # layers imports this module

  return {".".join(map(str, p)): m for p, m in nnx.iter_modules(model)
          if isinstance(m, layers.Linear)}


def apply_lora(model: nnx.Module, paths: Iterable[str], rank: int, alpha: float, dropout: float,
               rngs: nnx.Rngs, dtype=jnp.float32) -> list[str]:
  """Adds LoRA factors, in place, to the `Linear`s at `paths` (dotted module paths)."""
  modules = linear_modules(model)
  paths = list(paths)
  unknown = [p for p in paths if p not in modules]
  if unknown:
    raise ValueError(f"lora targets {unknown} are not Linear layers; known: {sorted(modules)}")
  for path in paths:
    linear = modules[path]
    if linear.lora_a is not None:
      raise ValueError(f"{path} already has LoRA factors")
    var = linear.kernel if linear.quant is None else linear.kernel_q
    names = _names(var, var.get_value().ndim)
    n_lead = sum(1 for n in names if n == "layers")
    spec = linear.quant
    shape = var.get_value().shape if spec is None else None
    if shape is None:  # packed values: recover the float shape from the static spec
      shape = list(var.get_value().shape)
      if spec.fmt != "int8":
        shape[n_lead + spec.n_in - 1] *= 2
    lead, n_in = tuple(shape[:n_lead]), linear.n_in
    in_shape, out_shape = tuple(shape[n_lead:n_lead + n_in]), tuple(shape[n_lead + n_in:])
    lead_names, in_names = names[:n_lead], names[n_lead:n_lead + n_in]
    out_names = names[n_lead + n_in:]
    bound = 1 / math.sqrt(math.prod(in_shape))
    a = jax.random.uniform(rngs.params(), (*lead, *in_shape, rank), dtype, -bound, bound)
    linear.lora_a = LoRAParam(a, out_sharding=(*lead_names, *in_names, None), eager_sharding=False)
    linear.lora_b = LoRAParam(jnp.zeros((*lead, rank, *out_shape), dtype),
                              out_sharding=(*lead_names, None, *out_names), eager_sharding=False)
    linear.lora_scale = alpha / rank
    linear.lora_dropout = dropout
  return paths


def merged_kernel(linear) -> jax.Array:
  """The float32 kernel with this layer's LoRA update folded in (stacked layers included)."""
  from qwenvl_jax.model import quant

  if linear.quant is None:
    w = linear.kernel.get_value().astype(jnp.float32)
  else:
    w = quant.dequantize(linear.kernel_q.get_value(), linear.kernel_scale.get_value(), linear.quant,
                         jnp.float32)
  if linear.lora_a is None:
    return w
  a = linear.lora_a.get_value().astype(jnp.float32)
  b = linear.lora_b.get_value().astype(jnp.float32)
  n_lead = a.ndim - linear.n_in - 1
  lead = "abcd"[:n_lead]
  ins = "efgh"[:linear.n_in]
  outs = "ijkl"[:b.ndim - n_lead - 1]
  delta = jnp.einsum(f"{lead}{ins}r,{lead}r{outs}->{lead}{ins}{outs}", a, b)
  return w + delta * linear.lora_scale


def merge_lora(model: nnx.Module) -> list[str]:
  """Folds every LoRA update into its (float32) kernel and removes the factors, in place. Every
  quantised kernel comes out dequantised, with LoRA or not (Q-LoRA quantises layers LoRA does not
  target, e.g. mlp.c_proj): the merged weights are plain float kernels. -> the paths that had LoRA."""
  merged = []
  for path, linear in linear_modules(model).items():
    if linear.lora_a is None and linear.quant is None:
      continue
    var = linear.kernel if linear.quant is None else linear.kernel_q
    names = _names(var, var.get_value().ndim)
    w = merged_kernel(linear)
    linear.kernel = nnx.Param(w, out_sharding=names, eager_sharding=False)
    if linear.quant is not None:
      del linear.kernel_q, linear.kernel_scale
      linear.quant = None
    if linear.lora_a is not None:
      merged.append(path)
    linear.lora_a = linear.lora_b = None
  return merged


__all__ = ["LoRAParam", "dropout", "lora_delta", "linear_modules", "apply_lora", "merged_kernel",
           "merge_lora"]
