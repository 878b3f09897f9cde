"""HBM levers of the 7B stage 2 on 16 v5e chips (docs/tpu.md): each changes where bytes live or what
is recomputed, never the step's results."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from qwenvl_jax.model import pixels
from qwenvl_jax.model.qwenvl import QwenVL
from qwenvl_jax.train import state as state_lib
from tests.model.helpers import tiny_config
from tests.train.helpers import run_steps, stage_config, tiny_run

needs8 = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")


# --- optim.offload_moments -------------------------------------------------------------------


@needs8
def test_offloaded_moments_live_in_pinned_host_memory():
  """The abstract state puts every Adam moment in pinned host memory with its parameter's
  partitioning (counters stay on the device); `onto_device` / `back_home` round-trip them."""
  run = tiny_run(stage_config(2, "optim.offload_moments=True"), (2, 2, 2))
  ref = tiny_run(stage_config(2), (2, 2, 2))
  opt, ref_opt = run.abstract_state.opt_state, ref.abstract_state.opt_state
  kinds = [x.sharding.memory_kind for x in jax.tree.leaves(opt)]
  moments = [x for x in jax.tree.leaves(opt) if x.ndim > 0]
  assert moments and all(x.sharding.memory_kind == "pinned_host" for x in moments)
  assert kinds.count("pinned_host") == len(moments)
  for a, b in zip(jax.tree.leaves(opt), jax.tree.leaves(ref_opt)):
    assert a.sharding.spec == b.sharding.spec and a.shape == b.shape and a.dtype == b.dtype
  home = jax.tree.map(lambda x: x.sharding, opt)
  tree = jax.tree.map(lambda x: jnp.ones(x.shape, x.dtype), opt)

  @jax.jit
  def there_and_back(t):
    on_device = state_lib.onto_device(jax.device_put(t, home), home)
    return state_lib.back_home(jax.tree.map(lambda x: x * 2, on_device), home)

  with jax.set_mesh(run.mesh):
    out = there_and_back(tree)
  for x, h in zip(jax.tree.leaves(out), jax.tree.leaves(home)):
    assert x.sharding.memory_kind == h.memory_kind
    np.testing.assert_array_equal(np.asarray(x), 2 * np.ones(x.shape, x.dtype))


@needs8
@pytest.mark.slow  # two 3-step tiny trainings on 8 devices (~1.5 min on a quiet host)
def test_offloaded_moments_change_nothing():
  """3 steps on a (2, 2, 2) mesh with the moments offloaded equal the default bit for bit
  (parameters, losses and the optimizer state)."""
  ref_losses, ref_params, _, ref_state = run_steps(stage_config(2), (2, 2, 2), 3)
  losses, params, run, state = run_steps(stage_config(2, "optim.offload_moments=True"), (2, 2, 2), 3)
  np.testing.assert_array_equal(losses, ref_losses)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
    np.testing.assert_array_equal(a, b)
  mu = state.opt_state.inner_states["train"].inner_state[1].mu
  assert mu["llm"]["blocks"]["attn"]["qkv"]["kernel"].sharding.memory_kind == "pinned_host"
  for a, b in zip(jax.tree.leaves(state.opt_state), jax.tree.leaves(ref_state.opt_state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@needs8
@pytest.mark.slow  # one tiny train-step compile on 8 devices, an Orbax save and restore
def test_offloaded_moments_survive_an_orbax_round_trip(tmp_path):
  """A state whose moments live in pinned host memory (after one step, so they are not zero),
  saved by the run's checkpointer and restored: the same values, every moment back in pinned host
  memory with its partitioning, and the restored state's next step equals the saved state's bit
  for bit. (The CPU backend has a pinned_host memory, so this is the real placement path.)"""
  from qwenvl_jax.train.batch import SyntheticIterator
  from qwenvl_jax.train.setup import setup
  from tests.train.helpers import initial_train_state, mesh_of
  config = stage_config(2, "optim.offload_moments=True", "async_checkpoint=False")
  run = setup(config, mesh_of((2, 2, 2)), workdir=tmp_path)
  step, tcfg = run.train_step, run.train_cfg
  it = SyntheticIterator(run.model_cfg, tcfg.batch_size, tcfg.seq_len, max_images=2, packed=True)
  batches = [step.device_batch(next(it)) for _ in range(2)]
  place = lambda b: jax.device_put(b, step.batch_shardings(b))
  state, _ = step(initial_train_state(run), place(batches[0]))
  assert run.save(1, state, {"position": 1}, force=True, verify=True)
  restored, data_state = run.restore_latest()
  assert data_state == {"position": 1} and int(restored.step) == int(state.step) == 1
  home = run.abstract_state.opt_state
  leaves = list(zip(jax.tree.leaves(restored.opt_state), jax.tree.leaves(state.opt_state),
                    jax.tree.leaves(home)))
  assert sum(h.sharding.memory_kind == "pinned_host" for _, _, h in leaves) >= 2
  for got, want, h in leaves:
    assert got.sharding.memory_kind == want.sharding.memory_kind == h.sharding.memory_kind
    assert got.sharding.is_equivalent_to(h.sharding, got.ndim)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  assert any(np.abs(np.asarray(g)).max() > 0 for g, _, h in leaves if h.ndim > 0)
  for a, b in zip(jax.tree.leaves(restored.params), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # the saved state is donated by its own step, so the restored one steps first
  outs = [step(s, place(batches[1])) for s in (restored, state)]
  for a, b in zip(jax.tree.leaves(jax.tree.map(np.asarray, outs[0])),
                  jax.tree.leaves(jax.tree.map(np.asarray, outs[1]))):
    np.testing.assert_array_equal(a, b)


# --- model.vit_remat_group -------------------------------------------------------------------


def _vit_loss_and_grads(cfg, images):
  model = QwenVL(cfg, rngs=nnx.Rngs(0)).visual

  def loss(m):
    return jnp.sum(jnp.sin(m(images)))

  return nnx.jit(nnx.value_and_grad(loss))(model)


def test_grouped_vit_remat_gives_the_same_loss_and_gradients():
  """4 ViT layers rematerialised in 2 groups of 2 (a scan over groups around the per-layer scan)
  give the per-layer remat's value and gradients (< 1e-6, fp32: only XLA's fusion may differ)."""
  base = tiny_config(remat="full")
  base = dataclasses.replace(base, vision=dataclasses.replace(base.vision, layers=4))
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 56, 56, 3), dtype=np.uint8))
  ref_loss, ref_grads = _vit_loss_and_grads(base, images)
  loss, grads = _vit_loss_and_grads(dataclasses.replace(base, vit_remat_group=2), images)
  assert float(loss) == pytest.approx(float(ref_loss), abs=1e-6)
  assert jax.tree.structure(grads) == jax.tree.structure(ref_grads)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-6)
  assert any(np.abs(np.asarray(g)).max() > 0 for g in jax.tree.leaves(ref_grads))


def test_vit_remat_group_must_divide_the_layers():
  from qwenvl_jax.config import ConfigError
  cfg = tiny_config(remat="full")
  cfg = dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, layers=4), vit_remat_group=3)
  with pytest.raises(ConfigError, match="vit_remat_group"):
    cfg.validate()


# --- lane-packed pixels (TrainStep.device_batch) ---------------------------------------------


@pytest.mark.parametrize("size", [448, 56, 112, 30])
def test_packed_pixels_round_trip(size):
  """uint8 images -> uint32 words (the step's device form) -> the same uint8 images; 448 px uses
  128-wide rows (1176 of them per image), sizes whose row bytes do not divide by 4 stay uint8."""
  x = np.random.default_rng(size).integers(0, 256, (2, 3, size, size, 3), dtype=np.uint8)
  words = pixels.pack_lanes(x)
  assert (words.shape, words.dtype) == pixels.abstract_packed(x.shape)
  # one predicate for the step's batch and for a microbatch sliced out of it on the device
  assert pixels.is_packed(words) == pixels.is_packed(jnp.asarray(words)[:1]) == (size % 4 == 0)
  assert not pixels.is_packed(x)
  normalized = pixels.normalize_host(x)  # float32 pixels: not packed, left alone
  assert pixels.pack_lanes(normalized) is normalized and not pixels.is_packed(normalized)
  if size % 4:
    assert words is x
    return
  assert pixels.pack_lanes(words) is words  # packing twice is packing once
  assert words.dtype == np.uint32 and words.nbytes == x.nbytes
  if size == 448:
    assert words.shape == (2, 3, 1176, 128)
  # little-endian words by construction: the first word's low byte is the first pixel byte
  assert words.reshape(-1)[0] & 0xFF == x.reshape(-1)[0]
  np.testing.assert_array_equal(np.asarray(pixels.unpack_lanes(jnp.asarray(words), size)), x)


@pytest.mark.slow  # two tiny train-step compiles (one per batch form)
def test_step_takes_packed_pixels_with_the_same_results():
  """One stage-2 step on the contract's uint8 batch and on its `device_batch` form: same loss,
  parameters and metrics bit for bit."""
  from qwenvl_jax.train.batch import make_synthetic_batch
  from tests.train.helpers import initial_train_state
  run = tiny_run(stage_config(2), (1, 1, 1))
  step = run.train_step
  host = make_synthetic_batch(run.model_cfg, run.train_cfg.batch_size, run.train_cfg.seq_len,
                              max_images=2, packed=True)
  packed = step.device_batch(host)
  assert packed["images"].dtype == np.uint32 and packed["images"].ndim == 4
  outs = []
  for batch in (host, packed):
    new, m = step(initial_train_state(run), jax.device_put(batch, step.batch_shardings(batch)))
    outs.append((jax.tree.map(np.asarray, new.params), jax.tree.map(np.asarray, m)))
  for a, b in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1])):
    np.testing.assert_array_equal(a, b)
