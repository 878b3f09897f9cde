"""Next-token cross entropy through the LM head without materialising [rows, T, vocab] logits.

The LM head of Qwen-VL (151,936 words) dominates a training step's FLOPs and memory at small widths and
is the largest temporary at 7B (a 2048-token row's fp32 logits and their gradient: 2 x 1.2 GB). Only
target positions need logits: image spans, prompts and padding carry no loss. So:

  1. per row, the target positions are moved to the front (a stable argsort of the weights; rows keep
     their own tokens, so a batch sharded over devices stays local);
  2. the positions are cut into chunks of `chunk` tokens per row, and a scan runs the head + log-softmax
     on one chunk [rows, chunk, vocab] at a time; a chunk in which no row has a target is skipped
     (`lax.cond`), so the head runs on ~ceil(most targets in a row / chunk) chunks, not on T;
  3. the gradients are formed in the same pass (`custom_vjp`): while a chunk's logits exist, softmax -
     one-hot gives d(logits), hence d(hidden) for the chunk and the head's gradient, accumulated over
     the scan; the backward pass only scales them by the incoming cotangent. So no pass keeps more
     than one chunk of logits alive and none recomputes them (a rematerialising backward would run
     the head's forward matmul twice: 8 instead of 6 FLOPs per weight and position). Without
     differentiation (evaluation) only the loss is computed.

Logits are constrained to the logical names ("act_batch", "act_length", "act_vocab"), so the vocabulary
stays sharded over `tensor` and the log-sum-exp reduces across it. `plain_cross_entropy` is the
reference (full logits), kept as the `model.loss_chunk = 0` path and for tests.

Vocabulary-parallel head (`shard_vocab`, `model.loss_shard_vocab`). With rows sharded over fsdp, the
chunk's logits need the whole [D, V] head on every chip: XLA all-gathers it per chunk (2 bytes x D x V)
and the head's gradient is a full fp32 [D, V] partial sum per chip before its reduce-scatter (at 7B:
1.16 + 2.32 GiB per chip). With `shard_vocab` the small side moves instead: each chunk's hidden
states [rows, chunk, D] are gathered over the row shards ("loss_rows"), the head is re-laid out once
per step to [D, V / shards] ("loss_embed", "loss_vocab"), every chip computes its vocabulary slice of
the logits of all rows, the log-sum-exp / softmax reduce across the vocabulary shards, and the head's
gradient comes out local and vocabulary-sharded; d(hidden) is reduced back onto the row shards. The
mesh axes behind these names are the rules' choice (`sharding.DEFAULT_RULES`).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jax.sharding import PartitionSpec as P

from qwenvl_jax.sharding import active_spec, constrain, shard_count, spec_axes

LOGIT_NAMES = ("act_batch", "act_length", "act_vocab")


class _Names(NamedTuple):
  """Logical names of the chunk loop's arrays: rows-sharded (default) or vocabulary-parallel."""
  hidden: tuple  # a chunk's hidden states [B, C, D] as the head reads them
  logits: tuple  # [B, C, V]
  kernel: tuple  # the head [D, V] and its gradient


ROW_SHARDED = _Names(("act_batch", "act_length", "act_embed"), LOGIT_NAMES, ("embed", "vocab"))
VOCAB_PARALLEL = _Names(("loss_rows", "act_length", "loss_embed"),
                        ("loss_rows", "act_length", "loss_vocab"), ("loss_embed", "loss_vocab"))


def _head(hidden: jax.Array, kernel: jax.Array, dtype, names: _Names = ROW_SHARDED) -> jax.Array:
  """hidden [B, C, D] -> float32 logits [B, C, V] (matmul in the compute dtype, fp32 accumulate)."""
  hidden = constrain(hidden.astype(dtype), names.hidden)
  logits = jnp.einsum("bcd,dv->bcv", hidden, kernel.astype(dtype),
                      preferred_element_type=jnp.float32)
  return constrain(logits, names.logits)


def _ce(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-position CE [B, C] of float32 logits [B, C, V] against integer labels [B, C]."""
  lse = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
  return lse - picked


def plain_cross_entropy(hidden: jax.Array, kernel: jax.Array, labels: jax.Array, weights: jax.Array,
                        dtype=jnp.float32) -> tuple[jax.Array, jax.Array]:
  """(summed CE over positions with weights True, their count): full [B, N, V] logits (reference)."""
  logits = constrain(hidden.astype(dtype) @ kernel.astype(dtype), LOGIT_NAMES).astype(jnp.float32)
  ce = _ce(logits, labels)
  return jnp.sum(jnp.where(weights, ce, 0.0)), jnp.sum(weights, dtype=jnp.int32)


def chunked_cross_entropy(hidden: jax.Array, kernel: jax.Array, labels: jax.Array, weights: jax.Array,
                          *, chunk: int, dtype=jnp.float32,
                          shard_vocab: bool = False) -> tuple[jax.Array, jax.Array]:
  """Same value and gradients as `plain_cross_entropy`, one [B, chunk, V] slice of logits at a time,
  only over chunks that hold targets; `shard_vocab`: the vocabulary-parallel head (module doc).

  hidden [B, N, D], kernel [D, V], labels [B, N] int, weights [B, N] bool.
  """
  b, n, d = hidden.shape
  shard_vocab = shard_vocab and _vocab_splits_as_rows(b, kernel.shape)
  names = VOCAB_PARALLEL if shard_vocab else ROW_SHARDED
  if shard_vocab:  # the head in the loop's layout, once per call (outside the scan)
    kernel = _vocab_parallel_head(kernel)
  chunk = max(1, min(chunk, n))
  # Targets first in every row (stable: the order among targets does not matter for a sum, but
  # stability keeps the program deterministic).
  order = jnp.argsort(jnp.logical_not(weights), axis=1, stable=True)
  take = lambda x: jnp.take_along_axis(x, order.reshape(order.shape + (1,) * (x.ndim - 2)), axis=1)
  h, lab, w = take(hidden), take(labels), take(weights)
  n_chunks = -(-n // chunk)
  pad = n_chunks * chunk - n
  if pad:
    h = jnp.pad(h, ((0, 0), (0, pad), (0, 0)))
    lab, w = jnp.pad(lab, ((0, 0), (0, pad))), jnp.pad(w, ((0, 0), (0, pad)))
  # [B, n_chunks * chunk, ...] -> [n_chunks, B, chunk, ...]: the scan's leading axis.
  split = lambda x: jnp.moveaxis(x.reshape(b, n_chunks, chunk, *x.shape[2:]), 1, 0)
  total = _chunked_sum(split(h), kernel, split(lab), split(w), jnp.dtype(dtype), names)
  return total, jnp.sum(weights, dtype=jnp.int32)


def _vocab_splits_as_rows(rows: int, kernel_shape) -> bool:
  """Whether the vocabulary-parallel head spreads the work at least as widely as the rows are
  sharded. Otherwise (no mesh, or a vocabulary the mesh axes do not divide: 151,936 = 2^7 x 1187,
  so more than 128 shards) gathered rows would be computed redundantly, up to the whole batch's
  full logits on every chip: the row-sharded head is used instead."""
  mesh, spec = active_spec(VOCAB_PARALLEL.kernel, kernel_shape)
  if mesh is None:
    return False
  _, row_spec = active_spec(("act_batch",), (rows,))
  vocab_shards, row_shards = shard_count(mesh, spec[1]), shard_count(mesh, row_spec[0])
  return vocab_shards > 1 and vocab_shards >= row_shards


def _vocab_parallel_head(kernel: jax.Array) -> jax.Array:
  """The head [D, V] from its parameter layout ("embed", "vocab") to the loss's ("loss_embed",
  "loss_vocab") with one all-to-all of each chip's shard.

  XLA's partitioner does not find that move by itself: asked for it directly it gathers the whole
  head on every chip and slices it (at 7B a 2.3 GiB fp32 temporary, in both directions). Splitting V
  into [vocab shards, V / vocab shards] first makes it a move of the embed dim's mesh axes onto the
  inner V dim, which it does as an all-to-all; the result is V sharded over (vocab axes, embed axes),
  which the default "loss_vocab" rule extends by the remaining axes (a local slice). The gradient
  goes back the same way (autodiff transposes the reshapes and constraints)."""
  mesh, spec = active_spec(("embed", "vocab"), kernel.shape)
  if mesh is None:
    return kernel
  d_axes, v_axes = spec_axes(spec[0]), spec_axes(spec[1])
  d, v = kernel.shape
  n_v, n_d = shard_count(mesh, spec[1]), shard_count(mesh, spec[0])
  if d_axes and v % (n_v * n_d) == 0:
    x = kernel.reshape(d, n_v, v // n_v)
    x = jax.lax.with_sharding_constraint(x, P(None, v_axes or None, d_axes))
    kernel = x.reshape(d, v)
  return constrain(kernel, VOCAB_PARALLEL.kernel)


def _chunk_scan(h, kernel, lab, w, dtype, names: _Names, with_grads: bool):
  """Scan over chunks [n_chunks, B, C, ...]: summed CE and, with `with_grads`, its gradients wrt the
  chunked hidden states and the kernel (softmax - one-hot, formed while the chunk's logits exist)."""
  zero_dk = constrain(jnp.zeros(kernel.shape, jnp.float32), names.kernel)
  # d(hidden) goes back onto the row shards (a reduce-scatter across vocabulary shards when the
  # head is vocabulary-parallel): the scan stacks it for every chunk.
  dh_names = ROW_SHARDED.hidden

  def run(h_c, lab_c, w_c):
    logits = _head(h_c, kernel, dtype, names)
    # The label's logit by a compare with the vocabulary index, not a gather: elementwise + a sum,
    # so it stays on each chip's vocabulary slice (a gather along a sharded axis may be all-gathered).
    is_label = lab_c[..., None] == jax.lax.broadcasted_iota(jnp.int32, logits.shape, 2)
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.sum(jnp.where(is_label, logits, 0.0), axis=-1)
    ce = jnp.sum(jnp.where(w_c, lse - picked, 0.0))
    if not with_grads:
      return ce, None, None
    probs = jnp.exp(logits - lse[..., None])  # softmax from the log-sum-exp already reduced
    w_l = constrain(w_c, names.logits[:2])
    dlogits = constrain((probs - is_label) * w_l[..., None], names.logits).astype(dtype)
    dh = jnp.einsum("bcv,dv->bcd", dlogits, kernel.astype(dtype), preferred_element_type=jnp.float32)
    dk = jnp.einsum("bcd,bcv->dv", constrain(h_c.astype(dtype), names.hidden), dlogits,
                    preferred_element_type=jnp.float32)
    return ce, constrain(dh, dh_names), constrain(dk, names.kernel)

  def skip(h_c, lab_c, w_c):
    if not with_grads:
      return jnp.zeros((), jnp.float32), None, None
    return (jnp.zeros((), jnp.float32), constrain(jnp.zeros(h_c.shape, jnp.float32), dh_names),
            jnp.zeros_like(zero_dk))

  def body(carry, xs):
    total, dk_acc = carry
    ce, dh, dk = jax.lax.cond(jnp.any(xs[2]), run, skip, *xs)
    if with_grads:
      dk_acc = dk_acc + dk
    return (total + ce, dk_acc), dh

  (total, dk), dh = jax.lax.scan(body, (jnp.zeros((), jnp.float32),
                                        zero_dk if with_grads else None), (h, lab, w))
  return total, dh, dk


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _chunked_sum(h, kernel, lab, w, dtype, names):
  return _chunk_scan(h, kernel, lab, w, dtype, names, with_grads=False)[0]


def _chunked_sum_fwd(h, kernel, lab, w, dtype, names):
  # The gradients are formed in the forward pass, chunk by chunk, so the backward pass neither keeps
  # nor recomputes logits (a rematerialising backward would run the head's forward matmul twice).
  total, dh, dk = _chunk_scan(h, kernel, lab, w, dtype, names, with_grads=True)
  return total, (dh.astype(h.dtype), dk.astype(kernel.dtype), lab, w)


def _chunked_sum_bwd(dtype, names, res, g):
  dh, dk, lab, w = res
  no_grad = lambda x: np.zeros(x.shape, jax.dtypes.float0)  # integer / bool inputs
  return (g.astype(dh.dtype) * dh, g.astype(dk.dtype) * dk, no_grad(lab), no_grad(w))


_chunked_sum.defvjp(_chunked_sum_fwd, _chunked_sum_bwd)


def cross_entropy(hidden: jax.Array, kernel: jax.Array, labels: jax.Array, weights: jax.Array, *,
                  chunk: int, dtype=jnp.float32, shard_vocab: bool = False
                  ) -> tuple[jax.Array, jax.Array]:
  """`chunked_cross_entropy` for chunk > 0, `plain_cross_entropy` for chunk == 0."""
  if chunk <= 0:
    return plain_cross_entropy(hidden, kernel, labels, weights, dtype)
  return chunked_cross_entropy(hidden, kernel, labels, weights, chunk=chunk, dtype=dtype,
                               shard_vocab=shard_vocab)
