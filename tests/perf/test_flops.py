"""The model-FLOPs formula against XLA's own cost analysis of the compiled tiny model."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from qwenvl_jax.config import load_model_config
from qwenvl_jax.model.qwenvl import QwenVL
from qwenvl_jax.model.flops import step_flops, vit_forward_flops


def _xla_flops(cfg, fn_of_loss):
  model = QwenVL(cfg, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  q, t, b = cfg.tokens_per_image, 64, 2
  ids = np.array([[1] + cfg.image_span + [5] * (t - q - 3)] * b)
  images = jnp.ones((b, 1, 56, 56, 3))

  def loss(state):
    logits = nnx.merge(graphdef, state)(ids, images).astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, ids).mean()

  return jax.jit(fn_of_loss(loss)).lower(state).compile().cost_analysis()["flops"], b, t


@pytest.mark.parametrize("kind", ["forward", "train"])
def test_formula_within_10_percent_of_xla(kind):
  # XLA's cost analysis counts a while-loop body once, so compare on the unrolled model.
  cfg = dataclasses.replace(load_model_config("tiny"), scan_layers=False)
  xla, b, t = _xla_flops(cfg, (lambda f: f) if kind == "forward" else jax.grad)
  ours = getattr(step_flops(cfg, b, t, images_per_row=1), kind)
  assert abs(ours / xla - 1) < 0.10, (ours, xla)


def test_frozen_parts_cost_less_and_window_attention_saves_flops():
  cfg = load_model_config("qwen_vl_7b")
  full = step_flops(cfg, 1, 2048, 1).train
  stage3 = step_flops(cfg, 1, 2048, 1, trainable=("adapter", "llm")).train
  assert stage3 < full
  windowed = dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, window_patches=16))
  assert vit_forward_flops(windowed) < vit_forward_flops(cfg)
