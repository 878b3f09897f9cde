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
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

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
  total = _chunked_sum(split(h), kernel, split(lab), split(w), jnp.dtype(dtype))
  return total, jnp.sum(weights, dtype=jnp.int32)


def _chunk_scan(h, kernel, lab, w, dtype, with_grads: bool):
  """Scan over chunks [n_chunks, B, C, ...]: summed CE and, with `with_grads`, its gradients wrt the
  chunked hidden states and the kernel (softmax - one-hot, formed while the chunk's logits exist)."""
  zero_dk = constrain(jnp.zeros(kernel.shape, jnp.float32), ("embed", "vocab"))

  def run(h_c, lab_c, w_c):
    logits = _head(h_c, kernel, dtype)
    ce = jnp.sum(jnp.where(w_c, _ce(logits, lab_c), 0.0))
    if not with_grads:
      return ce, None, None
    probs = jax.nn.softmax(logits, axis=-1)
    onehot = jax.nn.one_hot(lab_c, logits.shape[-1], dtype=jnp.float32)
    dlogits = constrain((probs - onehot) * w_c[..., None], LOGIT_NAMES).astype(dtype)
    dh = jnp.einsum("bcv,dv->bcd", dlogits, kernel.astype(dtype), preferred_element_type=jnp.float32)
    dk = jnp.einsum("bcd,bcv->dv", h_c.astype(dtype), dlogits, preferred_element_type=jnp.float32)
    return ce, dh, dk

  def skip(h_c, lab_c, w_c):
    if not with_grads:
      return jnp.zeros((), jnp.float32), None, None
    return jnp.zeros((), jnp.float32), jnp.zeros(h_c.shape, jnp.float32), jnp.zeros_like(zero_dk)

  def body(carry, xs):
    total, dk_acc = carry
    ce, dh, dk = jax.lax.cond(jnp.any(xs[2]), run, skip, *xs)
    if with_grads:
      dk_acc = dk_acc + dk
    return (total + ce, dk_acc), dh

  (total, dk), dh = jax.lax.scan(body, (jnp.zeros((), jnp.float32),
                                        zero_dk if with_grads else None), (h, lab, w))
  return total, dh, dk


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _chunked_sum(h, kernel, lab, w, dtype):
  return _chunk_scan(h, kernel, lab, w, dtype, with_grads=False)[0]


def _chunked_sum_fwd(h, kernel, lab, w, dtype):
  # The gradients are formed in the forward pass, chunk by chunk, so the backward pass neither keeps
  # nor recomputes logits (a rematerialising backward would run the head's forward matmul twice).
  total, dh, dk = _chunk_scan(h, kernel, lab, w, dtype, with_grads=True)
  return total, (dh.astype(h.dtype), dk.astype(kernel.dtype), lab, w)


def _chunked_sum_bwd(dtype, res, g):
  dh, dk, lab, w = res
  no_grad = lambda x: np.zeros(x.shape, jax.dtypes.float0)  # integer / bool inputs
  return (g.astype(dh.dtype) * dh, g.astype(dk.dtype) * dk, no_grad(lab), no_grad(w))


_chunked_sum.defvjp(_chunked_sum_fwd, _chunked_sum_bwd)


def cross_entropy(hidden: jax.Array, kernel: jax.Array, labels: jax.Array, weights: jax.Array, *,
                  chunk: int, dtype=jnp.float32) -> tuple[jax.Array, jax.Array]:
  """`chunked_cross_entropy` for chunk > 0, `plain_cross_entropy` for chunk == 0."""
  if chunk <= 0:
    return plain_cross_entropy(hidden, kernel, labels, weights, dtype)
  return chunked_cross_entropy(hidden, kernel, labels, weights, chunk=chunk, dtype=dtype)
