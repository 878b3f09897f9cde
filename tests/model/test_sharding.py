"""The tiny model on 8 fake CPU devices: same logits on every mesh, parameters sharded by the rules."""

import numpy as np
import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from qwenvl_jax.config import MeshConfig
from qwenvl_jax.model.qwenvl import QwenVL
from qwenvl_jax.sharding import batch_sharding, create_mesh, init_sharded, logical_to_spec
from tests.model.helpers import image_row, tiny_config


def _inputs(cfg):
  rows = [image_row(cfg, [1, "IMG", 5, 6, 7, 8]), image_row(cfg, [9, 10, "IMG", 11, 12, 13])]
  rows = rows * 4  # batch 8 so every data/fsdp split divides it
  images = np.random.default_rng(0).normal(size=(8, 1, 56, 56, 3)).astype(np.float32)
  return np.stack(rows), images


def _norm(spec):
  """P(None, 'x', None) and P(None, 'x') place data identically; compare without trailing Nones."""
  parts = list(spec)
  while parts and parts[-1] is None:
    parts.pop()
  return tuple(parts)


def _forward(model, ids, images):
  return nnx.jit(lambda m, i, im: m(i, im))(model, ids, images)


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")
@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 2, 2), (1, 2, 4)])
def test_mesh_logits_equal_single_device(shape):
  cfg = tiny_config()
  ids, images = _inputs(cfg)
  ref = np.asarray(_forward(QwenVL(cfg, rngs=nnx.Rngs(0)), jnp.asarray(ids), jnp.asarray(images)))
  mesh = create_mesh(MeshConfig(*shape))
  with jax.set_mesh(mesh):
    model = init_sharded(lambda: QwenVL(cfg, rngs=nnx.Rngs(0)), mesh)
    ids_s = jax.device_put(ids, batch_sharding(mesh, 2))
    img_s = jax.device_put(images, batch_sharding(mesh, 5))
    out = _forward(model, ids_s, img_s)
  assert np.abs(np.asarray(out) - ref).max() < 1e-5

  # Parameters really are sharded as the rules say.
  data, fsdp, tensor = shape
  qkv = model.llm.blocks.attn.qkv.kernel[...]
  assert qkv.shape[0] == cfg.llm.layers
  expected = P(None, "fsdp" if fsdp > 1 else None, None, "tensor" if tensor > 1 else None, None)
  assert _norm(qkv.sharding.spec) == _norm(expected)
  emb = model.llm.embed[...]
  assert _norm(emb.sharding.spec) == _norm(P("tensor" if tensor > 1 else None, "fsdp" if fsdp > 1 else None))
  fc = model.visual.blocks.mlp.fc_in.kernel[...]
  assert _norm(fc.sharding.spec) == _norm(P(None, "fsdp" if fsdp > 1 else None, "tensor" if tensor > 1 else None))
  if tensor > 1:  # each device holds 1/tensor of the MLP columns
    shard_shape = fc.addressable_shards[0].data.shape
    assert shard_shape[2] == cfg.vision.mlp_dim // tensor


def test_rules_table_maps_logical_names():
  assert logical_to_spec(("layers", "embed", "qkv", "heads", "head_dim")) == P(None, "fsdp", None, "tensor", None)
  assert logical_to_spec(("act_batch", "act_length", "act_vocab")) == P(("data", "fsdp"), None, "tensor")
  with pytest.raises(KeyError, match="no sharding rule"):
    logical_to_spec(("nonsense",))
