"""The chunked, targets-only LM-head loss equals the full-logits reference: value and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import re

from jax.sharding import NamedSharding

from qwenvl_jax.config import MeshConfig, apply_overrides, load_config_dict, model_config_from_dict
from qwenvl_jax.model import lm_loss
from qwenvl_jax.model.qwenvl import QwenVL
from qwenvl_jax.sharding import create_mesh, logical_to_spec
from qwenvl_jax.train import step as step_lib
from qwenvl_jax.train.batch import make_synthetic_batch


def _inputs(b=3, n=37, d=16, v=101, seed=0):
  r = np.random.default_rng(seed)
  hidden = jnp.asarray(r.normal(size=(b, n, d)), jnp.float32)
  kernel = jnp.asarray(r.normal(size=(d, v)) * 0.3, jnp.float32)
  labels = jnp.asarray(r.integers(0, v, (b, n)), jnp.int32)
  weights = jnp.asarray(r.random((b, n)) < 0.4)
  weights = weights.at[1].set(False)  # a row without targets
  weights = weights.at[2].set(True)  # a row of targets only
  return hidden, kernel, labels, weights


@pytest.mark.parametrize("chunk", [1, 8, 37, 64])
def test_chunked_equals_plain_value_and_gradients(chunk):
  h, k, lab, w = _inputs()
  f = lambda fn: jax.value_and_grad(lambda h, k: fn(h, k, lab, w)[0], argnums=(0, 1))(h, k)
  (ref, (gh_ref, gk_ref)) = f(lm_loss.plain_cross_entropy)
  (val, (gh, gk)) = jax.jit(lambda: f(lambda *a: lm_loss.chunked_cross_entropy(*a, chunk=chunk)))()
  # Independent check of the reference: CE from numpy log-softmax.
  logits = np.asarray(h) @ np.asarray(k)
  logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
      - logits.max(-1, keepdims=True)
  nll = -np.take_along_axis(logp, np.asarray(lab)[..., None], -1)[..., 0]
  np.testing.assert_allclose(ref, nll[np.asarray(w)].sum(), rtol=1e-5)
  np.testing.assert_allclose(val, ref, rtol=1e-6)
  np.testing.assert_allclose(gh, gh_ref, atol=1e-5)
  np.testing.assert_allclose(gk, gk_ref, atol=1e-5)
  assert not np.asarray(gh)[~np.asarray(w)].any()  # non-targets get no gradient


@pytest.mark.parametrize("mesh_shape", [(2, 2, 2), (1, 8, 1), (1, 4, 2)])
def test_vocab_parallel_head_on_a_mesh_equals_plain(mesh_shape):
  """`shard_vocab` on the 8 fake devices (rows over data x fsdp, the head as its parameter: embed over
  fsdp, vocab over tensor): value and both gradients equal the single-device full-logits reference,
  and the compiled program never gathers the whole [D, V] head (the point of the layout)."""
  h, k, lab, w = _inputs(b=8, n=40, d=24, v=208)
  ref, (gh_ref, gk_ref) = jax.value_and_grad(
      lambda h, k: lm_loss.plain_cross_entropy(h, k, lab, w)[0], argnums=(0, 1))(h, k)
  mesh = create_mesh(MeshConfig(*mesh_shape))
  with jax.set_mesh(mesh):
    hs = jax.device_put(h, NamedSharding(mesh, logical_to_spec(("act_batch", None, None))))
    ks = jax.device_put(k, NamedSharding(mesh, logical_to_spec(("embed", "vocab"))))
    step = jax.jit(jax.value_and_grad(
        lambda h, k: lm_loss.chunked_cross_entropy(h, k, lab, w, chunk=8, shard_vocab=True)[0],
        argnums=(0, 1)), out_shardings=(None, (hs.sharding, ks.sharding)))
    val, (gh, gk) = step(hs, ks)
    hlo = step.lower(hs, ks).compile().as_text()
  np.testing.assert_allclose(val, ref, rtol=1e-6)
  np.testing.assert_allclose(gh, gh_ref, atol=1e-5)
  np.testing.assert_allclose(gk, gk_ref, atol=1e-5)
  gathered = re.findall(r"= \w+\[(\d+),(\d+)\]\S* all-gather\(", hlo)
  assert ("24", "208") not in gathered and ("208", "24") not in gathered, gathered


def test_vocab_parallel_head_only_where_the_vocabulary_divides():
  """A vocabulary the mesh does not divide (or no mesh) keeps the row-sharded head: a replicated
  vocabulary with gathered rows would compute every row's full logits on every chip."""
  with jax.set_mesh(create_mesh(MeshConfig(2, 2, 2))):
    assert lm_loss._vocab_splits_as_rows(8, (24, 208))
    assert not lm_loss._vocab_splits_as_rows(8, (24, 212))
  assert not lm_loss._vocab_splits_as_rows(8, (24, 208))


def test_chunks_without_targets_are_skipped():
  """Skipping is real: the head runs on ceil(most targets in a row / chunk) chunks, once per chunk
  also when differentiated. Counted with a head tallied through a host callback."""
  h, k, lab, w = _inputs(b=2, n=64, v=11)
  w = jnp.zeros_like(w).at[0, :5].set(True).at[1, 40:50].set(True)  # at most 10 targets per row
  calls = []
  orig = lm_loss._head

  def counting_head(*args):
    jax.debug.callback(lambda: calls.append(1))
    return orig(*args)

  lm_loss._head = counting_head
  try:
    jax.block_until_ready(jax.jit(lambda: lm_loss.chunked_cross_entropy(h, k, lab, w, chunk=4))())
  finally:
    lm_loss._head = orig
  assert len(calls) == 3  # ceil(10 / 4) of 16 chunks
  calls.clear()
  lm_loss._head = counting_head
  try:  # differentiated: the gradients come from the same pass, no second head call per chunk
    jax.block_until_ready(jax.jit(jax.grad(
        lambda h: lm_loss.chunked_cross_entropy(h, k, lab, w, chunk=4)[0]))(h))
  finally:
    lm_loss._head = orig
  assert len(calls) == 3


@pytest.mark.slow  # two whole-model gradient compiles: minutes on the loaded shared host
def test_train_step_gradients_match_plain_path():
  """The whole model's gradients through `step.loss_sums`: chunked (default) vs loss_chunk=0."""
  base = load_config_dict("configs/stage2.py:tiny")
  grads = {}
  for chunk in (0, 16):
    cfg = model_config_from_dict(apply_overrides(base, [f"model.loss_chunk={chunk}"]).model)
    model = QwenVL(cfg, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    batch = make_synthetic_batch(cfg, 2, 64, max_images=2, packed=True)
    loss = lambda p: step_lib.loss_sums(nnx.merge(graphdef, p, rest), batch)[0]
    grads[chunk] = jax.jit(jax.value_and_grad(loss))(params)
  (v0, g0), (v1, g1) = grads[0], grads[16]
  np.testing.assert_allclose(v1, v0, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(b, a, atol=1e-5)
