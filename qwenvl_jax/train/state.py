"""The train state: one pytree (step, params, buffers, opt_state) and its abstract, sharded twin.

`params` is the pure dict of the model's `nnx.Param`s (fp32 master weights, the only leaves the
optimizer sees), `buffers` every other variable (the adapter's sin-cos tables, a Q-LoRA quantised
base), `opt_state` the optax state (moments sharded exactly like their parameters, counters
replicated), `step` the number of updates applied (a replicated int32).

A checkpoint's `params` item is `model_state()`, params and buffers joined back into the pure dict of
`nnx.state(model)`; `with_model_state` splits such a dict by this state's own keys. So the on-disk
layout does not depend on how the state is split in memory.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx, struct, traverse_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from qwenvl_jax.sharding import eval_shape_model, init_sharded, param_shardings


@struct.dataclass
class TrainState:
  step: Any
  params: dict
  buffers: dict
  opt_state: Any

  def model_state(self) -> dict:
    """params + buffers as the pure dict of `nnx.state(model)` (a checkpoint's `params` item)."""
    return traverse_util.unflatten_dict({**traverse_util.flatten_dict(self.params),
                                         **traverse_util.flatten_dict(self.buffers)})

  def with_model_state(self, full: dict) -> "TrainState":
    """This state with params and buffers taken from `full` (every variable of the model)."""
    flat = traverse_util.flatten_dict(full)
    pick = lambda like: traverse_util.unflatten_dict(
        {k: flat[k] for k in traverse_util.flatten_dict(like)})
    return self.replace(params=pick(self.params), buffers=pick(self.buffers))

  def shardings(self) -> "TrainState":
    """The shardings of an abstract (or concrete) state, as a state of NamedShardings."""
    return jax.tree.map(lambda x: x.sharding, self)


def _sharded_struct(x, sharding):
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)


def abstract_model(make_model: Callable[[], nnx.Module], mesh: Mesh):
  """(graphdef, abstract params, abstract buffers) of `make_model()`, with their shardings; nothing
  is allocated."""
  model = eval_shape_model(make_model)
  graphdef, params, buffers = nnx.split(model, nnx.Param, ...)
  param_sh = param_shardings(params, mesh).to_pure_dict()
  buffer_sh = param_shardings(buffers, mesh).to_pure_dict()
  return (graphdef, jax.tree.map(_sharded_struct, params.to_pure_dict(), param_sh),
          jax.tree.map(_sharded_struct, buffers.to_pure_dict(), buffer_sh))


HOST, DEVICE = "pinned_host", "device"


def abstract_state(abs_params: dict, abs_buffers: dict, tx, mesh: Mesh,
                   offload_moments: bool = False) -> TrainState:
  """The abstract train state: the optimizer's state shaped by `tx`, sharded like the parameters;
  with `offload_moments` the parameter-shaped leaves (Adam moments) live in pinned host memory."""
  replicated = NamedSharding(mesh, P())
  abs_opt = jax.eval_shape(tx.init, abs_params)
  param_sh = jax.tree.map(lambda x: x.sharding, abs_params)
  if offload_moments:
    param_sh = jax.tree.map(lambda s: s.with_memory_kind(HOST), param_sh)
  opt_sh = opt_state_shardings(abs_opt, abs_params, param_sh, replicated)
  return TrainState(step=jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated),
                    params=abs_params, buffers=abs_buffers,
                    opt_state=jax.tree.map(_sharded_struct, abs_opt, opt_sh))


def opt_state_shardings(abs_opt, params: dict, param_sh: dict, replicated: NamedSharding):
  """Each optimizer-state leaf whose trailing dict path and shape are a parameter's gets that
  parameter's sharding; everything else (step counters) is replicated. (optax.tree_map_params does
  not see through multi_transform's masked moment trees.)"""
  flat_p, flat_sh = traverse_util.flatten_dict(params), traverse_util.flatten_dict(param_sh)

  def pick(path, leaf):
    keys = []
    for k in reversed(path):
      if not isinstance(k, jax.tree_util.DictKey):
        break
      keys.append(k.key)
    key = tuple(reversed(keys))
    if key in flat_p and flat_p[key].shape == leaf.shape:
      return flat_sh[key]
    return replicated

  return jax.tree_util.tree_map_with_path(pick, abs_opt)


def offloaded(shardings) -> bool:
  """Whether any leaf's home (a tree of shardings) is host memory."""
  return any(s.memory_kind == HOST for s in jax.tree.leaves(shardings))


def onto_device(tree, shardings):
  """Inside jit: the leaves whose home (`shardings`) is host memory, copied to the device with the
  same partitioning; the others as they are."""
  return jax.tree.map(lambda x, s: jax.device_put(x, s.with_memory_kind(DEVICE))
                      if s.memory_kind == HOST else x, tree, shardings)


def back_home(tree, shardings):
  """Inside jit: the leaves whose home is host memory, copied back there (`onto_device`'s inverse)."""
  return jax.tree.map(lambda x, s: jax.device_put(x, s) if s.memory_kind == HOST else x,
                      tree, shardings)


def new_state(abstract: TrainState, tx, params: dict, buffers: dict, step: int = 0) -> TrainState:
  """A state from (sharded) params and buffers: fresh optimizer state, `step` updates done."""
  sh = abstract.shardings()
  opt_state = jax.jit(tx.init, in_shardings=(sh.params,), out_shardings=sh.opt_state)(params)
  return TrainState(step=jax.device_put(jnp.int32(step), sh.step), params=params, buffers=buffers,
                    opt_state=opt_state)


def random_state(abstract: TrainState, tx, make_model: Callable[[], nnx.Module],
                 mesh: Mesh) -> TrainState:
  """Random parameters and the fixed buffers, each created on its own shard, and a fresh optimizer."""
  with jax.set_mesh(mesh):
    model = init_sharded(make_model, mesh)
  _, params, buffers = nnx.split(model, nnx.Param, ...)
  return new_state(abstract, tx, params.to_pure_dict(), buffers.to_pure_dict())


def placed_state(abstract: TrainState, tx, full: dict, step: int = 0) -> TrainState:
  """A state from every variable of a model (host or device arrays), placed on the state's shardings."""
  sh = abstract.shardings()
  split = abstract.with_model_state(full)
  params = jax.device_put(split.params, sh.params)
  return new_state(abstract, tx, params, jax.device_put(split.buffers, sh.buffers), step)
