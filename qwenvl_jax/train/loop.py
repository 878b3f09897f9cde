"""The training loop: build or restore the state, run steps, log, checkpoint, survive preemption.

`train(config, workdir)` runs one stage config (configs/stage{1,2,3}.py) to `config.steps`:
- fresh start: random init, or parameters from `init` (another run's workdir/checkpoint, e.g. the
  previous stage; the ViT needs no tensor change between 224 and 448 px, see `ckpt/checkpoint.py`);
- `resume=True`: continues from the latest readable checkpoint in WORKDIR/checkpoints (parameters,
  optimizer state, step and data-iterator state; an unreadable newer step is moved aside and named),
  or starts fresh when there is none. The config must describe the same tensors as the run's
  model_config.json (checked before anything is written); the run's config files are rewritten only
  after the restore succeeded;
- SIGTERM: finishes the current step, saves, waits for the write, returns status "preempted";
- a step whose loss, gradient norm or new parameters are not finite is not applied (the jitted step
  keeps the old state) and stops the run (TrainingDiverged) without saving; the pending saves are
  awaited, and every saved checkpoint is finite (`Checkpointer.save` refuses otherwise).

Data: any iterator of batches following `train/batch.py` with get_state/set_state. Each process
feeds its own `batch_size // process_count` rows; global arrays are assembled with
`jax.make_array_from_process_local_data`.
"""

from __future__ import annotations

import math
import pathlib
import signal
import sys
import time
from typing import Any, Iterator

import jax
import ml_collections
import numpy as np

from qwenvl_jax.ckpt import checkpoint as ckpt_lib
from qwenvl_jax.config import ConfigError, mesh_config_from_dict
from qwenvl_jax.evals import in_loop
from qwenvl_jax.sharding import batch_sharding, logical_rules, rules_for
from qwenvl_jax.train import finetune
from qwenvl_jax.train import metrics as metrics_lib
from qwenvl_jax.train import optim
from qwenvl_jax.train import setup as setup_lib
from qwenvl_jax.train.batch import SyntheticIterator, validate_batch


class TrainingDiverged(RuntimeError):
  """A step's loss, gradient norm or updated parameters became NaN or infinite."""


class DataExhausted(ValueError):
  """The data iterator ended before `steps`."""


class WorkdirError(ValueError):
  """The workdir holds another run's checkpoints and --resume was not given."""


# --------------------------------------------------------------------------------------------
# Data.


def make_iterator(config, train_cfg, model_cfg, process_index: int, process_count: int):
  """The configured data iterator for this process: synthetic, or the grain pipeline's over the
  records of `data.paths` (`data.pipeline.make_train_iterator`: a disjoint shard per process)."""
  data = train_cfg.data
  if data.source == "synthetic":
    return SyntheticIterator(
        model_cfg, train_cfg.batch_size, train_cfg.seq_len, max_images=data.max_images,
        packed=data.layout == "packed", seed=train_cfg.seed if data.seed is None else data.seed,
        fixed=data.fixed, process_index=process_index, process_count=process_count)
  try:
    from qwenvl_jax.data.pipeline import make_train_iterator
  except ImportError as e:
    raise ConfigError(f"config field 'data.source': '{data.source}' needs "
                      f"qwenvl_jax.data.pipeline.make_train_iterator(config, process_index, "
                      f"process_count), which is not available ({e})") from e
  return make_train_iterator(config, process_index, process_count)


def host_row_range(mesh, global_rows: int) -> tuple[int, int]:
  """The global rows this process's devices hold under the batch sharding (must be contiguous)."""
  sharding = batch_sharding(mesh, 1)
  rows = set()
  for idx in sharding.addressable_devices_indices_map((global_rows,)).values():
    rows.update(range(*idx[0].indices(global_rows)))
  lo, hi = min(rows), max(rows) + 1
  if len(rows) != hi - lo:
    raise ValueError(f"process {jax.process_index()} holds non-contiguous batch rows on this mesh")
  return lo, hi


def to_global(batch: dict, mesh, global_rows: int) -> dict:
  return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim), np.asarray(v),
                                                    (global_rows, *v.shape[1:]))
          for k, v in batch.items()}


# --------------------------------------------------------------------------------------------
# Preemption.


class Preemption:
  """Records SIGTERM; all processes agree on it at a step boundary so they save the same step."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: no handler
      self._previous = None
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def agreed(self) -> bool:
    if jax.process_count() == 1:
      return self.requested
    from jax.experimental import multihost_utils
    return bool(np.max(multihost_utils.process_allgather(np.int32(self.requested))))


# --------------------------------------------------------------------------------------------


def _progress(total: int, initial: int):
  if jax.process_index() != 0:
    return None
  from tqdm import tqdm
  bar = tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True, disable=None)
  return None if bar.disable else bar


def train(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, **kwargs) -> dict[str, Any]:
  """Runs the stage config to `config.steps` under its sharding rules (`mesh.rules`); returns
  {"status", "step", "losses"}. Keyword arguments: resume, init, iterator, log (see `_train`)."""
  with logical_rules(rules_for(mesh_config_from_dict(config.get("mesh")).rules)):
    return _train(config, workdir, **kwargs)


def _train(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *, resume: bool = False,
           init: str | None = None, iterator: Iterator | None = None, log=None) -> dict[str, Any]:
  log = log or (lambda msg: print(msg, file=sys.stderr, flush=True) if jax.process_index() == 0
                else None)
  run = setup_lib.setup(config, workdir=workdir)
  try:
    state, iterator, start = _start(run, resume, init, iterator, log)
    return train_loop(run, state, iterator, start, log)
  finally:
    run.checkpointer.close()


def _start(run: setup_lib.Run, resume: bool, init: str | None, iterator: Iterator | None, log):
  """(state, data iterator, step) to continue from: this run's latest checkpoint with `resume`,
  else a fresh state (from `init` / `config.init`, or random). Writes the run's config files only
  once the state is there, so a failed resume leaves the run as it was."""
  workdir, ckpt, train_cfg, model_cfg = run.workdir, run.checkpointer, run.train_cfg, run.model_cfg
  latest = ckpt.latest_step()
  if latest is not None and not resume:
    raise WorkdirError(f"{workdir} already has checkpoints up to step {latest}: pass --resume to "
                       f"continue that run, or use a new workdir")
  if latest is not None and (workdir / ckpt_lib.MODEL_CONFIG).is_file():
    ckpt_lib.check_compatible(ckpt_lib.read_model_config(workdir / ckpt_lib.MODEL_CONFIG),
                              model_cfg, f"the run in {workdir}", action="resume")

  pi, pc = jax.process_index(), jax.process_count()
  if iterator is None:
    iterator = make_iterator(run.config, train_cfg, model_cfg, pi, pc)
    if train_cfg.data.source == "synthetic":
      rows = train_cfg.batch_size // pc
      if host_row_range(run.mesh, train_cfg.batch_size) != (pi * rows, (pi + 1) * rows):
        raise ValueError("the mesh does not give each process a contiguous block of batch rows")
  for method in ("get_state", "set_state"):
    if not callable(getattr(iterator, method, None)):
      raise TypeError(f"the data iterator {type(iterator).__name__} has no {method}()")

  restored = run.restore_latest(log=log) if resume else None
  if restored is not None:
    state, data_state = restored
    start = int(state.step)
    iterator.set_state(data_state)
    log(f"resumed from {ckpt.directory / str(start)}")
  else:
    state, start = run.init_state(init or train_cfg.init, log=log), 0
  _write_run_config(workdir, run.config, model_cfg, run.lora_cfg)
  frozen = (f"{len(train_cfg.optim.frozen)} frozen tensors (LoRA)" if run.lora_cfg.enabled
            else f"frozen: {list(train_cfg.optim.frozen)}")
  log(f"optimizer state: {optim.count_state(state.opt_state):,} elements for "
      f"{optim.count_state(state.params):,} parameters ({frozen})")
  return state, iterator, start


def train_step(run: setup_lib.Run, state, host_batch: dict, step: int, ctx: dict):
  """One optimizer step on this process's rows: (new state, metrics record, finite)."""
  train_cfg = run.train_cfg
  batch = to_global(run.train_step.device_batch(host_batch), run.mesh, train_cfg.batch_size)
  t0 = time.perf_counter()
  state, m = run.train_step(state, batch)
  m = jax.device_get(m)
  record = _record(step, m, time.perf_counter() - t0, train_cfg, run.model_cfg, ctx["parts"],
                   ctx["peak"], len(run.mesh.devices.flat))
  return state, record, bool(m["finite"])


def eval_step(run: setup_lib.Run, evals, state, step: int) -> dict:
  """The config's in-training evaluations due at `step`, on the live parameters."""
  if evals is None:
    return {}
  return evals(step, run.graphdef, state.params, state.buffers)


def train_loop(run: setup_lib.Run, state, iterator, start: int, log) -> dict[str, Any]:
  """Steps `start + 1 ..` `steps`: log, checkpoint, stop on divergence, save on preemption."""
  train_cfg, model_cfg, ckpt = run.train_cfg, run.model_cfg, run.checkpointer
  evals = in_loop.from_config(run.config, total_steps=train_cfg.steps, mesh=run.mesh,
                              workdir=run.workdir, log=log)
  ctx = dict(peak=metrics_lib.peak_flops_per_device(train_cfg.peak_flops),
             parts=metrics_lib.trainable_parts(train_cfg.optim.frozen))
  rows_per_host = train_cfg.batch_size // jax.process_count()
  losses, status, step, data_state = [], "done", start, None
  writer, bar = metrics_lib.MetricsWriter(run.workdir, start), _progress(train_cfg.steps, start)
  try:
    with Preemption() as preempt:
      for step in range(start + 1, train_cfg.steps + 1):
        try:
          host_batch = next(iterator)
        except StopIteration:
          if step > start + 1:  # keep what was trained: the last step and the state after its batch
            run.save(step - 1, state, data_state, force=True, verify=True)
          raise DataExhausted(f"the training data ran out before step {step} of {train_cfg.steps} "
                              f"(data.paths hold too few records for the steps, or set more "
                              f"data.num_epochs)") from None
        data_state = iterator.get_state()
        if step == start + 1:
          validate_batch(host_batch, rows_per_host, train_cfg.seq_len, model_cfg, check_spans=True)
        state, record, finite = train_step(run, state, host_batch, step, ctx)
        loss = record["loss"]
        if math.isfinite(loss):
          record.update(eval_step(run, evals, state, step))
        writer.write(record)
        if not finite:
          ckpt.wait()
          raise TrainingDiverged(_diverged_message(step, record, ckpt))
        losses.append(loss)
        run.save(step, state, data_state, force=step == train_cfg.steps,
                 verify=step == train_cfg.steps)
        if bar is not None:
          bar.update(1)
          bar.set_postfix(loss=f"{loss:.4f}", lr=f"{record['lr']:.2e}")
        elif step % train_cfg.log_every == 0 or step == start + 1:
          log(f"step {step}/{train_cfg.steps} loss {loss:.4f} grad_norm {record['grad_norm']:.3f} "
              f"lr {record['lr']:.3e} {record['tokens_per_s']:.0f} tok/s")
        if step == train_cfg.pause_after_step:
          ckpt.wait()
          log(f"PAUSED after step {step} (pause_after_step); waiting for a signal")
          while not preempt.requested:
            time.sleep(0.05)
        if preempt.agreed() and step < train_cfg.steps:
          run.save(step, state, data_state, force=True, verify=True)
          ckpt.wait()
          log(f"preempted: saved step {step} to {ckpt.directory}")
          status = "preempted"
          break
  finally:
    if bar is not None:
      bar.close()
    writer.close()
  return {"status": status, "step": step, "losses": losses}


def _write_run_config(workdir: pathlib.Path, config, model_cfg, lora_cfg):
  """model_config.json (what chat / convert / eval read), finetune.json for a LoRA run and config.json
  (the full run config)."""
  if jax.process_index() == 0:
    ckpt_lib.write_model_config(workdir, model_cfg)
    if lora_cfg.enabled:
      finetune.write_settings(workdir, lora_cfg)
    ckpt_lib.write_text_atomic(workdir / "config.json", config.to_json_best_effort(indent=2))


def _diverged_message(step: int, record: dict, ckpt) -> str:
  what = [f"{k} is {record[k]}" for k in ("loss", "grad_norm") if not math.isfinite(record[k])]
  what = " and ".join(what) or "the updated parameters are not finite"
  last = ckpt.latest_step()
  kept = (f"the last checkpoint, all finite, is step {last} in {ckpt.directory}" if last is not None
          else "no checkpoint was saved before it")
  return f"step {step}: {what}; the update was not applied and nothing was saved; {kept}"


def _record(step, m, dt, train_cfg, model_cfg, parts, peak, n_devices) -> dict:
  """One metrics.jsonl line. tokens_per_s counts every position of the batch (padding included:
  it is computed); images_per_s counts real images."""
  ocfg = train_cfg.optim
  lrs = optim.lr_groups(ocfg, model_cfg, train_cfg.steps, step - 1)
  n_images = int(m["images"])
  tokens = train_cfg.batch_size * train_cfg.seq_len
  flops = tokens * metrics_lib.model_flops_per_token(
      model_cfg, train_cfg.seq_len, images_per_row=n_images / train_cfg.batch_size, trainable=parts)
  achieved = flops / dt
  return {
      "step": step, "loss": float(m["loss"]),
      "lr": float(optim.schedule(ocfg, train_cfg.steps)(step - 1)),
      **{f"lr/{k}": v for k, v in lrs.items()},
      "grad_norm": float(m["grad_norm"]), "target_tokens": int(m["target_tokens"]),
      "tokens_per_s": tokens / dt, "images_per_s": n_images / dt, "step_time_s": dt,
      "model_tflops_per_s": achieved / 1e12,
      "mfu": achieved / (peak * n_devices) if peak else None,
  }

