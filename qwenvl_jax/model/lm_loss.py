"""Next-token cross entropy through the LM head without materialising [rows, T, vocab] logits.

The LM head of Qwen-VL (151,936 words) dominates a training step's FLOPs and memory at small widths and
is the largest temporary at 7B (a 2048-token row's fp32 logits and their gradient: 2 x 1.2 GB). Only
target positions need logits: image spans, prompts and padding carry no loss. So:

  1. per row, the target positions are moved to the front (a stable argsort of the weights; rows keep
     their own tokens, so a batch sharded over devices stays local);
  2. the positions are cut into chunks of `chunk` tokens per row, and a scan runs the head + log-softmax
     on one chunk [rows, chunk, vocab] at a time; a chunk in which no row has a target is skipped
     (`lax.cond`), so the head runs on ~ceil(most targets in a row / chunk) chunks, not on T;
  3. each chunk is rematerialised in the backward pass (`jax.checkpoint`), so neither pass keeps more
     than one chunk of logits alive; the head's gradient accumulates over the scan.

Logits are constrained to the logical names ("act_batch", "act_length", "act_vocab"), so the vocabulary
stays sharded over `tensor` and the log-sum-exp reduces across it. `plain_cross_entropy` is the
reference (full logits), kept as the `model.loss_chunk = 0` path and for tests.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from qwenvl_jax.sharding import constrain

LOGIT_NAMES = ("act_batch", "act_length", "act_vocab")


def _head(hidden: jax.Array, kernel: jax.Array, dtype) -> jax.Array:
  """hidden [B, C, D] -> float32 logits [B, C, V] (matmul in the compute dtype, fp32 accumulate)."""
  logits = jnp.einsum("bcd,dv->bcv", hidden.astype(dtype), kernel.astype(dtype),
                      preferred_element_type=jnp.float32)
  return constrain(logits, LOGIT_NAMES)


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
                          *, chunk: int, dtype=jnp.float32) -> tuple[jax.Array, jax.Array]:
  """Same value and gradients as `plain_cross_entropy`, one [B, chunk, V] slice of logits at a time,
  only over chunks that hold targets.

  hidden [B, N, D], kernel [D, V], labels [B, N] int, weights [B, N] bool.
  """
  b, n, d = hidden.shape
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
  h, lab, w = split(h), split(lab), split(w)

  @jax.checkpoint
  def chunk_ce(h_c, lab_c, w_c):
    ce = _ce(_head(h_c, kernel, dtype), lab_c)
    return jnp.sum(jnp.where(w_c, ce, 0.0))

  def body(total, xs):
    h_c, lab_c, w_c = xs
    s = jax.lax.cond(jnp.any(w_c), chunk_ce, lambda *_: jnp.zeros((), jnp.float32), h_c, lab_c, w_c)
    return total + s, None

  total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), (h, lab, w))
  return total, jnp.sum(weights, dtype=jnp.int32)


def cross_entropy(hidden: jax.Array, kernel: jax.Array, labels: jax.Array, weights: jax.Array, *,
                  chunk: int, dtype=jnp.float32) -> tuple[jax.Array, jax.Array]:
  """`chunked_cross_entropy` for chunk > 0, `plain_cross_entropy` for chunk == 0."""
  if chunk <= 0:
    return plain_cross_entropy(hidden, kernel, labels, weights, dtype)
  return chunked_cross_entropy(hidden, kernel, labels, weights, chunk=chunk, dtype=dtype)
