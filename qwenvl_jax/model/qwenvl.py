"""The full Qwen-VL model: ViT -> adapter -> image features spliced into the LLM's input embeddings.

Images arrive per row, `images [B, M, H, W, 3]` (M = the most images any row has; rows with fewer
pad the rest, and `num_images [B]` says how many are real). Every position strictly between an
`<img>` and its `</img>` token is overwritten with the next image feature of that row, in order
(the tag tokens keep their text embeddings), exactly as the released model does. A text-only batch
(`images=None`) never runs the vision tower.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from qwenvl_jax.config import ModelConfig
from qwenvl_jax.model.adapter import Adapter
from qwenvl_jax.model.layers import dtype_of
from qwenvl_jax.model.llm import KVCache, QwenLM
from qwenvl_jax.model.vit import VisionTransformer


class ImageSpanError(ValueError):
  """The image spans in the token ids do not match the images given."""


def inside_image_spans(input_ids: jax.Array, start_id: int, end_id: int) -> jax.Array:
  """True at positions strictly inside an <img> ... </img> span ([B, T] bool): where image features go.
  (text.interface.image_span_mask, on token lists, includes the tags.)"""
  start = input_ids == start_id
  end = input_ids == end_id
  depth = jnp.cumsum(start, axis=1) - jnp.cumsum(end, axis=1)
  return (depth > 0) & ~start


def check_image_spans(input_ids, num_images, tokens_per_image: int, start_id: int, end_id: int):
  """Host-side validation with a clear message: every span holds exactly `tokens_per_image`
  positions and each row has as many spans as images. `num_images` is [B] (ints)."""
  ids = np.asarray(input_ids)
  counts = np.asarray(num_images).reshape(-1)
  for row in range(ids.shape[0]):
    starts = np.flatnonzero(ids[row] == start_id)
    ends = np.flatnonzero(ids[row] == end_id)
    if len(starts) != len(ends) or np.any(ends[: len(starts)] <= starts[: len(ends)]):
      raise ImageSpanError(f"row {row}: unbalanced <img>/</img> tags at positions "
                           f"{starts.tolist()} / {ends.tolist()}")
    if len(starts) > 1 and np.any(starts[1:] < ends[:-1]):
      raise ImageSpanError(f"row {row}: nested <img> spans at positions {starts.tolist()}")
    for s, e in zip(starts, ends):
      if e - s - 1 != tokens_per_image:
        raise ImageSpanError(f"row {row}: the image span at position {s} holds {e - s - 1} tokens, "
                             f"expected {tokens_per_image} (n_queries)")
    if len(starts) != counts[row]:
      raise ImageSpanError(f"row {row}: {len(starts)} image spans in the tokens but "
                           f"{counts[row]} images given")


def splice_image_features(text_embeds: jax.Array, input_ids: jax.Array, features: jax.Array,
                          start_id: int, end_id: int) -> jax.Array:
  """Overwrites image-span positions with features [B, M, Q, D] in row order."""
  b, m, q, d = features.shape
  inside = inside_image_spans(input_ids, start_id, end_id)
  rank = jnp.cumsum(inside, axis=1) - 1  # index of this position among the row's image positions
  flat = features.reshape(b, m * q, d)
  gathered = jnp.take_along_axis(flat, jnp.clip(rank, 0, m * q - 1)[..., None], axis=1)
  return jnp.where(inside[..., None], gathered.astype(text_embeds.dtype), text_embeds)


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


class QwenVL(nnx.Module):

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    cfg.validate()
    self.cfg = cfg
    dtype, param_dtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.visual = VisionTransformer(cfg.vision, remat=cfg.remat, scan_layers=cfg.scan_layers,
                                    attention=cfg.attention, remat_group=cfg.vit_remat_group, **kw)
    self.adapter = Adapter(cfg.adapter, cfg.vision, cfg.llm.hidden, **kw)
    self.llm = QwenLM(cfg.llm, remat=cfg.remat, scan_layers=cfg.scan_layers,
                      attention=cfg.attention, **kw)

  def encode_images(self, images: jax.Array) -> jax.Array:
    """[B, M, H, W, 3] -> [B, M, n_queries, hidden]."""
    b, m = images.shape[:2]
    feats = self.adapter(self.visual(images.reshape(b * m, *images.shape[2:])))
    return feats.reshape(b, m, *feats.shape[1:])

  def embed(self, input_ids: jax.Array, images: jax.Array | None = None,
            num_images: jax.Array | None = None) -> jax.Array:
    """Token embeddings with image features spliced in."""
    cfg = self.cfg
    x = self.llm.embed_tokens(input_ids)
    if images is None:
      if _is_concrete(input_ids) and np.any(np.asarray(input_ids) == cfg.image_start_id):
        raise ImageSpanError("the tokens contain <img> spans but no images were given")
      return x
    if images.ndim != 5:
      raise ImageSpanError(f"images must be [batch, images_per_row, H, W, 3], got {images.shape}")
    if images.shape[0] != input_ids.shape[0]:
      raise ImageSpanError(f"images batch {images.shape[0]} != tokens batch {input_ids.shape[0]}")
    if _is_concrete(input_ids) and (num_images is None or _is_concrete(num_images)):
      counts = np.full(input_ids.shape[0], images.shape[1]) if num_images is None else num_images
      check_image_spans(input_ids, counts, cfg.tokens_per_image, cfg.image_start_id,
                        cfg.image_end_id)
    feats = self.encode_images(images)
    return splice_image_features(x, input_ids, feats, cfg.image_start_id, cfg.image_end_id)

  def __call__(self, input_ids: jax.Array, images: jax.Array | None = None, *,
               num_images: jax.Array | None = None, segment_ids: jax.Array | None = None,
               positions: jax.Array | None = None, cache: KVCache | None = None,
               rope_alpha: jax.Array | float = 1.0, logn: bool = False, return_hidden: bool = False):
    """Logits [B, T, vocab] (and the new cache when one is given).

    segment_ids default to all ones (one causal sequence per row); 0 marks padding. Positions
    default to 0..T-1 per row (continuing from the cache index when decoding).
    """
    b, t = input_ids.shape
    if segment_ids is None:
      segment_ids = jnp.ones((b, t), jnp.int32)
    if positions is None:
      start = 0 if cache is None else cache.index
      positions = jnp.broadcast_to(start + jnp.arange(t, dtype=jnp.int32), (b, t))
    x = self.embed(input_ids, images, num_images)
    hidden, new_cache = self.llm(x, positions, segment_ids, cache=cache, rope_alpha=rope_alpha,
                                 logn=logn)
    out = hidden if return_hidden else self.llm.logits(hidden)
    return out if cache is None else (out, new_cache)
