"""Our checkpoints: where they live, their model config, and the training run's checkpointer.

Two layouts hold the same `params` item (the pure dict of `nnx.state(model)`, every nnx.Param and
Buffer, an Orbax PyTree checkpoint):

  a checkpoint directory DIR/ (written by `convert` / `save_checkpoint`)
    params/  model_config.json  tokenizer/<file>  hf_extra/ (non-weight files of the HF source)
  a training workdir WORKDIR/ (written by `train`)
    model_config.json  config.json  tokenizer/<file>
    checkpoints/<step>/params      the model
                     .../opt_state  the optax state (moments sharded like their parameters)
                     .../data_state the data iterator's state, one JSON file per process
                     .../meta       JSON: step, model config, time

`resolve_checkpoint` is the one resolver of "a checkpoint dir, a workdir, its checkpoints/ folder or
one step folder"; `read_model_config` / `write_model_config` the one reader / writer of
model_config.json; `check_compatible` the one comparison of two model configs (it names the field).

The run's `Checkpointer` saves asynchronously (the step loop continues while arrays are written),
atomically (Orbax writes to a temporary directory and renames when every process has finished), only
finite states, and keeps the last K. `restore_latest` verifies what it reads and falls back to the
previous step when the latest is unreadable. Restores place every array straight onto the current
mesh's shardings, whatever mesh wrote them.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import pathlib
import shutil
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath

from qwenvl_jax.config import ConfigError, ModelConfig, model_config_from_dict, model_config_to_dict

CHECKPOINTS = "checkpoints"
PARAMS = "params"
MODEL_CONFIG = "model_config.json"
TOKENIZER_DIR = "tokenizer"
HF_EXTRA = "hf_extra"
SET_ASIDE = "unreadable-checkpoints"  # where resume moves steps it could not read (never deleted)


class CheckpointError(ValueError):
  """A checkpoint is missing, incomplete, unreadable or does not match; the message says which."""


# --------------------------------------------------------------------------------------------
# Dotted names <-> nested dicts (the one flattener: checkpoint keys, config fields).


def flatten_dict(tree: Mapping, prefix: str = "") -> dict:
  """{"a": {"b": x}} -> {"a.b": x} (empty sub-dicts vanish)."""
  out = {}
  for k, v in tree.items():
    name = f"{prefix}{k}"
    if isinstance(v, Mapping):
      out.update(flatten_dict(v, name + "."))
    else:
      out[name] = v
  return out


def unflatten_dict(flat: Mapping[str, object]) -> dict:
  out: dict = {}
  for name, v in flat.items():
    node = out
    *parents, leaf = name.split(".")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return out


# --------------------------------------------------------------------------------------------
# Locating checkpoints.


@dataclasses.dataclass(frozen=True)
class CheckpointRef:
  root: pathlib.Path  # our checkpoint dir or the training workdir
  params_dir: pathlib.Path
  config_path: pathlib.Path
  step: int | None = None

  @property
  def tokenizer_path(self) -> pathlib.Path | None:
    tok_dir = self.root / TOKENIZER_DIR
    if not tok_dir.is_dir():
      return None
    files = sorted(p for p in tok_dir.iterdir() if p.suffix in (".tiktoken", ".model"))
    return files[0] if files else None

  @property
  def hf_extra(self) -> pathlib.Path:
    return self.root / HF_EXTRA


def step_numbers(checkpoints_dir: pathlib.Path) -> list[int]:
  """The finished steps (a `params` item present) under a workdir's checkpoints/, ascending."""
  if not checkpoints_dir.is_dir():
    return []
  return sorted(int(p.name) for p in checkpoints_dir.iterdir()
                if p.is_dir() and p.name.isdigit() and (p / PARAMS).is_dir())


def resolve_checkpoint(path) -> CheckpointRef:
  """Our checkpoint dir, a training workdir or its checkpoints/ folder (latest step), or one step dir."""
  path = pathlib.Path(path).absolute()  # Orbax reads OCDBT checkpoints by absolute path only
  if not path.exists():
    raise FileNotFoundError(f"no checkpoint at {path}")
  if path.name == CHECKPOINTS and not (path / CHECKPOINTS).is_dir() and not (path / PARAMS).is_dir():
    path = path.parent
  if (path / CHECKPOINTS).is_dir():
    steps = step_numbers(path / CHECKPOINTS)
    if not steps:
      raise CheckpointError(f"training workdir {path} has no finished step with a '{PARAMS}' item "
                            f"under {path / CHECKPOINTS}")
    ref = CheckpointRef(path, path / CHECKPOINTS / str(steps[-1]) / PARAMS, path / MODEL_CONFIG,
                        steps[-1])
  elif path.name.isdigit() and path.parent.name == CHECKPOINTS:
    root = path.parent.parent
    ref = CheckpointRef(root, path / PARAMS, root / MODEL_CONFIG, int(path.name))
  else:
    ref = CheckpointRef(path, path / PARAMS, path / MODEL_CONFIG)
  missing = [str(p) for p in (ref.params_dir, ref.config_path) if not p.exists()]
  if missing:
    raise CheckpointError(f"{path} is not a complete checkpoint: missing {', '.join(missing)}")
  return ref


# --------------------------------------------------------------------------------------------
# model_config.json and compatibility.


def read_model_config(ref_or_file: CheckpointRef | str | os.PathLike) -> ModelConfig:
  path = ref_or_file.config_path if isinstance(ref_or_file, CheckpointRef) else pathlib.Path(ref_or_file)
  try:
    return model_config_from_dict(json.loads(path.read_text()))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{path} is not a readable model config ({e})") from None
  except ConfigError as e:
    raise CheckpointError(f"{path}: {e}") from None


def write_model_config(directory, cfg: ModelConfig) -> pathlib.Path:
  """Writes DIRECTORY/model_config.json (temporary name, then rename: never half-written)."""
  path = pathlib.Path(directory) / MODEL_CONFIG
  write_text_atomic(path, json.dumps(model_config_to_dict(cfg), indent=2) + "\n")
  return path


def write_text_atomic(path: pathlib.Path, text: str):
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  tmp.write_text(text)
  os.replace(tmp, path)


# Fields that may differ between the checkpoint's model and ours without any tensor changing:
# the image size (the ViT's position table is a fixed pos_grid x pos_grid table resized to the input
# grid on every forward, the adapter's key table likewise), numerics, memory options and the ViT's
# attention pattern (window attention, Appendix E.3, changes no tensor) and initialisation choices.
COMPATIBLE_FIELDS = ("vision.image_size", "dtype", "param_dtype", "remat", "scan_layers",
                     "llm.seq_length", "llm.use_dynamic_ntk", "llm.use_logn_attn",
                     "vision.window_patches", "vision.global_every", "adapter.local_init",
                     "attention", "loss_chunk", "loss_shard_vocab")


def check_compatible(saved: ModelConfig, ours: ModelConfig, source: str,
                     action: str = "initialise from") -> list[str]:
  """Raises ConfigError naming the fields that change tensors; returns the harmless differences."""
  a, b = flatten_dict(dataclasses.asdict(saved)), flatten_dict(dataclasses.asdict(ours))
  diff = sorted(k for k in a if a[k] != b.get(k))
  bad = [k for k in diff if k not in COMPATIBLE_FIELDS]
  if bad:
    detail = ", ".join(f"model.{k}: {a[k]!r} in the checkpoint vs {b[k]!r}" for k in bad)
    raise ConfigError(f"cannot {action} {source}: {detail}")
  return diff


def copy_tokenizer(tokenizer_file, dst_dir) -> pathlib.Path:
  """Copies the tokenizer file (and sidecars) into `dst_dir/tokenizer/`; returns the new path."""
  from qwenvl_jax.ckpt.hf_io import tokenizer_files

  out = pathlib.Path(dst_dir) / TOKENIZER_DIR
  out.mkdir(parents=True, exist_ok=True)
  files = tokenizer_files(tokenizer_file)
  for f in files:
    shutil.copy2(f, out / f.name)
  return out / files[0].name


# --------------------------------------------------------------------------------------------
# Finiteness.


@jax.jit
def _finite_leaves(tree):
  return jax.tree.map(lambda x: jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact)
                      else jnp.bool_(True), tree)


def non_finite_leaves(tree) -> list[str]:
  """Dotted names of the floating arrays of `tree` holding a NaN or an infinity."""
  ok = jax.device_get(_finite_leaves(tree))
  return [jax.tree_util.keystr(p, simple=True, separator=".")
          for p, v in jax.tree_util.tree_leaves_with_path(ok) if not bool(v)]


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
      raise ConfigError(f"no data iterator state {name} in {directory} (found {found}): resume "
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
# The training run's checkpoints.


def _first_line(e: BaseException) -> str:
  """The exception in one line of bounded length (the cause, e.g. an OS error, is often at the end)."""
  text = " ".join(str(e).split())
  if len(text) > 320:
    text = f"{text[:120]} ... {text[-180:]}"
  return f"{type(e).__name__}: {text}" if text else type(e).__name__


class Checkpointer:
  """The run's CheckpointManager: save every `every` steps (or when forced), keep `keep`."""

  def __init__(self, workdir: str | pathlib.Path, every: int, keep: int, use_async: bool = True):
    self.workdir = pathlib.Path(workdir).resolve()
    self.directory = self.workdir / CHECKPOINTS
    self.every = every
    # We decide when to save (every N steps or forced); Orbax would also save the first step.
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=use_async)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, full_params: dict, opt_state, data_state, model_cfg: ModelConfig,
           force: bool = False) -> bool:
    """Starts an (async) save if `step` is due or `force`; returns whether one was started.

    Raises CheckpointError, saving nothing, when a parameter or optimizer array is not finite.
    """
    if step in self.manager.all_steps() or not (force or step % self.every == 0):
      return False
    bad = non_finite_leaves({"params": full_params, "opt_state": opt_state})
    if bad:
      raise CheckpointError(f"refusing to save step {step}: {len(bad)} arrays are not finite "
                            f"(first: {bad[0]})")
    meta = dict(step=step, time=time.time(), model_config=model_config_to_dict(model_cfg))
    try:  # also reports a failure of the previous (async) save, which Orbax awaits here
      return self.manager.save(step, force=True, args=ocp.args.Composite(
          params=ocp.args.StandardSave(full_params), opt_state=ocp.args.StandardSave(opt_state),
          data_state=DataStateSave(data_state), meta=ocp.args.JsonSave(meta)))
    except Exception as e:  # noqa: BLE001 - disk full, permissions, ...: one line, earlier steps intact
      raise self._write_failed(e) from e

  def _write_failed(self, e: Exception) -> CheckpointError:
    kept = self.manager.latest_step()
    return CheckpointError(f"writing a checkpoint under {self.directory} failed ({_first_line(e)}); "
                           f"the earlier checkpoints are intact (latest: step {kept})")

  def restore(self, step: int, abs_full_params: dict, abs_opt_state) -> tuple[dict, Any, Any]:
    """(params, opt_state, data_state) of `step`, arrays placed per the abstract trees' shardings."""
    if not (self.directory / str(step) / PARAMS).is_dir():
      raise CheckpointError(f"its '{PARAMS}' item is missing")
    out = self.manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abs_full_params),
        opt_state=ocp.args.StandardRestore(abs_opt_state),
        data_state=DataStateRestore()))
    bad = non_finite_leaves({"params": out.params, "opt_state": out.opt_state})
    if bad:
      raise CheckpointError(f"{len(bad)} arrays are not finite (first: {bad[0]})")
    return out.params, out.opt_state, out.data_state

  def restore_latest(self, abs_full_params: dict, abs_opt_state,
                     log: Callable[[str], None] = print) -> tuple[int, dict, Any, Any] | None:
    """(step, params, opt_state, data_state) of the newest step that reads back whole and finite, or
    None when there is no step. Unreadable newer steps are moved to WORKDIR/unreadable-checkpoints/
    (so later saves of those step numbers can happen) and each is reported in one line."""
    steps = sorted(self.manager.all_steps(), reverse=True)
    for i, step in enumerate(steps):
      try:
        return (step, *self.restore(step, abs_full_params, abs_opt_state))
      except (ConfigError, MemoryError):  # the run or the machine is wrong, not the files
        raise
      except Exception as e:  # noqa: BLE001 - any other failure to read a step: try the previous one
        if "RESOURCE_EXHAUSTED" in str(e):
          raise
        reason = _first_line(e)
      aside = self._set_aside(step)
      older = steps[i + 1] if i + 1 < len(steps) else None
      log(f"checkpoint step {step} in {self.directory} is unreadable ({reason}); moved it to {aside}; "
          + (f"falling back to step {older}" if older is not None else "no older checkpoint: "
             "starting from scratch"))
    return None

  def _set_aside(self, step: int) -> pathlib.Path:
    dst = self.workdir / SET_ASIDE / f"{step}-{int(time.time())}"
    if jax.process_index() == 0:
      dst.parent.mkdir(parents=True, exist_ok=True)
      (self.directory / str(step)).rename(dst)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f"set aside checkpoint {step}")
    self.manager.reload()
    return dst

  def wait(self):
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001 - see save()
      raise self._write_failed(e) from e

  def verify(self, step: int):
    """Cheap check of a finished save: every item is there and the params metadata reads back."""
    step_dir = self.directory / str(step)
    missing = [n for n in (PARAMS, "opt_state", "data_state", "meta") if not (step_dir / n).exists()]
    if missing:
      raise CheckpointError(f"checkpoint {step_dir} is incomplete after saving: missing {missing}")
    ocp.StandardCheckpointHandler().metadata(epath.Path(step_dir / PARAMS))

  def close(self):
    try:
      self.wait()
    finally:
      self.manager.close()


# --------------------------------------------------------------------------------------------
# Initialisation from another checkpoint (previous stage, converted release).


def load_params(path: str | pathlib.Path, abs_full_params: dict, model_cfg: ModelConfig,
                log=print) -> dict:
  """Loads the `params` item of another checkpoint onto our shardings (stage transitions, --init)."""
  ref = resolve_checkpoint(path)
  diff = check_compatible(read_model_config(ref), model_cfg, str(ref.config_path))
  if diff:
    log(f"init: model config differs from {ref.config_path} only in {diff} (no tensor changes)")
  meta = ocp.StandardCheckpointHandler().metadata(epath.Path(ref.params_dir))
  tree = getattr(meta, "tree", meta)
  saved_shapes = {k: tuple(v.shape) for k, v in flatten_dict(dict(tree)).items()}
  ours = {k: tuple(v.shape) for k, v in flatten_dict(abs_full_params).items()}
  missing, unexpected = sorted(set(ours) - set(saved_shapes)), sorted(set(saved_shapes) - set(ours))
  wrong = [f"{k}: {saved_shapes[k]} vs ours {ours[k]}" for k in ours
           if k in saved_shapes and saved_shapes[k] != ours[k]]
  if missing or unexpected or wrong:
    raise CheckpointError(f"checkpoint {ref.params_dir} does not fit the model: missing {missing}, "
                          f"unexpected {unexpected}, shape mismatches {wrong}")
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(ref.params_dir, abs_full_params)
