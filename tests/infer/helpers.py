"""Builders shared by the inference tests: a tiny config sized to a tokenizer, sharpened random weights."""

import dataclasses

import jax
import numpy as np
from flax import nnx

from qwenvl_jax.config import model_config_from_dict
from qwenvl_jax.model.qwenvl import QwenVL


def tiny_cfg(vocab_size: int, **overrides):
  """The tiny config with the vocabulary (and so the image ids at its top) of a tokenizer."""
  from qwenvl_jax.configs import tiny
  cfg = model_config_from_dict(tiny.model_config(vocab_size))
  return dataclasses.replace(cfg, **overrides)


def sharpen(model: QwenVL, seed: int = 0, scale: float = 8.0) -> QwenVL:
  """Random weights with peaky output distributions (argmax ties become implausible) and non-trivial
  biases / norm scales, so every parameter matters in parity tests.

  Only the LLM's matrices are scaled up: scaling the ViT too makes image features large enough that
  fp32 rounding differences between batch sizes (not a cache or parity error) exceed 1e-4 in logits.
  """
  graphdef, state, rest = nnx.split(model, nnx.Param, ...)  # fixed buffers (sin-cos) untouched
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
  rng = np.random.default_rng(seed)
  leaves, treedef = jax.tree.flatten(state)
  out = []
  for path, x in zip(paths, leaves):
    x = np.asarray(x)
    if x.ndim >= 2:
      x = x * (scale if "llm" in path else 1.0)
    else:
      x = x + rng.normal(0, 0.1, x.shape).astype(x.dtype)
    out.append(x)
  return nnx.merge(graphdef, jax.tree.unflatten(treedef, out), rest)


def tiny_model(vocab_size: int, seed: int = 0, **overrides) -> QwenVL:
  return sharpen(QwenVL(tiny_cfg(vocab_size, **overrides), rngs=nnx.Rngs(seed)), seed)
