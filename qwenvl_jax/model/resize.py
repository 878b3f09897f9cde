"""Position-table resizing that matches PyTorch's `F.interpolate(mode="bicubic", align_corners=False)`.

The released model resizes its 16x16 position tables to the patch grid on every forward pass with
PyTorch bicubic (A = -0.75, half-pixel source coordinates, border indices clamped, no antialias).
`jax.image.resize` uses a different kernel (Keys a = -0.5, antialiased), so we build PyTorch's
separable interpolation matrices in numpy (constants at trace time) and apply two matmuls.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

_A = -0.75


def _cubic_near(x):  # |x| <= 1
  return ((_A + 2) * x - (_A + 3)) * x * x + 1


def _cubic_far(x):  # 1 < |x| < 2
  return ((_A * x - 5 * _A) * x + 8 * _A) * x - 4 * _A


@functools.lru_cache(maxsize=None)
def bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out_size, in_size] float32 matrix M with resize(v) = M @ v along one axis."""
  m = np.zeros((out_size, in_size), np.float64)
  if in_size == out_size:
    return np.eye(in_size, dtype=np.float32)
  scale = in_size / out_size
  for i in range(out_size):
    src = scale * (i + 0.5) - 0.5
    base = int(np.floor(src))
    t = src - base
    weights = (_cubic_far(t + 1), _cubic_near(t), _cubic_near(1 - t), _cubic_far(2 - t))
    for k, w in enumerate(weights):
      m[i, min(max(base - 1 + k, 0), in_size - 1)] += w
  return m.astype(np.float32)


def resize_grid_table(table, out_grid: int):
  """[g*g, C] table on a g x g grid (row-major h, w) -> [out_grid**2, C], computed in float32."""
  n, c = table.shape
  g = int(round(n ** 0.5))
  if g * g != n:
    raise ValueError(f"position table has {n} rows, not a square grid")
  if g == out_grid:
    return table
  m = jnp.asarray(bicubic_matrix(g, out_grid))
  grid = table.astype(jnp.float32).reshape(g, g, c)
  out = jnp.einsum("ih,hwc->iwc", m, grid, precision="highest")
  out = jnp.einsum("jw,iwc->ijc", m, out, precision="highest")
  return out.reshape(out_grid * out_grid, c).astype(table.dtype)
