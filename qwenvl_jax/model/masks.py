"""Attention masks from segment ids and positions: one rule for causal, packed and cached attention.

A query attends to a key iff both belong to the same segment, the key is not padding (segment 0),
and the key's position is not after the query's. Positions restart at 0 in every packed segment and
stay monotone inside it, so this single rule covers plain causal rows, packed rows and KV caches.
"""

import jax
import jax.numpy as jnp


def attention_mask(q_segment_ids, kv_segment_ids, q_positions, kv_positions, causal: bool = True):
  """Boolean mask [B, 1, Tq, Tk] (broadcasts over heads); True means "may attend"."""
  same = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
  valid = (kv_segment_ids != 0)[:, None, :]
  mask = same & valid
  if causal:
    mask = mask & (kv_positions[:, None, :] <= q_positions[:, :, None])
  return mask[:, None, :, :]


def segment_positions(segment_ids):
  """Positions restarting at 0 for each run of equal segment ids in a row ([B, T] int32)."""
  segment_ids = jnp.asarray(segment_ids)
  t = jnp.arange(segment_ids.shape[-1])
  starts = jnp.concatenate(
      [jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
  start_index = jnp.where(starts, t[None, :], 0)
  start_index = jax.lax.cummax(start_index, axis=1)
  return (t[None, :] - start_index).astype(jnp.int32)
