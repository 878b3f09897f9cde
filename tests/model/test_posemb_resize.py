"""Golden checks of the fixed position machinery: the MAE 2D sin-cos table and PyTorch bicubic."""

import math

import numpy as np
import pytest
import torch

from qwenvl_jax.model.posemb import sincos_2d
from qwenvl_jax.model.resize import bicubic_matrix, resize_grid_table


def test_sincos_2d_matches_formula_elementwise():
  dim, grid = 16, 5
  table = sincos_2d(dim, grid)
  assert table.shape == (grid * grid, dim) and table.dtype == np.float32
  quarter = dim // 4
  for h in range(grid):
    for w in range(grid):
      row = table[h * grid + w]
      for i in range(quarter):
        omega = 1.0 / 10000 ** (i / quarter)
        # First half encodes the w coordinate (MAE's grid[0]), second half the h coordinate.
        assert row[i] == pytest.approx(math.sin(w * omega), abs=1e-6)
        assert row[quarter + i] == pytest.approx(math.cos(w * omega), abs=1e-6)
        assert row[2 * quarter + i] == pytest.approx(math.sin(h * omega), abs=1e-6)
        assert row[3 * quarter + i] == pytest.approx(math.cos(h * omega), abs=1e-6)


@pytest.mark.parametrize("src,dst", [(16, 32), (16, 16), (2, 4), (4, 16), (32, 16), (16, 23)])
def test_bicubic_resize_matches_torch(src, dst):
  rng = np.random.default_rng(0)
  table = rng.normal(size=(src * src, 6)).astype(np.float32)
  ours = np.asarray(resize_grid_table(table, dst))
  grid = torch.from_numpy(table).reshape(1, src, src, 6).permute(0, 3, 1, 2)
  ref = torch.nn.functional.interpolate(grid, size=(dst, dst), mode="bicubic", align_corners=False)
  ref = ref.permute(0, 2, 3, 1).reshape(dst * dst, 6).numpy()
  np.testing.assert_allclose(ours, ref, atol=1e-5)  # torch works in float32


def test_bicubic_rows_sum_to_one():
  for src, dst in [(16, 32), (3, 7), (32, 16)]:
    np.testing.assert_allclose(bicubic_matrix(src, dst).sum(1), 1.0, atol=1e-6)


def _mae_2d_sincos(embed_dim, grid_size):
  """MAE's published get_2d_sincos_pos_embed (util/pos_embed.py), written out independently:
  grid = meshgrid(w, h); first half from grid[0], second from grid[1]; each half [sin | cos] with
  omega = 1 / 10000^(i / (D/2)) for i < D/2, D = embed_dim / 2."""
  def one_d(d, pos):
    omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
    out = pos.reshape(-1)[:, None] * omega[None, :]
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)
  grid = np.meshgrid(np.arange(grid_size, dtype=np.float32), np.arange(grid_size, dtype=np.float32))
  grid = np.stack(grid, axis=0).reshape(2, 1, grid_size, grid_size)
  return np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], axis=1)


@pytest.mark.parametrize("embed,n_queries", [(32, 16), (64, 64)])
def test_adapter_pos_embed_is_the_mae_table(embed, n_queries):
  """The adapter's fixed query/key position table (the buffer the forward uses), not sincos_2d alone:
  the random checkpoints are written with sincos_2d, so logit parity cannot see a wrong table."""
  from flax import nnx
  from qwenvl_jax.config import AdapterConfig, VisionConfig
  from qwenvl_jax.model.adapter import Adapter
  vis = VisionConfig(image_size=56, patch_size=14, width=8, layers=1, heads=2, mlp_dim=16, pos_grid=2)
  adapter = Adapter(AdapterConfig(n_queries=n_queries, heads=4), vis, embed, rngs=nnx.Rngs(0))
  grid = int(math.isqrt(n_queries))
  np.testing.assert_allclose(np.asarray(adapter.pos_embed[...]), _mae_2d_sincos(embed, grid), atol=1e-6)


def test_released_size_table_is_the_mae_table():
  np.testing.assert_allclose(sincos_2d(4096, 16), _mae_2d_sincos(4096, 16), atol=1e-6)
