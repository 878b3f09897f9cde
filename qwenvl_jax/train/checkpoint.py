"""Orbax checkpoints of a training run, and parameter initialisation from another run's checkpoint.

Layout of a workdir:

  WORKDIR/model_config.json          dataclasses.asdict(ModelConfig)
  WORKDIR/checkpoints/<step>/params   pure dict of nnx.state(model): every nnx.Param and Buffer
                                      (what `qwenvl_jax.ckpt.orbax_io.load_checkpoint` reads too)
                    .../opt_state     the optax state (moments sharded like their parameters)
                    .../data_state    the data iterator's state, one JSON file per process
                    .../meta          JSON: step, model config, time

Saves are asynchronous (the step loop continues while arrays are written), atomic (Orbax writes to
a temporary directory and renames when every process has finished) and keep the last K. Restores place
every array straight onto the current mesh's shardings, whatever mesh wrote them.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import pathlib
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from qwenvl_jax.config import ConfigError, ModelConfig, model_config_from_dict

CHECKPOINTS = "checkpoints"
MODEL_CONFIG = "model_config.json"


# --------------------------------------------------------------------------------------------
# The data iterator state: JSON per process (hosts read different data shards).


class DataStateHandler(ocp.CheckpointHandler):
  """Saves any JSON-able (or bytes) iterator state as `process_<i>-of-<n>.json`."""

  def save(self, directory: epath.Path, args: "DataStateSave"):
    state = args.state
    payload = ({"bytes": base64.b64encode(state).decode()} if isinstance(state, bytes)
               else {"json": state})
    name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    (directory / name).write_text(json.dumps(payload))

  def restore(self, directory: epath.Path, args: "DataStateRestore | None" = None):
    del args
    name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    path = directory / name
    if not path.exists():
      found = sorted(p.name for p in directory.iterdir())
      raise ValueError(f"no data iterator state {name} in {directory} (found {found}): resume "
                       f"with the same number of processes that saved it")
    payload = json.loads(path.read_text())
    return base64.b64decode(payload["bytes"]) if "bytes" in payload else payload["json"]

  def metadata(self, directory: epath.Path):
    return None


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
  state: Any


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
  pass


# --------------------------------------------------------------------------------------------


def write_model_config(workdir: pathlib.Path, cfg: ModelConfig):
  if jax.process_index() == 0:
    (workdir / MODEL_CONFIG).write_text(json.dumps(dataclasses.asdict(cfg), indent=2))


class Checkpointer:
  """The run's CheckpointManager: save every `every` steps (or when forced), keep `keep`."""

  def __init__(self, workdir: str | pathlib.Path, every: int, keep: int, use_async: bool = True):
    self.directory = pathlib.Path(workdir).resolve() / CHECKPOINTS
    self.every = every
    # We decide when to save (every N steps or forced); Orbax would also save the first step.
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=use_async)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, full_params: dict, opt_state, data_state, model_cfg: ModelConfig,
           force: bool = False) -> bool:
    """Starts an (async) save if `step` is due or `force`; returns whether one was started."""
    if step in self.manager.all_steps() or not (force or step % self.every == 0):
      return False
    meta = dict(step=step, time=time.time(), model_config=dataclasses.asdict(model_cfg))
    return self.manager.save(step, force=True, args=ocp.args.Composite(
        params=ocp.args.StandardSave(full_params), opt_state=ocp.args.StandardSave(opt_state),
        data_state=DataStateSave(data_state), meta=ocp.args.JsonSave(meta)))

  def restore(self, step: int, abs_full_params: dict, abs_opt_state) -> tuple[dict, Any, Any]:
    """(params, opt_state, data_state) of `step`, arrays placed per the abstract trees' shardings."""
    out = self.manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abs_full_params),
        opt_state=ocp.args.StandardRestore(abs_opt_state),
        data_state=DataStateRestore()))
    return out.params, out.opt_state, out.data_state

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


# --------------------------------------------------------------------------------------------
# Initialisation from another checkpoint (previous stage, converted release).

# Fields that may differ between the checkpoint's model and ours without any tensor changing:
# the image size (the ViT's position table is a fixed pos_grid x pos_grid table resized to the input
# grid on every forward, the adapter's key table likewise), numerics, memory options and the ViT's
# attention pattern (window attention, Appendix E.3, changes no tensor) and initialisation choices.
COMPATIBLE_FIELDS = ("vision.image_size", "dtype", "param_dtype", "remat", "scan_layers",
                     "llm.seq_length", "llm.use_dynamic_ntk", "llm.use_logn_attn",
                     "vision.window_patches", "vision.global_every", "adapter.local_init",
                     "attention", "loss_chunk")


def _flat(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def check_compatible(saved: ModelConfig, ours: ModelConfig, source: str) -> list[str]:
  """Raises ConfigError naming the fields that change tensors; returns the harmless differences."""
  a, b = _flat(dataclasses.asdict(saved)), _flat(dataclasses.asdict(ours))
  diff = sorted(k for k in a if a[k] != b.get(k))
  bad = [k for k in diff if k not in COMPATIBLE_FIELDS]
  if bad:
    detail = ", ".join(f"model.{k}: {a[k]!r} in the checkpoint vs {b[k]!r}" for k in bad)
    raise ConfigError(f"cannot initialise from {source}: {detail}")
  return diff


def resolve_params_dir(path: str | pathlib.Path) -> tuple[pathlib.Path, pathlib.Path | None]:
  """A workdir, its checkpoints/ folder, a step folder or a converted checkpoint -> (the `params` item
  folder, the model_config.json that describes it, if any)."""
  path = pathlib.Path(path).resolve()
  if (path / CHECKPOINTS).is_dir():
    path = path / CHECKPOINTS
  if not (path / "params").is_dir():
    steps = sorted((int(p.name) for p in path.glob("[0-9]*") if (p / "params").is_dir()),
                   reverse=True)
    if not steps:
      raise FileNotFoundError(f"no checkpoint with a 'params' item under {path}")
    path = path / str(steps[0])
  config = next((p / MODEL_CONFIG for p in (path, path.parent, path.parent.parent)
                 if (p / MODEL_CONFIG).is_file()), None)
  return path / "params", config


def load_params(path: str | pathlib.Path, abs_full_params: dict, model_cfg: ModelConfig,
                log=print) -> dict:
  """Loads the `params` item of another checkpoint onto our shardings (stage transitions, --init)."""
  params_dir, config_file = resolve_params_dir(path)
  if config_file is not None:
    saved = model_config_from_dict(json.loads(config_file.read_text()))
    diff = check_compatible(saved, model_cfg, str(config_file))
    if diff:
      log(f"init: model config differs from {config_file} only in {diff} (no tensor changes)")
  meta = ocp.StandardCheckpointHandler().metadata(epath.Path(params_dir))
  tree = getattr(meta, "tree", meta)
  saved_shapes = {k: tuple(v.shape) for k, v in _flat(dict(tree)).items()}
  ours = {k: tuple(v.shape) for k, v in _flat(abs_full_params).items()}
  missing, unexpected = sorted(set(ours) - set(saved_shapes)), sorted(set(saved_shapes) - set(ours))
  wrong = [f"{k}: {saved_shapes[k]} vs ours {ours[k]}" for k in ours
           if k in saved_shapes and saved_shapes[k] != ours[k]]
  if missing or unexpected or wrong:
    raise ValueError(f"checkpoint {params_dir} does not fit the model: missing {missing}, "
                     f"unexpected {unexpected}, shape mismatches {wrong}")
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(params_dir, abs_full_params)
