"""The adapter's "local" initialisation (AdapterConfig.local_init) for training from scratch."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from qwenvl_jax.config import AdapterConfig, MeshConfig, VisionConfig
from qwenvl_jax.model.adapter import Adapter
from qwenvl_jax.model.qwenvl import QwenVL
from qwenvl_jax.sharding import create_mesh, init_sharded
from tests.model.helpers import tiny_config

VISION = VisionConfig(image_size=96, patch_size=12, width=96, layers=1, heads=4, mlp_dim=384, pos_grid=8)


def _centre_distance(adapter: Adapter, features) -> np.ndarray:
  """Per query: distance (in patches) from its grid point to the centre of mass of its attention."""
  probs = np.asarray(adapter.attention_map(features)).mean(axis=(0, 1))  # [Q, N]
  q_grid, p_grid = adapter.cfg.grid, VISION.grid
  py, px = np.divmod(np.arange(p_grid * p_grid), p_grid)
  qy, qx = np.divmod(np.arange(q_grid * q_grid), q_grid)
  scale = p_grid / q_grid  # query (i, j) sits over the patch block centred at (i + 0.5) * scale
  cy, cx = probs @ (py + 0.5), probs @ (px + 0.5)
  return np.hypot(cy - (qy + 0.5) * scale, cx - (qx + 0.5) * scale)


def test_local_init_makes_each_query_attend_around_its_grid_point():
  # A blank picture (the same feature at every patch): where a query looks is then position alone.
  blank = jax.random.normal(jax.random.key(1), (4, 1, VISION.width))
  features = jnp.broadcast_to(blank, (4, VISION.grid ** 2, VISION.width))
  local = Adapter(AdapterConfig(n_queries=16, heads=4, local_init=6.0), VISION, 192, rngs=nnx.Rngs(0))
  released = Adapter(AdapterConfig(n_queries=16, heads=4), VISION, 192, rngs=nnx.Rngs(0))
  d_local, d_released = _centre_distance(local, features), _centre_distance(released, features)
  # The released init averages everything: every centre of mass sits near the image centre, so the
  # corner queries are ~2.8 patches from their points. Local: each query looks at its own block.
  assert d_local.max() < 1.0, d_local
  assert d_released.max() > 2.0, d_released
  # Where the attention goes differs per query (local) rather than being one shared average.
  probs = np.asarray(local.attention_map(features)).mean(axis=(0, 1))
  assert len(set(probs.argmax(-1).tolist())) == 16


def test_local_init_qk_kernel_is_the_cosine_bump_of_the_offset():
  """Per head, (pos_i W_q) . (pos_j W_k) = scale^2 * sum_f [cos(w_f dx) + cos(w_f dy)] over the
  frequencies with period >= 2 pi query cells (the formula, from the sin-cos table's definition)."""
  scale, embed = 2.5, 192
  a = Adapter(AdapterConfig(n_queries=16, heads=4, local_init=scale), VISION, embed, rngs=nnx.Rngs(0))
  kernel = np.asarray(a.in_proj.kernel[...], np.float64)  # [embed, 3, heads, head_dim]
  np.testing.assert_array_equal(kernel[:, 0], kernel[:, 1])
  pos = np.asarray(a.pos_embed[...], np.float64)
  qw = np.einsum("ne,ehd->nhd", pos, kernel[:, 0])
  got = np.einsum("ihd,jhd->hij", qw, qw)
  omega = 1.0 / 10000 ** (np.arange(embed // 4) / (embed // 4))
  omega = omega[omega <= 1.0][: 48 // 4]  # as many as fit the head (head_dim 48: 4 dims each)
  yy, xx = np.divmod(np.arange(16), 4)
  dx, dy = xx[:, None] - xx[None], yy[:, None] - yy[None]
  want = scale ** 2 * (np.cos(omega * dx[..., None]) + np.cos(omega * dy[..., None])).sum(-1)
  for head in range(4):
    np.testing.assert_allclose(got[head], want, rtol=1e-5)
  assert np.abs(kernel[:, 2]).max() > 0 and not np.allclose(kernel[:, 2], kernel[:, 0])  # v: random
  np.testing.assert_array_equal(np.asarray(a.ln_q.scale[...]), 0.0)


def test_local_init_survives_sharded_abstract_init():
  """init_sharded builds the model under jit onto the mesh: the init must come through it."""
  base = tiny_config()
  cfg = dataclasses.replace(base, adapter=dataclasses.replace(base.adapter, local_init=3.0))
  mesh = create_mesh(MeshConfig(), devices=jax.devices()[:2])
  with jax.set_mesh(mesh):
    model = init_sharded(lambda: QwenVL(cfg, rngs=nnx.Rngs(0)), mesh)
  reference = Adapter(cfg.adapter, cfg.vision, cfg.llm.hidden, rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(np.asarray(model.adapter.in_proj.kernel[...])[:, :2],
                                np.asarray(reference.in_proj.kernel[...])[:, :2])
  np.testing.assert_array_equal(np.asarray(model.adapter.ln_q.scale[...]), 0.0)
