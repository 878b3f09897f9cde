"""Golden checks of single blocks against independent computations (complex rotation, torch MHA)."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp
import torch
from flax import nnx

from qwenvl_jax.config import AdapterConfig, VisionConfig
from qwenvl_jax.model import layers
from qwenvl_jax.model.adapter import Adapter
from qwenvl_jax.model.resize import resize_grid_table


def test_rope_equals_complex_rotation():
  rng = np.random.default_rng(0)
  b, t, h, d = 2, 300, 3, 16
  x = rng.normal(size=(b, t, h, d)).astype(np.float32)
  positions = np.stack([np.arange(t), np.arange(t)[::-1]]).astype(np.int32)
  cos, sin = layers.rope_cos_sin(jnp.asarray(positions), d, 10000.0)
  ours = np.asarray(layers.apply_rope(jnp.asarray(x), cos, sin))
  # Rotate-half pairs dim i with dim i + d/2: z_i = x_i + j x_{i+d/2}, rotated by p * theta_i.
  theta = 1.0 / 10000 ** (np.arange(0, d, 2) / d)
  z = x[..., : d // 2] + 1j * x[..., d // 2:]
  z = z * np.exp(1j * positions[:, :, None, None] * theta)
  ref = np.concatenate([z.real, z.imag], axis=-1)
  np.testing.assert_allclose(ours, ref, atol=2e-4, rtol=1e-4)  # float32 angles up to 300 rad


def test_ntk_alpha_matches_reference_rule():
  assert layers.ntk_alpha(100, 2048) == 1
  assert layers.ntk_alpha(2048, 2048) == 1
  assert layers.ntk_alpha(2049, 2048) == 3  # ceil(log2(1.0005) + 1) = 2 -> 2^2 - 1
  assert layers.ntk_alpha(4097, 2048) == 7
  np.testing.assert_allclose(layers.ntk_base(10000.0, 128, 3.0), 10000 * 3 ** (128 / 126), rtol=1e-6)


def _torch_linear(w, b=None):
  lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
  lin.weight.data = torch.from_numpy(np.asarray(w))
  if b is not None:
    lin.bias.data = torch.from_numpy(np.asarray(b))
  return lin


def test_adapter_matches_torch_multihead_attention():
  vis = VisionConfig(image_size=56, patch_size=14, width=24, layers=1, heads=4, mlp_dim=32, pos_grid=2)
  cfg = AdapterConfig(n_queries=16, heads=4)
  embed = 32
  adapter = Adapter(cfg, vis, embed, rngs=nnx.Rngs(1))
  # Non-trivial norms so a wrong parameter order cannot pass.
  for ln in (adapter.ln_q, adapter.ln_kv, adapter.ln_post):
    ln.scale[...] = 1 + 0.1 * jax.random.normal(jax.random.key(2), ln.scale.shape)
    ln.bias[...] = 0.1 * jax.random.normal(jax.random.key(3), ln.bias.shape)
  adapter.in_proj.bias[...] = 0.1 * jax.random.normal(jax.random.key(4), adapter.in_proj.bias.shape)
  feats = np.random.default_rng(0).normal(size=(2, 25, 24)).astype(np.float32)  # 5x5 grid
  ours = np.asarray(adapter(jnp.asarray(feats)))

  g = lambda v: np.asarray(v[...])
  mha = torch.nn.MultiheadAttention(embed, cfg.heads, batch_first=True)
  mha.in_proj_weight.data = torch.from_numpy(g(adapter.in_proj.kernel).reshape(embed, 3 * embed).T.copy())
  mha.in_proj_bias.data = torch.from_numpy(g(adapter.in_proj.bias).reshape(-1).copy())
  mha.out_proj.weight.data = torch.from_numpy(g(adapter.out_proj.kernel).reshape(embed, embed).T.copy())
  mha.out_proj.bias.data = torch.from_numpy(g(adapter.out_proj.bias).copy())

  def ln(x, mod):
    return torch.nn.functional.layer_norm(x, (embed,), torch.from_numpy(g(mod.scale)),
                                          torch.from_numpy(g(mod.bias)), eps=1e-6)

  with torch.no_grad():
    x = torch.from_numpy(feats) @ torch.from_numpy(g(adapter.kv_proj.kernel))
    kv = ln(x, adapter.ln_kv)
    q = ln(torch.from_numpy(g(adapter.query)), adapter.ln_q)
    pos = torch.from_numpy(g(adapter.pos_embed))
    pos_k = torch.nn.functional.interpolate(pos.reshape(1, 4, 4, embed).permute(0, 3, 1, 2), size=(5, 5),
                                            mode="bicubic", align_corners=False)
    pos_k = pos_k.permute(0, 2, 3, 1).reshape(25, embed)
    out = mha((q + pos).unsqueeze(0).expand(2, -1, -1), kv + pos_k, kv, need_weights=False)[0]
    out = ln(out, adapter.ln_post) @ torch.from_numpy(g(adapter.proj))
  np.testing.assert_allclose(ours, out.numpy(), atol=1e-5)


def test_window_attention_equals_block_masked_global_attention():
  cfg = VisionConfig(image_size=56, patch_size=14, width=16, layers=1, heads=2, mlp_dim=32,
                     pos_grid=2, window_patches=2, global_every=2)
  from qwenvl_jax.model.vit import VisionAttention
  attn = VisionAttention(cfg, rngs=nnx.Rngs(0), dtype=jnp.float32, param_dtype=jnp.float32)
  x = jax.random.normal(jax.random.key(0), (1, 16, 16))
  windowed = attn(x, True)
  # Independent: global attention where a patch sees only patches in its own 2x2 window.
  hh, ww = np.divmod(np.arange(16), 4)
  win = (hh // 2) * 2 + ww // 2
  mask = jnp.asarray(win[:, None] == win[None, :])[None, None]
  qkv = attn.qkv(x)
  ref = attn.out(layers.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], mask,
                                              cfg.head_dim ** -0.5))
  np.testing.assert_allclose(np.asarray(windowed), np.asarray(ref), atol=1e-5)
  assert not np.allclose(np.asarray(attn(x, False)), np.asarray(windowed), atol=1e-3)


def test_resize_identity_when_grid_matches():
  t = jnp.arange(16 * 3, dtype=jnp.float32).reshape(16, 3)
  assert resize_grid_table(t, 4) is t


@pytest.mark.parametrize("layers,every,window,want", [
    (8, 4, 2, "wwwgwwwg"), (6, 2, 2, "wgwgwg"), (4, 4, 0, "gggg")])
def test_vit_window_flags_global_every_nth_layer(layers, every, window, want):
  """Appendix E.3: windowed attention with every `global_every`-th layer (1-based) global; no windows
  at all when window_patches is 0 (the released model)."""
  from qwenvl_jax.model.vit import VisionTransformer
  cfg = VisionConfig(image_size=56, patch_size=14, width=8, layers=layers, heads=2, mlp_dim=16, pos_grid=2,
                     window_patches=window, global_every=every)
  vit = nnx.eval_shape(lambda: VisionTransformer(cfg, rngs=nnx.Rngs(0)))
  assert "".join("w" if f else "g" for f in vit.window_flags()) == want


@pytest.mark.parametrize("scale", [1e-3, 1.0, 30.0])
def test_rms_norm_matches_qwen2_rms_norm(scale):
  """Against transformers' Qwen2RMSNorm with non-unit weights, over input magnitudes where eps
  matters (1e-3: mean square ~ eps) and where it does not."""
  from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm
  from qwenvl_jax.model.layers import RMSNorm
  dim, eps = 32, 1e-6
  rng = np.random.default_rng(0)
  x = (scale * rng.normal(size=(3, 5, dim))).astype(np.float32)
  w = (3 * rng.normal(size=dim)).astype(np.float32)
  ours = RMSNorm(dim, eps, ("embed",))
  ours.scale[...] = jnp.asarray(w)
  ref = Qwen2RMSNorm(dim, eps=eps)
  ref.weight.data = torch.from_numpy(w)
  with torch.no_grad():
    want = ref(torch.from_numpy(x)).numpy()
  np.testing.assert_allclose(np.asarray(ours(jnp.asarray(x))), want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
