"""The jitted train step: sharded, gradient-accumulating, mixed precision, functional NNX.

The step is a pure function of (train state, batch) (`train/state.py`: step, params, buffers,
optimizer state), jitted with explicit shardings: parameters per `sharding.param_shardings` (fsdp +
tensor), optimizer moments exactly like their parameters, counters replicated, the batch over (data,
fsdp). Params, optimizer state and step are donated; only the trained leaves are differentiated.

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

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, traverse_util
from jax.sharding import NamedSharding, PartitionSpec as P

from qwenvl_jax.model import lm_loss, lora, pixels
from qwenvl_jax.model.qwenvl import QwenVL
from qwenvl_jax.sharding import batch_sharding, logical_rules
from qwenvl_jax.train import optim
from qwenvl_jax.train import state as state_lib
from qwenvl_jax.train.state import TrainState

BATCH_AXES = ("data", "fsdp")


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
                               dtype=model.llm.dtype, shard_vocab=model.cfg.loss_shard_vocab)


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
  """`step(state, batch) -> (state, metrics)` on a `train.setup.Run`'s train state, one jit per batch
  layout (with or without images). The state's params, optimizer state and step are donated; its
  buffers (fixed tables, a quantised base) are passed through, not donated."""

  def __init__(self, run, grad_accum: int | None = None):
    self.run = run
    self.mesh = run.mesh
    self.grad_accum = grad_accum or run.train_cfg.grad_accum
    self._jitted: dict[tuple, Any] = {}
    labels = traverse_util.flatten_dict(run.label_tree)
    self._trained = frozenset(k for k, v in labels.items() if v == optim.TRAIN)
    guard = run.train_cfg.optim.update_guard
    if guard == "auto":
      guard = "cond" if self.mesh.devices.flat[0].platform == "cpu" else "two_pass"
    self.update_guard = guard

  @staticmethod
  def device_batch(batch: dict) -> dict:
    """A host batch of the contract (`train/batch.py`) in the form the step is fastest with: images
    lane-packed (`model/pixels.pack_lanes`, a free reshape), so slicing each microbatch out of the
    step's pixels needs no relayout copy of all of them. The step takes either form; `pack_lanes`
    leaves packed or float pixels as they are."""
    if "images" not in batch:
      return batch
    return {**batch, "images": pixels.pack_lanes(batch["images"])}

  def batch_shardings(self, batch: dict) -> dict:
    return {k: batch_sharding(self.mesh, v.ndim) for k, v in batch.items()}

  def _step(self, state: TrainState, buffers, batch):
    run, trained = self.run, self._trained
    params, opt_state = state.params, state.opt_state
    flat = traverse_util.flatten_dict(params)
    train_p = {k: v for k, v in flat.items() if k in trained}
    frozen_p = {k: v for k, v in flat.items() if k not in trained}
    flat_sh = traverse_util.flatten_dict(run.abstract_state.shardings().params)
    train_sh = {k: flat_sh[k] for k in train_p}

    def micro_loss(train_p, mb, a):
      full = traverse_util.unflatten_dict({**train_p, **frozen_p})
      with lora.dropout(_dropout_key(mb, a) if run.dropout else None):
        return loss_sums(nnx.merge(run.graphdef, full, buffers), mb)

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    opt_home = run.abstract_state.shardings().opt_state
    # Offloaded moments (`optim.offload_moments`) ride through the microbatch loop in host memory
    # (`parked`) and come to HBM only after it: copied from the loop's output, XLA cannot start
    # the copies before the loop (from the step's argument it did, at the program's entry: 2.3 GiB
    # per chip of moments in HBM through all microbatches of the 7B on 16 v5e). The barrier in the
    # body keeps XLA from seeing them as loop-invariant and taking them out of the loop again.
    parked = opt_state if state_lib.offloaded(opt_home) else None

    def body(carry, a):
      g_acc, ce_acc, n_acc, parked = carry
      mb = microbatch(batch, self.grad_accum, a)
      if "images" in mb and pixels.is_packed(mb["images"]):  # `device_batch`'s form: this row's only
        mb["images"] = pixels.unpack_lanes(mb["images"], run.model_cfg.vision.image_size)
      (ce, n), g = grad_fn(train_p, mb, a)
      g_acc = jax.tree.map(jnp.add, g_acc, g)
      g_acc = jax.lax.with_sharding_constraint(g_acc, train_sh)
      return (g_acc, ce_acc + ce, n_acc + n, jax.lax.optimization_barrier(parked)), None

    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), train_p)
    carry = (jax.lax.with_sharding_constraint(zeros, train_sh), jnp.zeros((), jnp.float32),
             jnp.zeros((), jnp.int32), parked)
    if self.grad_accum == 1:  # one microbatch: no loop, and the accumulator's zeros fold away
      (g_sum, ce_sum, n, parked), _ = body(carry, jnp.int32(0))
    else:
      (g_sum, ce_sum, n, parked), _ = jax.lax.scan(body, carry, jnp.arange(self.grad_accum))
    denom = jnp.maximum(n, 1).astype(jnp.float32)
    inv_denom = 1.0 / denom  # a reciprocal: XLA recomputes a multiply in each reader, not a divide
    mean_grads = lambda g_sum: {k: (g * inv_denom).astype(train_p[k].dtype) for k, g in g_sum.items()}
    if self.update_guard == "cond":
      # `lax.cond` writes its operands out: it gets the sum (which exists anyway) and the mean is
      # formed inside the update's loops; the norm is the sum's (on CPU the norm's reduction fuses
      # nothing before it, so a norm of the mean would write the mean out too).
      grads, mean_of = g_sum, mean_grads
      grad_norm = optax.global_norm(g_sum) * inv_denom
    else:
      # The mean once, before the passes: formed inside each pass instead, the 7B stage 2 on
      # v5e:4x4 keeps 2.1 GiB more temporaries per chip.
      grads, mean_of = mean_grads(g_sum), lambda g: g
      grad_norm = optax.global_norm(grads)
    if parked is not None:
      opt_state = state_lib.onto_device(parked, opt_home)

    def apply(grads, opt_state, flat):
      # Frozen leaves feed `set_to_zero`, which ignores its input: pass the params, not zeros.
      full_grads = traverse_util.unflatten_dict({**mean_of(grads), **frozen_p})
      updates, new_opt_state = run.tx.update(full_grads, opt_state, traverse_util.unflatten_dict(flat),
                                             global_norm=grad_norm)
      flat_u = traverse_util.flatten_dict(updates)
      return {k: (v + flat_u[k].astype(v.dtype)) if k in trained else v
              for k, v in flat.items()}, new_opt_state

    loss = ce_sum / denom
    # A step whose loss, gradients or new parameters are not finite is not applied: the old
    # parameters and optimizer state come back, so no NaN ever reaches a saved checkpoint.
    # `optim.update_guard`: the new parameters decide `finite`; "cond" and "two_pass" only reduce
    # them and compute the update again, under `lax.cond` in place ("cond": on CPU XLA then keeps
    # no second copy of the state) or selected elementwise against the old values after a barrier
    # that keeps XLA from merging the passes ("two_pass": old and new parameters and moments are
    # never all in HBM, 2 x 4.5 GiB per chip at 7B on 16 v5e chips); "select" keeps and selects
    # the first values.
    new_flat, new_opt_state = apply(grads, opt_state, flat)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    for k in trained:
      finite &= jnp.all(jnp.isfinite(new_flat[k]))
    if self.update_guard == "cond":
      new_flat, new_opt_state = jax.lax.cond(
          finite, lambda ops: apply(*ops), lambda ops: (ops[2], ops[1]), (grads, opt_state, flat))
    else:
      if self.update_guard == "two_pass":
        grads, opt_state, flat, finite = jax.lax.optimization_barrier((grads, opt_state, flat, finite))
        new_flat, new_opt_state = apply(grads, opt_state, flat)
      keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
      new_flat = {k: keep(new_flat[k], v) if k in trained else v for k, v in flat.items()}
      new_opt_state = keep(new_opt_state, opt_state)
    new_opt_state = state_lib.back_home(new_opt_state, opt_home)
    metrics = dict(loss=loss, grad_norm=grad_norm, target_tokens=n, finite=finite,
                   tokens=jnp.sum(batch["segment_ids"] != 0, dtype=jnp.int32),
                   images=jnp.sum(batch["num_images"]) if "num_images" in batch else jnp.int32(0))
    new = TrainState(step=state.step + finite.astype(jnp.int32),
                     params=traverse_util.unflatten_dict(new_flat), buffers=None,
                     opt_state=new_opt_state)
    return new, metrics

  def _compile(self, batch: dict):
    key = tuple(sorted((k, v.ndim) for k, v in batch.items()))
    if key not in self._jitted:
      sh = self.run.abstract_state.shardings()
      self._jitted[key] = jax.jit(
          self._step,
          in_shardings=(sh.replace(buffers=None), sh.buffers, self.batch_shardings(batch)),
          out_shardings=(sh.replace(buffers=None), NamedSharding(self.mesh, P())),
          donate_argnums=(0,))
    return self._jitted[key]

  def __call__(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    with jax.set_mesh(self.mesh), logical_rules(self.run.rules):
      new, metrics = self._compile(batch)(state.replace(buffers=None), state.buffers, batch)
    return new.replace(buffers=state.buffers), metrics

  def lower(self, state: TrainState, batch: dict):
    """The lowered step for an abstract state and batch (AOT compile / memory reports)."""
    with jax.set_mesh(self.mesh), logical_rules(self.run.rules):
      return self._compile(batch).lower(state.replace(buffers=None), state.buffers, batch)

  def compile(self, state: TrainState, batch: dict):
    """The step AOT-compiled for this state and batch layout, called like the step itself."""
    executable = self.lower(state, batch).compile()

    def call(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
      with jax.set_mesh(self.mesh):
        new, metrics = executable(state.replace(buffers=None), state.buffers, batch)
      return new.replace(buffers=state.buffers), metrics

    return call
