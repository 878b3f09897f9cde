"""Weight-only quantisation: per-format error bounds, packing, and quantised-model logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from qwenvl_jax.model import quant
from qwenvl_jax.model.layers import Linear
from qwenvl_jax.model.qwenvl import QwenVL
from qwenvl_jax.sharding import create_mesh, shard_model
from qwenvl_jax.config import MeshConfig
from tests.model.helpers import image_row, tiny_config

FORMATS = ["int8", "int4", "nf4"]


def _heavy_tailed(shape, seed=0):
  rng = np.random.RandomState(seed)
  return jnp.asarray(rng.standard_t(3, size=shape).astype(np.float32) * 0.02)


@pytest.mark.parametrize("fmt", FORMATS)
def test_dequantisation_error_within_format_bound(fmt):
  # [layers, heads, head_dim, out]: a stacked, multi-dim-input kernel like the attention output.
  w = _heavy_tailed((3, 4, 16, 24))
  spec = quant.QuantSpec(fmt, 0 if fmt == "int8" else 8, n_in=2, n_out=1)
  values, scales = quant.quantize_array(w, spec)
  back = quant.dequantize(values, scales, spec, jnp.float32)
  err = np.abs(np.asarray(back - w))
  bound = np.asarray(quant.error_bound(w, spec))
  assert np.all(err <= bound * (1 + 1e-5) + 1e-9)
  # The error is not trivially zero: for the uniform grids about half the bound on average (NF4's
  # bound is its widest gap, at the tails, so typical errors are far below it).
  low = 0.05 if fmt == "nf4" else 0.2
  assert low < err.mean() / bound.mean() < 0.8
  if fmt == "int8":
    assert values.dtype == jnp.int8 and values.shape == w.shape and scales.shape == (3, 1, 1, 24)
  else:  # two codes per byte along the last input dim; one scale per group of 8
    assert values.dtype == jnp.uint8 and values.shape == (3, 4, 8, 24)
    assert scales.shape == (3, 4, 2, 24)


def test_nf4_code_values_round_trip_exactly():
  # Weights that are exactly codes x absmax come back bit-for-bit (the code book and packing agree).
  codes = np.tile(quant.NF4_CODES, 4).reshape(64, 1) * 0.5
  spec = quant.QuantSpec("nf4", 16, n_in=1, n_out=1)
  values, scales = quant.quantize_array(jnp.asarray(codes), spec)
  np.testing.assert_array_equal(np.asarray(quant.dequantize(values, scales, spec, jnp.float32)), codes)


def test_group_size_must_divide_input_dim():
  linear = Linear((32,), (8,), ("embed",), ("mlp",), use_bias=False, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="kernel: input dim 32 is not a multiple of group_size 24"):
    quant.quantize_model(linear, "int4", group_size=24, include=lambda path: True)


@pytest.fixture(scope="module")
def tiny():
  """A tiny model's inputs (text + one image, so the ViT runs) and its float logits."""
  cfg = tiny_config()
  row = image_row(cfg, [5, 9, "IMG", 17, 3, 8, 250, 11])
  ids = jnp.asarray(np.stack([row, row[::-1].copy()]))
  ids = ids.at[1].set(jnp.asarray(row))  # both rows need a well-formed image span
  ids = ids.at[1, 0].set(77)
  images = jnp.asarray(np.random.RandomState(1).rand(2, 1, 56, 56, 3).astype(np.float32))
  inputs = (ids, images)
  graphdef, state = nnx.split(QwenVL(cfg, rngs=nnx.Rngs(0)))
  fresh = lambda: nnx.merge(graphdef, state)  # a new module over the same arrays
  return fresh, inputs, np.asarray(_forward(fresh(), inputs))


def _forward(model, inputs):
  return nnx.jit(lambda m, ids, images: m(ids, images))(model, *inputs)


@pytest.mark.parametrize("fmt,tol", [("int8", 0.02), pytest.param("int4", 0.25, marks=pytest.mark.slow),
                                     ("nf4", 0.25)])
def test_quantised_model_logits_close_to_float(tiny, fmt, tol):
  fresh, ids, ref = tiny
  model = fresh()
  before = quant.weight_bytes(model)
  paths = quant.quantize_model(model, fmt, group_size=8)
  assert "llm.blocks.attn.qkv.kernel" in paths and "visual.blocks.mlp.fc_in.kernel" in paths
  assert not any(p.startswith("adapter.") for p in paths)
  float_kernels = {k[0] for k, _ in nnx.state(model, nnx.Param).flat_state() if k[-1] == "kernel"}
  assert float_kernels == {"adapter"}  # quantised kernels left the trainable nnx.Param state
  got = np.asarray(_forward(model, ids))
  rel = np.abs(got - ref).max() / np.abs(ref).max()
  assert rel < tol, rel
  assert quant.weight_bytes(model) < before
  if fmt == "nf4":  # unstacked per-layer inference (generate/chat on CPU) dequantises the same way
    model.llm.unstack_layers()
    np.testing.assert_allclose(np.asarray(_forward(model, ids)), got, atol=1e-5)


@pytest.mark.slow
def test_quantised_values_keep_logical_names_and_shard_on_mesh(tiny):
  fresh, ids, _ = tiny
  plain = fresh()
  quant.quantize_model(plain, "nf4", group_size=8)
  expected = _forward(plain, ids)
  mesh = create_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
  with jax.set_mesh(mesh):
    model = shard_model(fresh(), mesh)
    quant.quantize_model(model, "nf4", group_size=8)
    w1 = model.llm.blocks.mlp.w1
    assert w1.kernel_q.get_metadata()["out_sharding"] == ("layers", "embed", "mlp")
    assert tuple(w1.kernel_q.get_value().sharding.spec) == (None, "fsdp", "tensor")
    assert tuple(w1.kernel_scale.get_value().sharding.spec) == (None, "fsdp", "tensor")
    got = _forward(model, ids)
  np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5)
