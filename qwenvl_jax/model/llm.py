"""Qwen-7B decoder: RMSNorm, rotary embeddings, fused qkv with bias, SwiGLU MLP, untied LM head.

The blocks run under one `nnx.scan` (inference on CPU unrolls them over per-layer copies:
`QwenLM.unstack_layers`). Attention masking comes from segment ids and positions
(`masks.attention_mask`), which covers causal rows, packed rows and KV caches with one rule. The
KV cache is a plain pytree threaded through the scan (not module state), so generation stays a pure
jitted function: see `init_cache`.

Inference-only options of the reference: dynamic NTK rotary scaling (`rope_alpha`, fixed at the
first pass over a context) and log-n query scaling beyond the training length (`logn=True`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from qwenvl_jax.config import LLMConfig
from qwenvl_jax.model import attention, layers
from qwenvl_jax.model.layers import Linear, RMSNorm, constrain
from qwenvl_jax.model.masks import attention_mask


class KVCache(NamedTuple):
  """Per-layer keys/values [L, B, S, H, D] plus the segment id / position of every slot [B, S].

  `index` is the next slot to write; all rows write the same slots (rows of different lengths are
  left-padded with segment 0, which the mask ignores). With per-layer blocks, decoding uses k and v
  as tuples of L heads-first arrays [B, H, S, D] instead (`per_layer_cache`).
  """
  k: jax.Array
  v: jax.Array
  segment_ids: jax.Array
  positions: jax.Array
  index: jax.Array


def per_layer_cache(cache: KVCache) -> KVCache:
  """The decode layout for per-layer blocks (`QwenLM.unstack_layers`): k/v as L heads-first arrays
  [B, H, S, D]. Make it outside the decode loop's jit (a jit output has the plain row-major layout;
  inside, XLA kept the transposed layout and copied it on every step).

  Why (XLA on CPU): on the stacked [L, B, S, H, D] array, each layer's one-column write + read
  became a copy of the whole cache per layer and step, and the [B, S, H, D] layout a transposed
  copy of k and v for the attention products; so a step's cost grew with rows x window instead of
  being dominated by the weights, which a batch shares. Per layer and heads first, each step
  writes one column in place and attends with plain batched matrix-vector products."""
  if is_per_layer(cache):
    return cache
  split = lambda x: tuple(jnp.swapaxes(x[i], 1, 2) for i in range(x.shape[0]))
  return cache._replace(k=split(cache.k), v=split(cache.v))


def stacked_cache(cache: KVCache) -> KVCache:
  """The [L, B, S, H, D] form of a cache (inverse of `per_layer_cache`)."""
  if not is_per_layer(cache):
    return cache
  stack = lambda xs: jnp.stack([jnp.swapaxes(x, 1, 2) for x in xs])
  return cache._replace(k=stack(cache.k), v=stack(cache.v))


def is_per_layer(cache: KVCache) -> bool:
  return isinstance(cache.k, (tuple, list))


def init_cache(cfg: LLMConfig, batch: int, max_len: int, dtype=jnp.float32) -> KVCache:
  shape = (cfg.layers, batch, max_len, cfg.heads, cfg.head_dim)
  return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype),
                 jnp.zeros((batch, max_len), jnp.int32), jnp.zeros((batch, max_len), jnp.int32),
                 jnp.zeros((), jnp.int32))


class Attention(nnx.Module):

  def __init__(self, cfg: LLMConfig, *, rngs, dtype, param_dtype, impl: str = "xla"):
    self.cfg = cfg
    self.impl = impl  # model.attention (model/attention.py); KV-cache calls always use XLA
    self.qkv = Linear((cfg.hidden,), (3, cfg.heads, cfg.head_dim), ("embed",),
                      ("qkv", "heads", "head_dim"), use_bias=True, rngs=rngs, dtype=dtype,
                      param_dtype=param_dtype)
    self.out = Linear((cfg.heads, cfg.head_dim), (cfg.hidden,), ("heads", "head_dim"), ("embed",),
                      use_bias=False, rngs=rngs, dtype=dtype, param_dtype=param_dtype)

  def __call__(self, x, cos, sin, mask, q_scale, cache_kv=None, index=None, seg_pos=None,
               heads_first=False):
    """`cache_kv`: this layer's (k, v), [B, S, H, D] or with `heads_first` [B, H, S, D]."""
    qkv = self.qkv(x)
    names = ("act_batch", "act_length", "act_heads", None)
    q, k, v = (constrain(qkv[:, :, i], names) for i in range(3))
    q, k = layers.apply_rope(q, cos, sin), layers.apply_rope(k, cos, sin)
    if q_scale is not None:
      q = (q * q_scale[:, :, None, None]).astype(q.dtype)
    if cache_kv is not None:
      ck, cv = cache_kv
      if heads_first:
        put = lambda c, new: jax.lax.dynamic_update_slice(
            c, jnp.swapaxes(new, 1, 2).astype(c.dtype), (0, 0, index, 0))
        cache_kv = (put(ck, k), put(cv, v))
        k, v = (jnp.swapaxes(c, 1, 2) for c in cache_kv)  # (T > 1 only; a step reads cache_kv)
      else:
        k = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), (0, index, 0, 0))
        v = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), (0, index, 0, 0))
        cache_kv = (k, v)
    scale = self.cfg.head_dim ** -0.5
    if cache_kv is None and attention.resolve(self.impl, q.dtype) != "xla":
      out = attention.self_attention(q, k, v, impl=self.impl, scale=scale, causal=True,
                                     segment_ids=seg_pos[0], positions=seg_pos[1])
    elif heads_first and q.shape[1] == 1:  # a decode step
      out = layers.single_query_attention(q, *cache_kv, mask, scale).astype(q.dtype)
    else:
      out = layers.dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask, scale)
    return self.out(out), cache_kv


class MLP(nnx.Module):
  """c_proj(w1(x) * silu(w2(x))): in the released checkpoint w2 is the gate."""

  def __init__(self, cfg: LLMConfig, *, rngs, dtype, param_dtype):
    kw = dict(use_bias=False, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.w1 = Linear((cfg.hidden,), (cfg.mlp_dim,), ("embed",), ("mlp",), **kw)
    self.w2 = Linear((cfg.hidden,), (cfg.mlp_dim,), ("embed",), ("mlp",), **kw)
    self.c_proj = Linear((cfg.mlp_dim,), (cfg.hidden,), ("mlp",), ("embed",), **kw)

  def __call__(self, x):
    h = self.w1(x) * jax.nn.silu(self.w2(x))
    return self.c_proj(constrain(h, ("act_batch", "act_length", "act_mlp")))


class DecoderBlock(nnx.Module):

  def __init__(self, cfg: LLMConfig, *, rngs, dtype, param_dtype, attention_impl: str = "xla"):
    self.ln_1 = RMSNorm(cfg.hidden, cfg.rms_eps, ("embed",), param_dtype=param_dtype)
    self.attn = Attention(cfg, rngs=rngs, dtype=dtype, param_dtype=param_dtype, impl=attention_impl)
    self.ln_2 = RMSNorm(cfg.hidden, cfg.rms_eps, ("embed",), param_dtype=param_dtype)
    self.mlp = MLP(cfg, rngs=rngs, dtype=dtype, param_dtype=param_dtype)

  def __call__(self, x, cos, sin, mask, q_scale, cache_kv=None, index=None, seg_pos=None,
               heads_first=False):
    h, cache_kv = self.attn(self.ln_1(x), cos, sin, mask, q_scale, cache_kv, index, seg_pos,
                            heads_first)
    x = x + h
    x = x + self.mlp(self.ln_2(x))
    return constrain(x, ("act_batch", "act_length", "act_embed")), cache_kv


class QwenLM(nnx.Module):

  def __init__(self, cfg: LLMConfig, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32,
               remat: str = "none", scan_layers: bool = True, attention: str = "xla"):
    self.cfg = cfg
    self.dtype = dtype
    self.remat = remat
    self.scan = scan_layers
    self.embed = layers.param(rngs, layers.normal(0.02), (cfg.vocab_size, cfg.hidden),
                              ("vocab", "embed"), param_dtype)
    self.blocks = layers.stacked(
        lambda r: DecoderBlock(cfg, rngs=r, dtype=dtype, param_dtype=param_dtype,
                               attention_impl=attention), cfg.layers, rngs)
    self.ln_f = RMSNorm(cfg.hidden, cfg.rms_eps, ("embed",), param_dtype=param_dtype)
    self.lm_head = layers.param(rngs, layers.normal(0.02), (cfg.hidden, cfg.vocab_size),
                                ("embed", "vocab"), param_dtype)

  def embed_tokens(self, ids: jax.Array) -> jax.Array:
    x = jnp.take(self.embed[...], ids, axis=0).astype(self.dtype)
    return constrain(x, ("act_batch", "act_length", "act_embed"))

  def logits(self, hidden: jax.Array) -> jax.Array:
    out = hidden.astype(self.dtype) @ self.lm_head[...].astype(self.dtype)
    return constrain(out, ("act_batch", "act_length", "act_vocab"))

  def logn_scale(self, positions: jax.Array) -> jax.Array:
    """log(p+1)/log(seq_length) for query positions past the training length, else 1."""
    p1 = positions.astype(jnp.float32) + 1
    return jnp.where(p1 > self.cfg.seq_length, jnp.log(p1) / math.log(self.cfg.seq_length), 1.0)

  def __call__(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array,
               cache: KVCache | None = None, rope_alpha: jax.Array | float = 1.0,
               logn: bool = False):
    """x [B, T, D] input embeddings -> (final hidden states after ln_f [B, T, D], new cache)."""
    cfg = self.cfg
    base = layers.ntk_base(cfg.rope_base, cfg.head_dim, rope_alpha)
    cos, sin = layers.rope_cos_sin(positions, cfg.head_dim, base)
    q_scale = self.logn_scale(positions) if logn else None
    if cache is None:
      mask = attention_mask(segment_ids, segment_ids, positions, positions)
      kv_seg = kv_pos = None
    else:
      t = x.shape[1]
      kv_seg = jax.lax.dynamic_update_slice(cache.segment_ids, segment_ids.astype(jnp.int32),
                                            (0, cache.index))
      kv_pos = jax.lax.dynamic_update_slice(cache.positions, positions.astype(jnp.int32),
                                            (0, cache.index))
      mask = attention_mask(segment_ids, kv_seg, positions, kv_pos)

    if isinstance(self.blocks, nnx.List):
      return self._run_unstacked(x, cos, sin, mask, q_scale, cache, kv_seg, kv_pos,
                                 (segment_ids, positions))
    if cache is None:
      def body(x, block):
        return block(x, cos, sin, mask, q_scale, seg_pos=(segment_ids, positions))[0]

      x = layers.scan_layers(body, x, self.blocks, remat=self.remat, scan=self.scan,
                             n_layers=cfg.layers)
      return self.ln_f(x), None

    def body_cached(x, block, ck, cv):
      x, (ck, cv) = block(x, cos, sin, mask, q_scale, (ck, cv), cache.index)
      return x, (ck, cv)

    x, (k, v) = layers.scan_layers(body_cached, x, self.blocks, cache.k, cache.v, remat="none",
                                   scan=self.scan, n_layers=cfg.layers, has_ys=True)
    new_cache = KVCache(k, v, kv_seg, kv_pos, cache.index + t)
    return self.ln_f(x), new_cache

  def _run_unstacked(self, x, cos, sin, mask, q_scale, cache, kv_seg, kv_pos, seg_pos):
    """The blocks as an unrolled loop over per-layer modules (see `unstack_layers`)."""
    if cache is None:
      for block in self.blocks:
        x = block(x, cos, sin, mask, q_scale, seg_pos=seg_pos)[0]
      return self.ln_f(x), None
    stacked = not is_per_layer(cache)
    ks, vs = list(cache.k), list(cache.v)  # per-layer arrays (slices of a stacked cache)
    for i, block in enumerate(self.blocks):
      x, (ks[i], vs[i]) = block(x, cos, sin, mask, q_scale, (ks[i], vs[i]), cache.index,
                                heads_first=not stacked)
    if stacked:
      return self.ln_f(x), KVCache(jnp.stack(ks), jnp.stack(vs), kv_seg, kv_pos,
                                   cache.index + x.shape[1])
    return self.ln_f(x), KVCache(tuple(ks), tuple(vs), kv_seg, kv_pos, cache.index + x.shape[1])

  def unstack_layers(self) -> None:
    """Replaces the stacked blocks by a list of per-layer blocks holding their own arrays (a copy,
    made once), for inference. A decode step is memory-bound: under the scan (or with static slices
    of the stacked arrays) XLA on CPU copies each layer's weights out of the stack before its
    matrix-vector products, so every weight crossed memory ~3 times per token instead of once.
    Training keeps the stacked layout (compile time independent of depth)."""
    if isinstance(self.blocks, nnx.List):
      return
    graphdef, state = nnx.split(self.blocks)
    self.blocks = nnx.List([nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], state))
                            for i in range(self.cfg.layers)])

