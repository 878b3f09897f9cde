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
