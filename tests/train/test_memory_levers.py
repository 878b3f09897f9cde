"""Switches that trade HBM for host memory or recomputation: the step's results must not change."""

import jax
import numpy as np
import pytest

from tests.train.helpers import run_steps, stage_config

needs8 = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")


@needs8
def test_offloaded_moments_change_nothing():
  """`optim.offload_moments`: the Adam moments live in pinned host memory between steps and come
  to the device for the update only; 3 steps on a (2, 2, 2) mesh equal the default bit for bit."""
  ref_losses, ref_params, _, ref_state = run_steps(stage_config(2), (2, 2, 2), 3)
  losses, params, run, state = run_steps(stage_config(2, "optim.offload_moments=True"), (2, 2, 2), 3)
  np.testing.assert_array_equal(losses, ref_losses)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
    np.testing.assert_array_equal(a, b)
  mu = state.opt_state.inner_states["train"].inner_state[1].mu
  kernel = mu["llm"]["blocks"]["attn"]["qkv"]["kernel"]
  assert kernel.sharding.memory_kind == "pinned_host"
  assert kernel.sharding.spec == run.abstract_state.params["llm"]["blocks"]["attn"]["qkv"]["kernel"].sharding.spec
  for a, b in zip(jax.tree.leaves(state.opt_state), jax.tree.leaves(ref_state.opt_state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_grouped_vit_remat_changes_nothing():
  """`model.vit_remat_group`: the ViT's layers rematerialised in groups (a scan over groups around
  the per-layer scan) train exactly like per-layer remat: 2 steps of stage 2 (ViT trained, 4 ViT
  layers in 2 groups) give the same losses and parameters (< 1e-6: only XLA's fusion may differ)."""
  base = ("model.remat=full", "model.vision.layers=4")
  ref_losses, ref_params, _, _ = run_steps(stage_config(2, *base), (1, 1, 1), 2)
  losses, params, _, _ = run_steps(stage_config(2, *base, "model.vit_remat_group=2"), (1, 1, 1), 2)
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-6)
  diff = max(np.abs(a - b).max() for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)))
  assert diff < 1e-6, diff
  assert ref_losses[-1] != ref_losses[0]  # the parameters moved


def test_vit_remat_group_must_divide_the_layers():
  from qwenvl_jax.config import ConfigError, model_config_from_dict
  cfg = stage_config(2, "model.vision.layers=4", "model.vit_remat_group=3").model
  with pytest.raises(ConfigError, match="vit_remat_group"):
    model_config_from_dict(cfg).validate()
