"""Fixed 2D sin-cos position tables (MAE convention), as stored in the released adapter."""

import numpy as np


def sincos_frequencies(n: int) -> np.ndarray:
  """omega_i = 1 / 10000^(i / n), i < n: the angular frequencies of an n-pair sin-cos table."""
  return 1.0 / 10000 ** (np.arange(n, dtype=np.float64) / float(n))


def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
  """[len(positions), dim]: concat(sin(p * omega), cos(p * omega)), omega = sincos_frequencies(dim // 2)."""
  omega = sincos_frequencies(dim // 2)
  out = np.outer(positions.reshape(-1).astype(np.float64), omega)
  return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(dim: int, grid: int) -> np.ndarray:
  """[grid*grid, dim] float32. The first half encodes grid[0] which, as in MAE, holds the w index."""
  if dim % 4:
    raise ValueError(f"2D sin-cos needs dim divisible by 4, got {dim}")
  gh = np.arange(grid, dtype=np.float32)
  gw = np.arange(grid, dtype=np.float32)
  mesh = np.stack(np.meshgrid(gw, gh), axis=0)  # mesh[0][h, w] = w, mesh[1][h, w] = h
  emb_h = sincos_1d(dim // 2, mesh[0])
  emb_w = sincos_1d(dim // 2, mesh[1])
  return np.concatenate([emb_h, emb_w], axis=1).astype(np.float32)
