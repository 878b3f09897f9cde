"""Attention implementations against the XLA reference: splash (Pallas interpret mode on CPU) for
packed causal rows and the bidirectional ViT with padding, values and gradients, fp32 and bf16; and
the whole model's logits with `model.attention = "splash"`."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from qwenvl_jax.config import load_model_config
from qwenvl_jax.model import attention
from qwenvl_jax.model.masks import segment_positions
from qwenvl_jax.model.qwenvl import QwenVL
from qwenvl_jax.train.batch import make_synthetic_batch


def _qkv(b, t, h, d, dtype, seed=0):
  r = np.random.default_rng(seed)
  return [jnp.asarray(r.normal(size=(b, t, h, d)), dtype) for _ in range(3)]


def _packed_segments(b, t):
  seg = np.zeros((b, t), np.int32)
  seg[0, :50], seg[0, 50:110] = 1, 2  # two samples, then padding
  seg[1, :] = 1
  return jnp.asarray(seg)


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 2e-5), (jnp.bfloat16, 3e-2)])
@pytest.mark.parametrize("causal", [True, False])
def test_splash_matches_xla(dtype, tol, causal):
  b, t, h, d = 2, 120, 2, 64  # padded to the 128 block inside
  q, k, v = _qkv(b, t, h, d, dtype)
  seg = _packed_segments(b, t) if causal else None
  pos = segment_positions(seg) if causal else None
  kw = dict(scale=d ** -0.5, causal=causal, segment_ids=seg, positions=pos)

  def loss(impl, q, k, v):
    out = attention.self_attention(q, k, v, impl=impl, **kw).astype(jnp.float32)
    real = (seg != 0)[..., None, None] if causal else 1.0
    return jnp.sum(out * real * jnp.cos(jnp.arange(d))), out

  (_, ref), g_ref = jax.value_and_grad(lambda *a: loss("xla", *a), argnums=(0, 1, 2), has_aux=True)(q, k, v)
  (_, got), g = jax.jit(jax.value_and_grad(lambda *a: loss("splash", *a), argnums=(0, 1, 2),
                                           has_aux=True))(q, k, v)
  real = np.asarray(seg != 0) if causal else np.ones((b, t), bool)
  np.testing.assert_allclose(np.asarray(got)[real], np.asarray(ref)[real], atol=tol, rtol=tol)
  for a, r in zip(g, g_ref):
    np.testing.assert_allclose(np.asarray(a, np.float32)[real], np.asarray(r, np.float32)[real],
                               atol=tol * 4, rtol=tol)


def test_resolve_auto_per_platform():
  assert attention.resolve("auto", jnp.float32, "tpu") == "splash"
  assert attention.resolve("auto", jnp.bfloat16, "gpu") == "cudnn"
  assert attention.resolve("auto", jnp.float32, "gpu") == "xla"  # cuDNN needs 16-bit inputs
  assert attention.resolve("auto", jnp.float32, "cpu") == "xla"
  assert attention.resolve("xla", jnp.float32, "tpu") == "xla"


@pytest.mark.slow  # Pallas interpret mode through the whole model: minutes on a loaded 2-core host
def test_model_logits_splash_equal_xla():
  """Packed rows with images, the whole model: logits of real tokens within 1e-4 (fp32)."""
  base = load_model_config("tiny")
  batch = make_synthetic_batch(base, 2, 64, max_images=2, packed=True)
  out = {}
  for impl in ("xla", "splash"):
    model = QwenVL(dataclasses.replace(base, attention=impl), rngs=nnx.Rngs(0))
    out[impl] = np.asarray(model(batch["tokens"], batch["images"], num_images=batch["num_images"],
                                 segment_ids=batch["segment_ids"], positions=batch["positions"]))
  real = batch["segment_ids"] != 0
  np.testing.assert_allclose(out["splash"][real], out["xla"][real], atol=1e-4)
