"""LoRA / Q-LoRA fine-tuning: the `lora` section of a run config and the model it builds.

    lora = dict(enabled=True, rank=64, alpha=16.0, dropout=0.05,
                targets=("c_attn", "attn.c_proj", "w1", "w2"),   # released module names (PEFT rule)
                modules_to_save=(),        # fully trained tensors, e.g. ("wte", "lm_head")
                quantize="", group_size=64,  # Q-LoRA: "nf4" / "int4" / "int8" frozen base
                init="")                   # a PEFT adapter folder to start from

Everything but the LoRA factors and `modules_to_save` is frozen: those leaves are labelled frozen in
the optimizer (no moments, no gradients computed: `train/step.py` differentiates only the trained
leaves); a quantised base is not an `nnx.Param` at all and travels with the buffers. The run's
workdir gets `finetune.json` (this section) so chat / eval / convert rebuild the same model.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Mapping

import jax
from flax import nnx

from qwenvl_jax.config import ConfigError, ModelConfig
from qwenvl_jax.model import lora as lora_lib
from qwenvl_jax.model import quant
from qwenvl_jax.model.qwenvl import QwenVL

FINETUNE_FILE = "finetune.json"


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
  enabled: bool = False
  rank: int = 64
  alpha: float = 16.0
  dropout: float = 0.05
  targets: tuple = ("c_attn", "attn.c_proj", "w1", "w2")
  modules_to_save: tuple = ()
  quantize: str = ""
  group_size: int = 64
  init: str = ""

  def validate(self):
    def check(cond, field, msg):
      if not cond:
        raise ConfigError(f"config field 'lora.{field}': {msg}")

    check(self.rank >= 1, "rank", f"must be >= 1, got {self.rank}")
    check(self.alpha > 0, "alpha", f"must be positive, got {self.alpha}")
    check(0 <= self.dropout < 1, "dropout", f"must be in [0, 1), got {self.dropout}")
    check(self.quantize in ("",) + quant.FORMATS, "quantize",
          f"{self.quantize!r} not in {('',) + quant.FORMATS}")
    check(self.group_size >= 2 and self.group_size % 2 == 0, "group_size", "must be even and >= 2")
    check(bool(self.targets) and all(isinstance(t, str) for t in self.targets), "targets",
          "must be a non-empty tuple of module names")
    return self


def lora_config_from_dict(values: Mapping[str, Any] | None) -> LoRAConfig:
  values = dict(values or {})
  unknown = sorted(set(values) - {f.name for f in dataclasses.fields(LoRAConfig)})
  if unknown:
    raise ConfigError(f"config field 'lora': unknown keys {unknown}")
  for name in ("targets", "modules_to_save"):
    if name in values:
      v = values[name]
      values[name] = (v,) if isinstance(v, str) else tuple(v or ())
  return LoRAConfig(**values).validate()


def target_paths(cfg: LoRAConfig) -> list[str]:
  from qwenvl_jax.ckpt import peft

  return peft.target_paths(cfg.targets)


def save_paths(cfg: LoRAConfig) -> list[str]:
  from qwenvl_jax.ckpt import peft

  return peft.save_paths(cfg.modules_to_save)


def transform(model: QwenVL, cfg: LoRAConfig, seed: int = 0) -> QwenVL:
  """Quantises the base (Q-LoRA) and adds the LoRA factors, in place."""
  if cfg.quantize:
    quant.quantize_model(model, cfg.quantize, cfg.group_size)
  lora_lib.apply_lora(model, target_paths(cfg), cfg.rank, cfg.alpha, cfg.dropout,
                      nnx.Rngs(seed + 1))
  return model


def make_model_fn(model_cfg: ModelConfig, cfg: LoRAConfig, seed: int = 0):
  """A `() -> model` for the train setup: the fine-tuned model when LoRA is on."""
  if not cfg.enabled:
    return lambda: QwenVL(model_cfg, rngs=nnx.Rngs(seed))
  return lambda: transform(QwenVL(model_cfg, rngs=nnx.Rngs(seed)), cfg, seed)


def frozen_paths(params: dict, cfg: LoRAConfig) -> tuple[str, ...]:
  """Every parameter path except the LoRA factors and modules_to_save (the optimizer's `frozen`)."""
  from qwenvl_jax.train.optim import path_str

  keep = set(save_paths(cfg))
  out = []
  for path, _ in jax.tree_util.tree_leaves_with_path(params):
    p = path_str(path)
    if p.rsplit(".", 1)[-1] in ("lora_a", "lora_b") or p in keep:
      continue
    out.append(p)
  return tuple(out)


def base_params(source: str, model_cfg: ModelConfig, mesh, cfg: LoRAConfig, seed: int,
                log=print):
  """The fine-tuned model from a base checkpoint (`source`) and optionally a PEFT adapter
  (`cfg.init`): loaded sharded, quantised, LoRA added, adapter tensors loaded."""
  from qwenvl_jax.ckpt import peft
  from qwenvl_jax.sharding import abstract_state, shard_model
  from qwenvl_jax.train import checkpoint as ckpt_lib

  graphdef, abs_state = abstract_state(lambda: QwenVL(model_cfg, rngs=nnx.Rngs(0)), mesh)
  full = ckpt_lib.load_params(source, abs_state.to_pure_dict(), model_cfg, log=log)
  state = nnx.state(nnx.merge(graphdef, abs_state))
  state.replace_by_pure_dict(full)
  model = nnx.merge(graphdef, state)
  transform(model, cfg, seed)
  if cfg.init:
    adapter = peft.read_adapter(cfg.init)
    if adapter.rank != cfg.rank or tuple(adapter.targets) != tuple(cfg.targets):
      raise ConfigError(f"lora.init {cfg.init}: adapter has r={adapter.rank} targets "
                        f"{list(adapter.targets)}; the config has r={cfg.rank} {list(cfg.targets)}")
    peft.load_arrays(model, peft.adapter_to_ours(adapter, model_cfg, cfg.init))
    log(f"loaded LoRA adapter {cfg.init}")
  return shard_model(model, mesh)


def write_settings(workdir, cfg: LoRAConfig) -> None:
  if jax.process_index() == 0:
    (pathlib.Path(workdir) / FINETUNE_FILE).write_text(json.dumps(dataclasses.asdict(cfg), indent=2))


def read_settings(run_dir) -> LoRAConfig | None:
  """The `lora` section a run was trained with (None for a plain run)."""
  path = pathlib.Path(run_dir).resolve()
  for p in (path, path.parent, path.parent.parent, path.parent.parent.parent):
    f = p / FINETUNE_FILE
    if f.is_file():
      return lora_config_from_dict(json.loads(f.read_text()))
  return None


def load_finetuned(run_dir, *, merge: bool = False, log=print):
  """(model, model config) of a LoRA / Q-LoRA run's latest checkpoint, unmerged or merged."""
  from qwenvl_jax.config import model_config_from_dict
  from qwenvl_jax.train import checkpoint as ckpt_lib

  cfg = read_settings(run_dir)
  if cfg is None or not cfg.enabled:
    raise FileNotFoundError(f"{run_dir}: no {FINETUNE_FILE} with lora.enabled (not a LoRA run)")
  params_dir, config_file = ckpt_lib.resolve_params_dir(run_dir)
  if config_file is None:
    raise FileNotFoundError(f"{run_dir}: no model_config.json")
  model_cfg = model_config_from_dict(json.loads(config_file.read_text()))
  abstract = nnx.eval_shape(make_model_fn(model_cfg, dataclasses.replace(cfg, init="")))
  graphdef, abs_state = nnx.split(abstract)
  import orbax.checkpoint as ocp

  with ocp.StandardCheckpointer() as ckptr:
    full = ckptr.restore(params_dir, abs_state.to_pure_dict())
  abs_state.replace_by_pure_dict(full)
  model = nnx.merge(graphdef, abs_state)
  if merge:
    lora_lib.merge_lora(model)
  return model, model_cfg, cfg


def build_setup(config, train_cfg, model_cfg: ModelConfig, mesh):
  """(train config, step.Setup, LoRAConfig) of a run config: the plain setup unless `lora.enabled`,
  else the LoRA model with everything but the factors and modules_to_save frozen."""
  from qwenvl_jax.sharding import eval_shape_model
  from qwenvl_jax.train import step as step_lib

  cfg = lora_config_from_dict(config.get("lora"))
  if not cfg.enabled:
    return train_cfg, step_lib.build_setup(model_cfg, train_cfg.optim, train_cfg.steps, mesh), cfg
  make = lambda seed: make_model_fn(model_cfg, cfg, seed)()
  params = nnx.state(eval_shape_model(lambda: make(0)), nnx.Param).to_pure_dict()
  frozen = tuple(dict.fromkeys(train_cfg.optim.frozen + frozen_paths(params, cfg)))
  train_cfg = dataclasses.replace(train_cfg, optim=dataclasses.replace(train_cfg.optim, frozen=frozen))
  setup = step_lib.build_setup(model_cfg, train_cfg.optim, train_cfg.steps, mesh, make_model=make,
                               dropout=cfg.dropout > 0)
  return train_cfg, setup, cfg


def write_merged_checkpoint(run_dir, dst) -> pathlib.Path:
  """A LoRA run's latest step with LoRA merged into the kernels, as a plain checkpoint folder
  (params/ + model_config.json + tokenizer/) that `convert --to hf` and chat / eval read."""
  import shutil

  import orbax.checkpoint as ocp

  from qwenvl_jax.train import checkpoint as ckpt_lib

  model, model_cfg, _ = load_finetuned(run_dir, merge=True)
  dst = pathlib.Path(dst).absolute()
  dst.mkdir(parents=True)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(dst / "params", nnx.state(model).to_pure_dict())
  ckpt_lib.write_model_config(dst, model_cfg)
  tok = pathlib.Path(run_dir) / "tokenizer"
  if tok.is_dir():
    shutil.copytree(tok, dst / "tokenizer")
  return dst


def export_peft(run_dir, dst, base_model: str = "") -> pathlib.Path:
  """A LoRA run's latest factors (and modules_to_save) as a PEFT adapter folder."""
  from qwenvl_jax.ckpt import peft

  model, model_cfg, cfg = load_finetuned(run_dir)
  return peft.export_adapter(model, model_cfg, dst, alpha=cfg.alpha, dropout=cfg.dropout,
                             targets=cfg.targets, modules_to_save=cfg.modules_to_save,
                             base_model=base_model)
