"""Rematerialisation changes memory, not maths; bf16 compute keeps fp32 master weights."""

import numpy as np
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from qwenvl_jax.model.qwenvl import QwenVL
from tests.model.helpers import image_row, tiny_config


def _inputs(cfg):
  ids = np.stack([image_row(cfg, [1, "IMG", 5, 6, 7, 8]), image_row(cfg, [9, 10, 11, "IMG", 12, 13])])
  images = np.random.default_rng(0).normal(size=(2, 1, 56, 56, 3)).astype(np.float32)
  return jnp.asarray(ids), jnp.asarray(images)


def _loss_and_grads(model, ids, images):
  def loss(m):
    logits = m(ids, images)
    return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, ids[..., None], -1)[..., 0])

  return nnx.jit(nnx.value_and_grad(loss))(model)


@pytest.mark.parametrize("policy", ["full", pytest.param("dots", marks=pytest.mark.slow),
                                    pytest.param("dots_no_batch", marks=pytest.mark.slow)])
def test_remat_policies_give_the_same_loss_and_gradients(policy):
  ids, images = _inputs(tiny_config())
  ref_loss, ref_grads = _loss_and_grads(QwenVL(tiny_config(), rngs=nnx.Rngs(0)), ids, images)
  loss, grads = _loss_and_grads(QwenVL(tiny_config(remat=policy), rngs=nnx.Rngs(0)), ids, images)
  assert float(loss) == pytest.approx(float(ref_loss), abs=1e-6)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_bfloat16_compute_with_float32_master_weights():
  cfg32 = tiny_config()
  ids, images = _inputs(cfg32)
  m32 = QwenVL(cfg32, rngs=nnx.Rngs(0))
  m16 = QwenVL(tiny_config(dtype="bfloat16"), rngs=nnx.Rngs(0))
  params = jax.tree.leaves(nnx.state(m16, nnx.Param))
  assert params and all(p.dtype == jnp.float32 for p in params)  # master weights stay fp32
  out32 = np.asarray(m32(ids, images))
  out16 = m16(ids, images)
  assert out16.dtype == jnp.bfloat16
  # Same weights, bf16 arithmetic: close but not identical (so the compute dtype really applies).
  diff = np.abs(np.asarray(out16, np.float32) - out32)
  assert 0 < diff.max() < 0.05 * np.abs(out32).max() + 0.05
