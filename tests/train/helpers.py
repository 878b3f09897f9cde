"""Shared builders for the training tests: tiny stage configs, initial parameters, a step runner."""

import functools

import jax
import numpy as np
from flax import nnx

from qwenvl_jax.config import (MeshConfig, apply_overrides, load_config_dict, model_config_from_dict,
                               train_config_from_dict)
from qwenvl_jax.model.qwenvl import QwenVL
from qwenvl_jax.sharding import create_mesh
from qwenvl_jax.train import step as step_lib
from qwenvl_jax.train.batch import SyntheticIterator


def stage_config(stage: int, *overrides: str):
  return apply_overrides(load_config_dict(f"stage{stage}:tiny"), list(overrides))


@functools.lru_cache(maxsize=4)
def initial_state(model_cfg):
  """Host copies of a freshly initialised tiny model's (params, buffers): built once per config
  (model construction takes seconds on CPU) and placed onto each test's mesh."""
  model = QwenVL(model_cfg, rngs=nnx.Rngs(0))
  _, params, buffers = nnx.split(model, nnx.Param, ...)
  to_np = lambda t: jax.tree.map(np.asarray, t.to_pure_dict())
  return to_np(params), to_np(buffers)


def mesh_of(shape):
  if shape == (1, 1, 1):
    return create_mesh(MeshConfig(1, 1, 1), devices=jax.devices()[:1])
  return create_mesh(MeshConfig(*shape))


def run_steps(config, mesh_shape, n_steps, fixed=False):
  """n_steps of the stage config on a mesh: (losses, final params as numpy, setup, opt_state)."""
  tcfg, mcfg = train_config_from_dict(config), model_config_from_dict(config.model)
  mesh = mesh_of(mesh_shape)
  setup = step_lib.build_setup(mcfg, tcfg.optim, tcfg.steps, mesh)
  host_params, host_buffers = initial_state(mcfg)
  params = jax.device_put(host_params, setup.param_sh)
  buffers = jax.device_put(host_buffers, setup.buffer_sh)
  opt_state = step_lib.init_opt_state(setup, params)
  train_step = step_lib.TrainStep(setup, tcfg.grad_accum)
  data = config.data
  it = SyntheticIterator(mcfg, tcfg.batch_size, tcfg.seq_len, max_images=data.max_images,
                         packed=data.layout == "packed", fixed=fixed)
  losses = []
  for _ in range(n_steps):
    host = next(it)
    batch = {k: jax.device_put(v, s) for (k, v), s in zip(host.items(),
                                                           train_step.batch_shardings(host).values())}
    params, opt_state, m = train_step(params, opt_state, buffers, batch)
    losses.append(float(m["loss"]))
  return np.asarray(losses), jax.tree.map(np.asarray, params), setup, opt_state


def flat(tree):
  from qwenvl_jax.train.optim import path_str
  return {path_str(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def abstract_full(config):
  """(setup on all devices, abstract full-params tree, model config) of a stage config."""
  tcfg, mcfg = train_config_from_dict(config), model_config_from_dict(config.model)
  setup = step_lib.build_setup(mcfg, tcfg.optim, tcfg.steps, create_mesh(MeshConfig()))
  return setup, step_lib.join_full(setup.abs_params, setup.abs_buffers), mcfg


def write_init_checkpoint(config, directory):
  """A workdir holding the shared tiny initial parameters (as a converted checkpoint would): runs
  started from it with --init skip compiling a random init (seconds on CPU)."""
  from qwenvl_jax.ckpt import checkpoint as ckpt_lib
  setup, _, mcfg = abstract_full(config)
  host_params, host_buffers = initial_state(mcfg)
  params = jax.device_put(host_params, setup.param_sh)
  full = step_lib.join_full(params, jax.device_put(host_buffers, setup.buffer_sh))
  ckpt = ckpt_lib.Checkpointer(directory, 1, 1)
  ckpt.save(0, full, step_lib.init_opt_state(setup, params), {}, mcfg, force=True)
  ckpt.close()
  ckpt_lib.write_model_config(directory, mcfg)
  return directory
