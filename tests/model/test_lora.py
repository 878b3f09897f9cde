"""LoRA on the model: zero-initialised B is the base model; merged == unmerged (float and Q-LoRA)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from qwenvl_jax.model import lora, quant
from qwenvl_jax.model.qwenvl import QwenVL
from tests.model.helpers import image_row, tiny_config

TARGETS = ["llm.blocks.attn.qkv", "llm.blocks.attn.out", "llm.blocks.mlp.w1", "llm.blocks.mlp.w2",
           "visual.blocks.attn.qkv", "adapter.kv_proj"]


@nnx.jit
def _forward(model, ids, images):
  return model(ids, images)


@pytest.fixture(scope="module")
def tiny():
  cfg = tiny_config()
  ids = jnp.asarray(image_row(cfg, [5, 9, "IMG", 17, 3, 8, 250, 11])[None])
  images = jnp.asarray(np.random.RandomState(1).rand(1, 1, 56, 56, 3).astype(np.float32))
  graphdef, state = nnx.split(QwenVL(cfg, rngs=nnx.Rngs(0)))
  return (lambda: nnx.merge(graphdef, state)), (ids, images)


def _train_b(model, scale=0.05):
  for path, m in lora.linear_modules(model).items():
    if m.lora_b is not None:
      m.lora_b.set_value(jax.random.normal(jax.random.key(len(path)), m.lora_b.shape) * scale)


def test_zero_b_gives_the_base_logits_exactly(tiny):
  fresh, inputs = tiny
  base = np.asarray(_forward(fresh(), *inputs))
  model = fresh()
  lora.apply_lora(model, TARGETS, rank=4, alpha=8.0, dropout=0.1, rngs=nnx.Rngs(3))
  a = model.llm.blocks.attn.qkv.lora_a
  assert a.shape == (2, 32, 4) and a.get_metadata()["out_sharding"] == ("layers", "embed", None)
  assert model.llm.blocks.attn.qkv.lora_b.get_metadata()["out_sharding"] == (
      "layers", None, "qkv", "heads", "head_dim")
  np.testing.assert_array_equal(np.asarray(_forward(model, *inputs)), base)


@pytest.mark.parametrize("fmt", [None, "nf4"])
def test_merged_equals_unmerged(tiny, fmt):
  fresh, inputs = tiny
  model = fresh()
  if fmt:
    quant.quantize_model(model, fmt, group_size=8)
  lora.apply_lora(model, TARGETS, rank=4, alpha=8.0, dropout=0.0, rngs=nnx.Rngs(3))
  _train_b(model)
  unmerged = np.asarray(_forward(model, *inputs))
  assert np.abs(unmerged - np.asarray(_forward(fresh(), *inputs))).max() > 1e-3  # LoRA matters
  assert sorted(lora.merge_lora(model)) == sorted(TARGETS)
  assert not nnx.state(model, lora.LoRAParam).flat_state()
  assert all(m.quant is None for m in lora.linear_modules(model).values())  # mlp.c_proj too
  np.testing.assert_allclose(np.asarray(_forward(model, *inputs)), unmerged, atol=1e-5, rtol=0)


def test_dropout_only_under_a_key(tiny):
  fresh, inputs = tiny
  model = fresh()
  lora.apply_lora(model, TARGETS, rank=4, alpha=8.0, dropout=0.5, rngs=nnx.Rngs(3))
  _train_b(model)
  plain = np.asarray(_forward(model, *inputs))
  with lora.dropout(jax.random.key(0)):
    dropped = np.asarray(model(*inputs))
  with lora.dropout(jax.random.key(0)):
    again = np.asarray(model(*inputs))
  np.testing.assert_array_equal(dropped, again)
  assert np.abs(dropped - plain).max() > 1e-4
  np.testing.assert_allclose(np.asarray(model(*inputs)), plain, atol=1e-6)
