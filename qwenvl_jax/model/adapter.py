"""Position-aware vision-language adapter (the released `attn_pool` + `ln_post` + `proj`).

One cross-attention layer: `n_queries` learnable queries attend over the ViT features projected to
the LLM width. A fixed 2D sin-cos table is added to the queries (as is) and to the keys (bicubically
resized from the query grid to the patch grid, exactly as the reference does); values get no
position term. Output: ln_post then `x @ proj` -> [B, n_queries, llm_hidden].

Training from scratch (`cfg.local_init > 0`) starts from a local attention pattern instead of the
released random init: under random q/k projections every query averages all patches, the output
carries no "where", and a small model needs thousands of steps to learn it (measured in WORKSPACE.md).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from qwenvl_jax.config import AdapterConfig, VisionConfig
from qwenvl_jax.model import layers
from qwenvl_jax.model.layers import Buffer, LayerNorm, Linear, constrain
from qwenvl_jax.model.posemb import sincos_2d, sincos_frequencies
from qwenvl_jax.model.resize import resize_grid_table


class Adapter(nnx.Module):

  def __init__(self, cfg: AdapterConfig, vision: VisionConfig, embed: int, *, rngs: nnx.Rngs,
               dtype=jnp.float32, param_dtype=jnp.float32):
    self.cfg = cfg
    self.dtype = dtype
    heads, head_dim = cfg.heads, embed // cfg.heads
    self.head_dim = head_dim
    self.query = layers.param(rngs, layers.normal(0.02), (cfg.n_queries, embed), ("queries", "embed"),
                              param_dtype)
    self.pos_embed = Buffer(jnp.asarray(sincos_2d(embed, cfg.grid)), out_sharding=("pos", "embed"),
                            eager_sharding=False)
    self.kv_proj = Linear((vision.width,), (embed,), ("vit_embed",), ("embed",), use_bias=False,
                          rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.ln_q = LayerNorm(embed, cfg.ln_eps, ("embed",), param_dtype=param_dtype)
    self.ln_kv = LayerNorm(embed, cfg.ln_eps, ("embed",), param_dtype=param_dtype)
    # nn.MultiheadAttention's in_proj: q, k, v as contiguous blocks -> [embed, 3, heads, head_dim].
    self.in_proj = Linear((embed,), (3, heads, head_dim), ("embed",), ("qkv", "heads", "head_dim"),
                          use_bias=True, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.out_proj = Linear((heads, head_dim), (embed,), ("heads", "head_dim"), ("embed",),
                           use_bias=True, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.ln_post = LayerNorm(embed, cfg.ln_eps, ("embed",), param_dtype=param_dtype)
    self.proj = layers.param(rngs, layers.normal(embed ** -0.5), (embed, embed), ("embed", "proj_out"),
                             param_dtype)
    if cfg.local_init:
      self.local_init(cfg.local_init)

  def local_init(self, scale: float, max_period: float = 2 * math.pi):
    """Makes each query start by attending to the patches around its own grid point.

    q/k projections pick, for every head alike, the sin and cos dims of both axes at the table's
    frequencies with period >= `max_period` (in query-grid units; the faster ones alias), times
    `scale`, and the queries start as their positions alone (ln_q's scale 0). Query i's logit for
    patch j is then ~ scale^2 / sqrt(head_dim) * (sum_f [cos(w_f dx) + cos(w_f dy)] + pos_i .
    feature_j) over the picked frequencies: a bump around i, perturbed by the patch content. Only
    the starting point changes; nothing is frozen.
    """
    kernel = self.in_proj.kernel
    embed, _, heads, head_dim = kernel.shape
    quarter = embed // 4  # per axis: quarter sin dims then quarter cos dims (posemb.sincos_2d)
    omega = sincos_frequencies(quarter)
    freqs = np.flatnonzero(omega <= 2 * math.pi / max_period)[: head_dim // 4]
    picked = np.concatenate([freqs + off for off in (0, quarter, 2 * quarter, 3 * quarter)])
    select = np.zeros((embed, heads, head_dim), np.float32)
    for slot, dim in enumerate(picked):  # the same picked dims fill the first slots of every head
      select[dim, :, slot] = scale
    select = jnp.asarray(select, kernel.dtype)
    kernel.value = kernel.value.at[:, 0].set(select).at[:, 1].set(select)
    self.ln_q.scale.value = jnp.zeros_like(self.ln_q.scale.value)

  def _project(self, x, i):
    """The i-th (q, k, v) slice of the fused input projection."""
    kernel = self.in_proj.weight()[:, i]
    bias = self.in_proj.bias[...][i].astype(self.dtype)
    return jnp.einsum("bne,ehd->bnhd", x.astype(self.dtype), kernel) + bias

  def _qkv(self, features: jax.Array):
    b, n, _ = features.shape
    grid = int(round(n ** 0.5))
    kv = self.ln_kv(self.kv_proj(features))
    q = self.ln_q(self.query[...].astype(self.dtype))
    pos = self.pos_embed[...]
    q = jnp.broadcast_to((q + pos.astype(q.dtype))[None], (b, *q.shape))
    k = kv + resize_grid_table(pos, grid).astype(kv.dtype)[None]
    return self._project(q, 0), self._project(k, 1), self._project(kv, 2)

  def attention_map(self, features: jax.Array) -> jax.Array:
    """Where each query looks: softmax weights [B, heads, n_queries, N] (inspection and tests)."""
    q, k, _ = self._qkv(features)
    return layers.attention_probs(q, k, None, self.head_dim ** -0.5)

  def __call__(self, features: jax.Array) -> jax.Array:
    """features [B, N, vit_width] on a sqrt(N) x sqrt(N) grid -> [B, n_queries, embed]."""
    q, k, v = self._qkv(features)
    q = constrain(q, ("act_batch", None, "act_heads", None))
    out = layers.dot_product_attention(q, k, v, None, self.head_dim ** -0.5)
    x = self.out_proj(out)
    x = self.ln_post(x)
    x = x @ self.proj[...].astype(self.dtype)
    return constrain(x, ("act_batch", None, "act_embed"))
