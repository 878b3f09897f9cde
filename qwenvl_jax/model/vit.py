"""Visual encoder: ViT-bigG/14 in the OpenCLIP layout Qwen-VL uses (no class token).

conv1 (as a matmul over 14x14x3 patches) -> + learned 16x16 position table resized to the patch
grid -> ln_pre -> pre-LN blocks (fused per-head qkv, exact GELU MLP). Optional window attention
(Appendix E.3): local windows in most layers and global attention in every `global_every`-th.
Returns per-patch features [B, grid*grid, width]; the adapter does attn_pool / ln_post / proj.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from qwenvl_jax.config import VisionConfig
from qwenvl_jax.model import attention, layers
from qwenvl_jax.model.layers import LayerNorm, Linear, constrain
from qwenvl_jax.model.pixels import normalize_on_device
from qwenvl_jax.model.resize import resize_grid_table


class VisionAttention(nnx.Module):

  def __init__(self, cfg: VisionConfig, *, rngs, dtype, param_dtype, impl: str = "xla"):
    h, d = cfg.heads, cfg.head_dim
    self.cfg = cfg
    self.impl = impl  # model.attention (model/attention.py) for global layers; windows use XLA
    self.qkv = Linear((cfg.width,), (3, h, d), ("vit_embed",), ("qkv", "vit_heads", "head_dim"),
                      use_bias=True, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.out = Linear((h, d), (cfg.width,), ("vit_heads", "head_dim"), ("vit_embed",),
                      use_bias=True, rngs=rngs, dtype=dtype, param_dtype=param_dtype)

  def __call__(self, x: jax.Array, windowed: jax.Array | bool) -> jax.Array:
    qkv = self.qkv(x)  # [B, N, 3, H, D]
    q, k, v = (constrain(qkv[:, :, i], ("act_batch", "act_length", "act_heads", None)) for i in range(3))
    scale = self.cfg.head_dim ** -0.5
    global_attn = lambda q, k, v: attention.self_attention(q, k, v, impl=self.impl, scale=scale,
                                                           causal=False)
    if not self.cfg.window_patches:
      out = global_attn(q, k, v)
    else:
      local_attn = lambda q, k, v: self._windowed(q, k, v, scale)
      out = jax.lax.cond(windowed, local_attn, global_attn, q, k, v)
    return self.out(out)

  def _windowed(self, q, k, v, scale):
    """Attention inside non-overlapping w x w windows of the patch grid."""
    w = self.cfg.window_patches
    b, n, h, d = q.shape
    gh = int(round(n ** 0.5))  # the input grid (may differ from cfg.grid at another resolution)
    nw = gh // w

    def to_windows(t):
      t = t.reshape(b, nw, w, nw, w, h, d).transpose(0, 1, 3, 2, 4, 5, 6)
      return t.reshape(b * nw * nw, w * w, h, d)

    out = layers.dot_product_attention(to_windows(q), to_windows(k), to_windows(v), None, scale)
    out = out.reshape(b, nw, nw, w, w, h, d).transpose(0, 1, 3, 2, 4, 5, 6)
    return out.reshape(b, n, h, d)


class VisionMLP(nnx.Module):

  def __init__(self, cfg: VisionConfig, *, rngs, dtype, param_dtype):
    self.fc_in = Linear((cfg.width,), (cfg.mlp_dim,), ("vit_embed",), ("vit_mlp",), use_bias=True,
                        rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.fc_out = Linear((cfg.mlp_dim,), (cfg.width,), ("vit_mlp",), ("vit_embed",), use_bias=True,
                         rngs=rngs, dtype=dtype, param_dtype=param_dtype)

  def __call__(self, x):
    h = jax.nn.gelu(self.fc_in(x), approximate=False)
    h = constrain(h, ("act_batch", "act_length", "act_mlp"))
    return self.fc_out(h)


class VisionBlock(nnx.Module):

  def __init__(self, cfg: VisionConfig, *, rngs, dtype, param_dtype, attention_impl: str = "xla"):
    self.ln_1 = LayerNorm(cfg.width, cfg.ln_eps, ("vit_embed",), param_dtype=param_dtype)
    self.attn = VisionAttention(cfg, rngs=rngs, dtype=dtype, param_dtype=param_dtype,
                                impl=attention_impl)
    self.ln_2 = LayerNorm(cfg.width, cfg.ln_eps, ("vit_embed",), param_dtype=param_dtype)
    self.mlp = VisionMLP(cfg, rngs=rngs, dtype=dtype, param_dtype=param_dtype)

  def __call__(self, x, windowed):
    x = x + self.attn(self.ln_1(x), windowed)
    x = x + self.mlp(self.ln_2(x))
    return constrain(x, ("act_batch", "act_length", "act_embed"))


class VisionTransformer(nnx.Module):

  def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs, dtype=jnp.float32,
               param_dtype=jnp.float32, remat: str = "none", scan_layers: bool = True,
               attention: str = "xla", remat_group: int = 1):
    self.cfg = cfg
    self.dtype = dtype
    self.remat = remat
    self.remat_group = remat_group
    self.scan = scan_layers
    p = cfg.patch_size
    # conv1 stored as [kh, kw, c_in, width] (HWIO); patches are flattened in the same order.
    self.patch_embed = layers.param(rngs, layers.normal(0.02), (p, p, 3, cfg.width),
                                    ("patch", "patch", "patch", "vit_embed"), param_dtype)
    self.pos_embed = layers.param(rngs, layers.normal(0.02), (cfg.pos_grid ** 2, cfg.width),
                                  ("pos", "vit_embed"), param_dtype)
    self.ln_pre = LayerNorm(cfg.width, cfg.ln_eps, ("vit_embed",), param_dtype=param_dtype)
    self.blocks = layers.stacked(
        lambda r: VisionBlock(cfg, rngs=r, dtype=dtype, param_dtype=param_dtype,
                              attention_impl=attention), cfg.layers, rngs)

  def window_flags(self) -> np.ndarray:
    """Per layer: True = windowed attention. Every `global_every`-th layer (1-based) is global."""
    idx = np.arange(1, self.cfg.layers + 1)
    return (idx % self.cfg.global_every != 0) if self.cfg.window_patches else np.zeros_like(idx, bool)

  def patchify(self, images: jax.Array) -> jax.Array:
    """[B, H, W, 3] -> [B, (H/p)*(W/p), p*p*3] patches in row-major grid order."""
    b, hgt, wid, c = images.shape
    p = self.cfg.patch_size
    if hgt % p or wid % p:
      raise ValueError(f"image size {hgt}x{wid} is not divisible by the patch size {p}")
    x = images.reshape(b, hgt // p, p, wid // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (hgt // p) * (wid // p), p * p * c)

  def __call__(self, images: jax.Array) -> jax.Array:
    """images [B, H, W, 3] (uint8 pixels, or float normalised) -> features [B, (H/p)*(W/p), width]."""
    if images.shape[1] != images.shape[2]:
      raise ValueError(f"images must be square, got {images.shape[1]}x{images.shape[2]}")
    images = normalize_on_device(images)
    grid = images.shape[1] // self.cfg.patch_size
    kernel = self.patch_embed[...].reshape(-1, self.cfg.width).astype(self.dtype)
    x = self.patchify(images.astype(self.dtype)) @ kernel
    x = x + resize_grid_table(self.pos_embed[...], grid).astype(self.dtype)
    x = constrain(self.ln_pre(x), ("act_batch", "act_length", "act_embed"))

    def body(x, block, windowed):
      return block(x, windowed)

    return layers.scan_layers(body, x, self.blocks, jnp.asarray(self.window_flags()),
                              remat=self.remat, scan=self.scan, n_layers=self.cfg.layers,
                              group=self.remat_group)
