"""`Linear` as one matrix product on CPU (`layers.matrix_product`): the values and gradients of the
multi-dim contraction, also through a layer scan; used only where merging the kernel's dims needs
no resharding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from qwenvl_jax.config import MeshConfig
from qwenvl_jax.model import layers
from qwenvl_jax.sharding import create_mesh


def contraction(x, kernel, n_in):
  """The reference: XLA's multi-dim dot_general, differentiated by JAX."""
  return jax.lax.dot_general(x, kernel, ((tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in))), ((), ())))


@pytest.mark.parametrize("in_shape,out_shape", [((24,), (3, 4, 8)), ((4, 8), (32,)), ((24,), (40,))])
def test_matrix_product_equals_the_contraction_with_gradients(in_shape, out_shape):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 5, *in_shape)), jnp.float32)
  kernels = jnp.asarray(rng.normal(size=(3, *in_shape, *out_shape)) / 5, jnp.float32)  # 3 layers
  n_in = len(in_shape)

  def loss(x, kernels, product):
    def layer(h, kernel):  # a scan, as the model's layers: residuals are stored per layer
      y = product(h, kernel, n_in)
      return jnp.tanh(y.reshape(h.shape[:2] + (-1,))[..., :h[0, 0].size].reshape(h.shape)), jnp.sum(y ** 2)
    h, sq = jax.lax.scan(layer, x, kernels)
    return jnp.sum(h * jnp.cos(h)) + jnp.sum(sq)

  want = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), static_argnums=2)(x, kernels, contraction)
  got = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), static_argnums=2)(x, kernels, layers.matrix_product)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
  for g, w in zip(got[1], want[1]):
    assert g.shape == w.shape
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def qkv_and_out():
  kw = dict(use_bias=False, rngs=nnx.Rngs(0))
  qkv = layers.Linear((32,), (3, 4, 8), ("embed",), ("qkv", "heads", "head_dim"), **kw)
  out = layers.Linear((4, 8), (32,), ("heads", "head_dim"), ("embed",), **kw)
  mlp = layers.Linear((32,), (64,), ("embed",), ("mlp",), **kw)
  return qkv, out, mlp


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")
def test_a_kernel_is_merged_only_where_no_dim_after_a_groups_first_is_sharded():
  qkv, out, mlp = qkv_and_out()
  as_matrix = lambda lin: lin._as_matrix(lin.kernel.shape)
  assert jax.default_backend() == "cpu"
  assert as_matrix(qkv) and as_matrix(out)  # no mesh
  assert not as_matrix(mlp)  # already a matrix
  with jax.set_mesh(create_mesh(MeshConfig(2, 4, 1))):  # fsdp shards `embed`: each group's first dim
    assert as_matrix(qkv) and as_matrix(out)
  with jax.set_mesh(create_mesh(MeshConfig(1, 2, 4))):  # tensor shards `heads`
    assert not as_matrix(qkv)  # [embed | 3, heads, head_dim]: heads is inside its group
    assert as_matrix(out)  # [heads, head_dim | embed]: heads leads its group
