"""The jitted train step: sharded, gradient-accumulating, mixed precision, functional NNX.

The model is split once into (graphdef, params, buffers): `params` is the pure dict of `nnx.Param`s
(fp32 master weights, the only thing the optimizer sees), `buffers` the fixed tables (adapter sin-cos).
The step is a pure function of (params, opt_state, buffers, batch), jitted with explicit shardings:
parameters per `sharding.param_shardings` (fsdp + tensor), optimizer moments exactly like their
parameters, counters replicated, the batch over (data, fsdp). Params and optimizer state are donated.

Loss: next-token cross entropy in float32 over the targets of the contract (`train/batch.py`),
normalised as the mean over all target tokens of the global batch: each microbatch contributes its
summed CE and its target count, gradients of the sums are accumulated, and the total is divided by
the global count once. So the loss and gradients do not depend on how rows are split into microbatches
or over devices, and long samples weigh more than short ones (as the reference's mean over
non-ignored labels of one batch does).

Microbatches: the global rows are interleaved (microbatch a = rows a, a + A, a + 2A, ...), so each
microbatch is spread evenly over the data/fsdp devices that hold contiguous row blocks; the loop
slices each one out of the step's batch in place (no copy of the whole batch). Compute runs
in the config's `dtype` (bf16) with weights cast on use; gradients and accumulation are fp32.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, traverse_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from qwenvl_jax.config import ModelConfig, OptimConfig
from qwenvl_jax.model import lm_loss, lora
from qwenvl_jax.model.qwenvl import QwenVL
from qwenvl_jax.sharding import batch_sharding, eval_shape_model, init_sharded, param_shardings
from qwenvl_jax.train import optim

BATCH_AXES = ("data", "fsdp")


def _pure(state) -> dict:
  return state.to_pure_dict()


def _sharded_struct(x, sharding):
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)


@dataclasses.dataclass
class Setup:
  """Everything about the model/optimizer that is fixed for a run (shapes, shardings, transforms)."""
  model_cfg: ModelConfig
  mesh: Mesh
  graphdef: Any
  abs_params: dict  # ShapeDtypeStructs with shardings
  abs_buffers: dict
  param_sh: dict
  buffer_sh: dict
  tx: optax.GradientTransformation
  label_tree: dict
  abs_opt: Any
  opt_sh: Any
  make_model: Any = None  # (seed) -> model; default QwenVL(model_cfg) (LoRA runs: train/finetune.py)
  dropout: bool = False  # LoRA dropout on: the step gives the forward pass a per-microbatch key

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())


def build_setup(model_cfg: ModelConfig, optim_cfg: OptimConfig, steps: int, mesh: Mesh,
                make_model=None, dropout: bool = False) -> Setup:
  """Abstract model and optimizer state with their shardings; nothing is allocated."""
  make_model = make_model or (lambda seed: QwenVL(model_cfg, rngs=nnx.Rngs(seed)))
  model = eval_shape_model(lambda: make_model(0))
  graphdef, params, buffers = nnx.split(model, nnx.Param, ...)
  param_sh, buffer_sh = _pure(param_shardings(params, mesh)), _pure(param_shardings(buffers, mesh))
  params, buffers = _pure(params), _pure(buffers)
  abs_params = jax.tree.map(_sharded_struct, params, param_sh)
  abs_buffers = jax.tree.map(_sharded_struct, buffers, buffer_sh)
  tx, label_tree = optim.make_optimizer(optim_cfg, model_cfg, abs_params, steps)
  abs_opt = jax.eval_shape(tx.init, abs_params)
  replicated = NamedSharding(mesh, P())
  # Moments are sharded exactly like their parameters; counters and other scalars are replicated.
  opt_sh = opt_state_shardings(abs_opt, params, param_sh, replicated)
  abs_opt = jax.tree.map(_sharded_struct, abs_opt, opt_sh)
  return Setup(model_cfg, mesh, graphdef, abs_params, abs_buffers, param_sh, buffer_sh, tx,
               label_tree, abs_opt, opt_sh, make_model, dropout)


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


def init_params(setup: Setup, seed: int) -> tuple[dict, dict]:
  """Random parameters and the fixed buffers, each created on its own shard."""
  with jax.set_mesh(setup.mesh):
    model = init_sharded(lambda: setup.make_model(seed), setup.mesh)
  _, params, buffers = nnx.split(model, nnx.Param, ...)
  return _pure(params), _pure(buffers)


def init_opt_state(setup: Setup, params: dict):
  return jax.jit(setup.tx.init, in_shardings=(setup.param_sh,), out_shardings=setup.opt_sh)(params)


def split_full(setup: Setup, full: dict) -> tuple[dict, dict]:
  """A checkpoint's `params` item (every variable of the model) -> (params, buffers)."""
  flat = traverse_util.flatten_dict(full)
  pick = lambda ref: traverse_util.unflatten_dict(
      {k: flat[k] for k in traverse_util.flatten_dict(ref)})
  return pick(setup.abs_params), pick(setup.abs_buffers)


def join_full(params: dict, buffers: dict) -> dict:
  """(params, buffers) -> the pure dict of `nnx.state(model)`."""
  return traverse_util.unflatten_dict({**traverse_util.flatten_dict(params),
                                       **traverse_util.flatten_dict(buffers)})


# --------------------------------------------------------------------------------------------
# Loss.


def target_weights(batch: dict) -> jax.Array:
  """[B, T-1] bool: tokens[:, 1:] is a target, inside the same non-padding segment as its input."""
  seg = batch["segment_ids"]
  return batch["loss_mask"][:, 1:] & (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] != 0)


def loss_sums(model: QwenVL, batch: dict) -> tuple[jax.Array, jax.Array]:
  """(summed CE over the targets, number of targets) of one (micro)batch.

  The LM head runs only on target positions, a chunk at a time (`model.loss_chunk`, see
  model/lm_loss.py); `loss_chunk = 0` computes the full logits (the reference path)."""
  hidden = model(batch["tokens"], batch.get("images"), num_images=batch.get("num_images"),
                 segment_ids=batch["segment_ids"], positions=batch["positions"], return_hidden=True)
  return lm_loss.cross_entropy(hidden[:, :-1], model.llm.lm_head[...], batch["tokens"][:, 1:],
                               target_weights(batch), chunk=model.cfg.loss_chunk,
                               dtype=model.llm.dtype)


def microbatch(batch: dict, n: int, a: jax.Array) -> dict:
  """Microbatch `a` of `n` (rows a, a+n, ...: even over the batch shards) sliced out of the batch in place.

  [B, ...] -> [B/n, n, ...] is a free reshape that keeps each device's contiguous row block, and
  the dynamic index on axis 1 reads only this microbatch's rows; the [n, B/n, ...] transpose would
  copy the whole step's batch (69 GB of stage-2 pixels at the paper's batch) before the loop starts.
  """

  def take(x):
    y = x.reshape(x.shape[0] // n, n, *x.shape[1:])
    y = jax.lax.with_sharding_constraint(y, P(BATCH_AXES, *([None] * x.ndim)))
    return jax.lax.dynamic_index_in_dim(y, a, axis=1, keepdims=False)

  return jax.tree.map(take, batch)


def _dropout_key(mb: dict, a: jax.Array) -> jax.Array:
  """A dropout key that is a function of the microbatch's tokens and index: new for every batch,
  and the same again when a resumed run replays the batch (bit-exact resume)."""
  tokens = mb["tokens"].astype(jnp.uint32)
  weights = jnp.arange(1, tokens.size + 1, dtype=jnp.uint32).reshape(tokens.shape)
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(0), jnp.sum(tokens * weights)), a)


# --------------------------------------------------------------------------------------------
# The step.


class TrainStep:
  """`step(params, opt_state, buffers, batch) -> (params, opt_state, metrics)`, one jit per batch layout
  (with or without images)."""

  def __init__(self, setup: Setup, grad_accum: int):
    self.setup = setup
    self.grad_accum = grad_accum
    self._jitted: dict[tuple, Any] = {}
    labels = traverse_util.flatten_dict(setup.label_tree)
    self._trained = frozenset(k for k, v in labels.items() if v == optim.TRAIN)

  def batch_shardings(self, batch: dict) -> dict:
    return {k: batch_sharding(self.setup.mesh, v.ndim) for k, v in batch.items()}

  def _step(self, params, opt_state, buffers, batch):
    setup, trained = self.setup, self._trained
    flat = traverse_util.flatten_dict(params)
    train_p = {k: v for k, v in flat.items() if k in trained}
    frozen_p = {k: v for k, v in flat.items() if k not in trained}
    flat_sh = traverse_util.flatten_dict(setup.param_sh)
    train_sh = {k: flat_sh[k] for k in train_p}

    def micro_loss(train_p, mb, a):
      full = traverse_util.unflatten_dict({**train_p, **frozen_p})
      with lora.dropout(_dropout_key(mb, a) if setup.dropout else None):
        return loss_sums(nnx.merge(setup.graphdef, full, buffers), mb)

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    def body(carry, a):
      g_acc, ce_acc, n_acc = carry
      (ce, n), g = grad_fn(train_p, microbatch(batch, self.grad_accum, a), a)
      g_acc = jax.tree.map(jnp.add, g_acc, g)
      g_acc = jax.lax.with_sharding_constraint(g_acc, train_sh)
      return (g_acc, ce_acc + ce, n_acc + n), None

    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), train_p)
    carry = (jax.lax.with_sharding_constraint(zeros, train_sh), jnp.zeros((), jnp.float32),
             jnp.zeros((), jnp.int32))
    (g_sum, ce_sum, n), _ = jax.lax.scan(body, carry, jnp.arange(self.grad_accum))
    denom = jnp.maximum(n, 1).astype(jnp.float32)
    grads = jax.tree.map(lambda g, p: (g / denom).astype(p.dtype), g_sum, train_p)
    grad_norm = optax.global_norm(grads)
    # Frozen leaves feed `set_to_zero`, which ignores its input: pass the params, not zeros.
    full_grads = traverse_util.unflatten_dict({**grads, **frozen_p})
    updates, new_opt_state = setup.tx.update(full_grads, opt_state, params)
    flat_u = traverse_util.flatten_dict(updates)
    new_flat = {k: (v + flat_u[k].astype(v.dtype)) if k in trained else v for k, v in flat.items()}
    loss = ce_sum / denom
    # A step whose loss, gradients or new parameters are not finite is not applied: the old
    # parameters and optimizer state come back, so no NaN ever reaches a saved checkpoint.
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    for k in trained:
      finite &= jnp.all(jnp.isfinite(new_flat[k]))
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    new_flat = {k: keep(new_flat[k], v) if k in trained else v for k, v in flat.items()}
    new_opt_state = keep(new_opt_state, opt_state)
    metrics = dict(loss=loss, grad_norm=grad_norm, target_tokens=n, finite=finite,
                   tokens=jnp.sum(batch["segment_ids"] != 0, dtype=jnp.int32),
                   images=jnp.sum(batch["num_images"]) if "num_images" in batch else jnp.int32(0))
    return traverse_util.unflatten_dict(new_flat), new_opt_state, metrics

  def _compile(self, batch: dict):
    key = tuple(sorted((k, v.ndim) for k, v in batch.items()))
    if key not in self._jitted:
      s = self.setup
      self._jitted[key] = jax.jit(
          self._step,
          in_shardings=(s.param_sh, s.opt_sh, s.buffer_sh, self.batch_shardings(batch)),
          out_shardings=(s.param_sh, s.opt_sh, s.replicated),
          donate_argnums=(0, 1))
    return self._jitted[key]

  def __call__(self, params, opt_state, buffers, batch):
    with jax.set_mesh(self.setup.mesh):
      return self._compile(batch)(params, opt_state, buffers, batch)

  def lower(self, params, opt_state, buffers, batch):
    """Lowered step for abstract inputs (AOT compile / memory reports)."""
    with jax.set_mesh(self.setup.mesh):
      return self._compile(batch).lower(params, opt_state, buffers, batch)
