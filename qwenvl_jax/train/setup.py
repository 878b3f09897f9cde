"""One training run's fixed parts, built in one place: `setup(config, mesh, workdir) -> Run`.

config -> (train, model, LoRA settings) -> mesh (checked against the batch) -> the abstract sharded
train state and the optimizer -> the jitted step -> the checkpointer. The loop (`train/loop.py`),
the AOT compiler (`perf/aot.py`), the benchmarks and the tests all start here; then the state comes
from `init_state` (random, or another run's / a converted checkpoint's parameters, or a LoRA base)
or `restore_latest` (this run's newest readable checkpoint).
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from qwenvl_jax.ckpt import checkpoint as ckpt_lib
from qwenvl_jax.ckpt.lora_run import LoRAConfig, lora_config_from_dict, make_model_fn
from qwenvl_jax.config import ConfigError, ModelConfig, TrainConfig, run_config_from_dict
from qwenvl_jax.sharding import check_batch_rows, create_mesh, logical_rules, rules_for
from qwenvl_jax.train import finetune, optim
from qwenvl_jax.train import state as state_lib
from qwenvl_jax.train.state import TrainState
from qwenvl_jax.train.step import TrainStep


@dataclasses.dataclass
class Run:
  """Everything about a training run that is fixed before its first step; holds no arrays."""
  config: Any  # the run config (ConfigDict) as given
  train_cfg: TrainConfig  # LoRA runs: `optim.frozen` includes every non-LoRA tensor
  model_cfg: ModelConfig
  lora_cfg: LoRAConfig
  mesh: Mesh
  rules: tuple  # the logical-axis rules table of this run (`mesh.rules` applied)
  graphdef: Any
  tx: Any  # the optax transformation
  label_tree: dict  # per parameter: optim.TRAIN or frozen
  abstract_state: TrainState  # ShapeDtypeStructs with their shardings
  make_model: Callable[[int], nnx.Module]  # seed -> the (LoRA) model
  dropout: bool  # LoRA dropout on: the step gives the forward pass a per-microbatch key
  workdir: pathlib.Path | None = None
  checkpointer: ckpt_lib.Checkpointer | None = None
  train_step: TrainStep | None = None

  def init_state(self, source: str = "", log=print) -> TrainState:
    """A fresh state: parameters from `source` (another run's workdir or checkpoint, a converted
    release; for LoRA the base, then quantised and given factors) or random; step 0."""
    abstract, model_cfg = self.abstract_state, self.model_cfg
    with logical_rules(self.rules):
      if self.lora_cfg.enabled and source:
        model = finetune.base_params(source, model_cfg, self.mesh, self.lora_cfg,
                                     self.train_cfg.seed, log)
        log(f"initialised the LoRA model from {source}")
        return state_lib.placed_state(abstract, self.tx, nnx.state(model).to_pure_dict())
      if source:  # buffers come from the checkpoint too: no random init of a model we overwrite
        full = ckpt_lib.load_params(source, abstract.model_state(), model_cfg, log=log)
        log(f"initialised parameters from {source}")
        return state_lib.placed_state(abstract, self.tx, full)
      return state_lib.random_state(abstract, self.tx, lambda: self.make_model(self.train_cfg.seed),
                                    self.mesh)

  def placed_state(self, full: dict) -> TrainState:
    """A fresh state (step 0) from every variable of a model (host or device arrays)."""
    return state_lib.placed_state(self.abstract_state, self.tx, full)

  def restore_latest(self, log=print) -> tuple[TrainState, Any] | None:
    """(state, data iterator state) of the newest readable checkpoint of the workdir, or None."""
    abstract = self.abstract_state
    restored = self.checkpointer.restore_latest(abstract.model_state(), abstract.opt_state, log=log)
    if restored is None:
      return None
    step, full, opt_state, data_state = restored
    state = abstract.with_model_state(full).replace(
        step=jax.device_put(jnp.int32(step), abstract.step.sharding), opt_state=opt_state)
    return state, data_state

  def save(self, step: int, state: TrainState, data_state, force: bool = False,
           verify: bool = False) -> bool:
    """Checkpoints `state` as step `step` when due (or `force`); `verify` waits and checks it."""
    started = self.checkpointer.save(step, state.model_state(), state.opt_state, data_state,
                                     self.model_cfg, force=force)
    if started and verify:
      self.checkpointer.wait()
      self.checkpointer.verify(step)
    return started


def check_batch(train_cfg: TrainConfig, model_cfg: ModelConfig, mesh: Mesh) -> None:
  """The run's batch against the mesh, the processes and the model's training context."""
  check_batch_rows(mesh, train_cfg.microbatch,
                   f"config field 'grad_accum': microbatch (batch_size {train_cfg.batch_size} / "
                   f"grad_accum {train_cfg.grad_accum})")
  if train_cfg.batch_size % jax.process_count():
    raise ConfigError(f"config field 'batch_size': {train_cfg.batch_size} is not divisible by "
                      f"{jax.process_count()} processes")
  # Past model.llm.seq_length, inference switches on dynamic NTK and log-n scaling that training
  # never applies: a model trained on longer rows would be served with positions it never saw.
  if train_cfg.seq_len > model_cfg.llm.seq_length:
    raise ConfigError(f"config field 'seq_len': {train_cfg.seq_len} exceeds the model's training "
                      f"context 'model.llm.seq_length' ({model_cfg.llm.seq_length}); raise it with "
                      f"--set model.llm.seq_length={train_cfg.seq_len}")


def setup(config, mesh: Mesh | None = None, workdir: str | pathlib.Path | None = None) -> Run:
  """The run of a stage / fine-tune config on `mesh` (default: the config's `mesh` section over all
  devices); with a `workdir`, also its checkpointer. Nothing is allocated on the devices."""
  run_cfg = run_config_from_dict(config)  # every typed section, validated; errors name the field
  train_cfg, model_cfg = run_cfg.train, run_cfg.model
  lora_cfg = lora_config_from_dict(config.get("lora"))
  rules = rules_for(run_cfg.mesh.rules)
  mesh = mesh if mesh is not None else create_mesh(run_cfg.mesh)
  check_batch(train_cfg, model_cfg, mesh)
  make_model = lambda seed: make_model_fn(model_cfg, lora_cfg, seed)()
  with logical_rules(rules):
    graphdef, abs_params, abs_buffers = state_lib.abstract_model(lambda: make_model(0), mesh)
    if lora_cfg.enabled:  # everything but the factors and modules_to_save is frozen
      frozen = tuple(dict.fromkeys(train_cfg.optim.frozen
                                   + finetune.frozen_paths(abs_params, lora_cfg)))
      train_cfg = dataclasses.replace(
          train_cfg, optim=dataclasses.replace(train_cfg.optim, frozen=frozen))
    tx, label_tree = optim.make_optimizer(train_cfg.optim, model_cfg, abs_params, train_cfg.steps)
    abstract = state_lib.abstract_state(abs_params, abs_buffers, tx, mesh,
                                           train_cfg.optim.offload_moments)
  run = Run(config, train_cfg, model_cfg, lora_cfg, mesh, rules, graphdef, tx, label_tree, abstract,
            make_model, dropout=lora_cfg.enabled and lora_cfg.dropout > 0)
  run.train_step = TrainStep(run)
  if workdir is not None:
    run.workdir = pathlib.Path(workdir).resolve()
    run.workdir.mkdir(parents=True, exist_ok=True)
    run.checkpointer = ckpt_lib.Checkpointer(run.workdir, train_cfg.checkpoint_every,
                                             train_cfg.keep_checkpoints, train_cfg.async_checkpoint)
  return run
