"""Shared builders for the training tests: tiny stage configs, initial parameters, a step runner."""

import functools

import jax
import numpy as np
from flax import nnx

from qwenvl_jax.ckpt import checkpoint as ckpt_lib
from qwenvl_jax.config import MeshConfig, apply_overrides, load_config_dict
from qwenvl_jax.model.qwenvl import QwenVL
from qwenvl_jax.sharding import create_mesh
from qwenvl_jax.train.batch import SyntheticIterator
from qwenvl_jax.train.setup import setup
from qwenvl_jax.train.state import TrainState


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


def tiny_run(config, mesh_shape=None):
  """`train.setup.setup` of a stage config on a mesh shape (None: the config's mesh, all devices)."""
  return setup(config, mesh_of(mesh_shape) if mesh_shape is not None else None)


def initial_train_state(run):
  """The run's state from the shared tiny initial parameters (no compile of a random init)."""
  host_params, host_buffers = initial_state(run.model_cfg)
  return run.placed_state(TrainState(0, host_params, host_buffers, None).model_state())


def run_steps(config, mesh_shape, n_steps, fixed=False):
  """n_steps of the stage config on a mesh: (losses, final params as numpy, run, final state)."""
  run = tiny_run(config, mesh_shape)
  tcfg, mcfg, train_step = run.train_cfg, run.model_cfg, run.train_step
  state = initial_train_state(run)
  data = config.data
  it = SyntheticIterator(mcfg, tcfg.batch_size, tcfg.seq_len, max_images=data.max_images,
                         packed=data.layout == "packed", fixed=fixed)
  losses = []
  for _ in range(n_steps):
    host = next(it)
    state, m = train_step(state, jax.device_put(host, train_step.batch_shardings(host)))
    losses.append(float(m["loss"]))
  return np.asarray(losses), jax.tree.map(np.asarray, state.params), run, state


def flat(tree):
  from qwenvl_jax.train.optim import path_str
  return {path_str(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def write_init_checkpoint(config, directory):
  """A workdir holding the shared tiny initial parameters (as a converted checkpoint would): runs
  started from it with --init skip compiling a random init (seconds on CPU)."""
  run = setup(config, workdir=directory)
  state = initial_train_state(run)
  run.save(0, state, {}, force=True)
  run.checkpointer.close()
  ckpt_lib.write_model_config(directory, run.model_cfg)
  return directory
