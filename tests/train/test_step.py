"""The train step: same trajectory on every mesh, frozen parts untouched, accumulation-invariant loss."""

import jax
import numpy as np
import pytest

from qwenvl_jax.train import optim
from qwenvl_jax.train import step as step_lib
from qwenvl_jax.train.batch import make_synthetic_batch
from qwenvl_jax.config import model_config_from_dict
from tests.train.helpers import flat, run_steps, stage_config

needs8 = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")


@pytest.fixture(scope="module")
def one_device():
  """Stage 2 (everything trained, packed rows, 2 microbatches) for 5 steps on one device."""
  return run_steps(stage_config(2), (1, 1, 1), 5)


@needs8
@pytest.mark.parametrize("shape,accum", [((8, 1, 1), 1), ((2, 2, 2), 4)])
def test_sharded_trajectory_equals_one_device(one_device, shape, accum):
  """Also checks that gradient accumulation does not change the step: the reference accumulates 2
  microbatches, the meshes 1 and 4. Tolerances: losses to 1e-5 relative (fp32; only the reduction
  order differs), parameters after 5 Adam steps (lr 1e-3) to 2e-5 absolute."""
  ref_losses, ref_params, _, _ = one_device
  losses, params, setup, opt_state = run_steps(stage_config(2, f"grad_accum={accum}"), shape, 5)
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  diff = max(np.abs(a - b).max() for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)))
  assert diff < 2e-5, diff
  assert ref_losses[-1] < ref_losses[0]
  # Parameters and their Adam moments really are sharded (fsdp x tensor on (2, 2, 2)).
  data, fsdp, tensor = shape
  mu = opt_state.inner_states["train"].inner_state[1].mu
  qkv_mu = mu["llm"]["blocks"]["attn"]["qkv"]["kernel"]
  assert qkv_mu.sharding == setup.param_sh["llm"]["blocks"]["attn"]["qkv"]["kernel"]
  assert qkv_mu.addressable_shards[0].data.shape[1] == qkv_mu.shape[1] // fsdp


@pytest.mark.parametrize("stage", [1, 3])
def test_frozen_subtrees_unchanged(stage):
  # Stage 3 also runs in bf16 compute: master weights (and so the optimizer) stay float32.
  config = stage_config(stage, *(["model.dtype=bfloat16"] if stage == 3 else []))
  frozen = tuple(config.optim.frozen)
  before = flat(run_steps(config, (1, 1, 1), 0)[1])
  losses, after, _, opt_state = run_steps(config, (1, 1, 1), 3)
  after = flat(after)
  assert np.isfinite(losses).all() and all(v.dtype == np.float32 for v in after.values())
  for k in before:
    if optim.is_frozen(k, frozen):
      assert np.array_equal(before[k], after[k]), f"frozen {k} changed"
    elif not k.endswith(".bias") and "ln_" not in k:  # weights with gradient signal move
      assert not np.array_equal(before[k], after[k]), f"trained {k} did not change"
  moments = [optim.path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(opt_state)]
  assert not any(optim.is_frozen(p.split(".mu.")[-1].split(".nu.")[-1], frozen)
                 for p in moments if ".mu." in p or ".nu." in p)


def test_loss_is_mean_over_targets_and_ignores_boundaries():
  cfg = model_config_from_dict(stage_config(2).model)
  b = make_synthetic_batch(cfg, 4, 64, max_images=2, packed=True)
  w = np.asarray(step_lib.target_weights(b))
  seg = b["segment_ids"]
  starts = np.flatnonzero((seg[:, 1:] != seg[:, :-1]).ravel())
  assert starts.size and not w.ravel()[starts].any()  # first token of a segment: never a target
  assert not w[seg[:, 1:] == 0].any()  # padding: never a target
  assert w.sum() == (b["loss_mask"][:, 1:] & (seg[:, 1:] != 0)).sum()
