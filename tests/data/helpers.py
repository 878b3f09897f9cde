"""Helpers shared by the data tests."""

import numpy as np


def take(it, n):
  return [next(it) for _ in range(n)]


def assert_same(a, b):
  """Two lists of batches are equal, field by field."""
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)
