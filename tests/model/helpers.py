"""Small builders shared by model tests."""

import numpy as np

from qwenvl_jax.config import load_model_config


def tiny_config(**overrides):
  import dataclasses
  return dataclasses.replace(load_model_config("tiny"), **overrides)


def image_row(cfg, pieces):
  """Token ids from pieces: ints are text ids, 'IMG' is a full image span."""
  ids = []
  for p in pieces:
    if p == "IMG":
      ids += [cfg.image_start_id] + [cfg.image_pad_id] * cfg.tokens_per_image + [cfg.image_end_id]
    else:
      ids.append(p)
  return np.asarray(ids, np.int32)
