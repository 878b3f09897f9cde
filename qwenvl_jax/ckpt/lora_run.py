"""A LoRA / Q-LoRA run's model: the `lora` config section, the model it builds, and loading a run.

    lora = dict(enabled=True, rank=64, alpha=16.0, dropout=0.05,
                targets=("c_attn", "attn.c_proj", "w1", "w2"),   # released module names (PEFT rule)
                modules_to_save=(),        # fully trained tensors, e.g. ("wte", "lm_head")
                quantize="", group_size=64,  # Q-LoRA: "nf4" / "int4" / "int8" frozen base
                init="")                   # a PEFT adapter folder to start from

A run's workdir holds `finetune.json` (this section) beside model_config.json, so chat / eval /
convert rebuild the same model (`load_finetuned`, unmerged or merged). Training: train/finetune.py.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Mapping

from flax import nnx

from qwenvl_jax.config import ConfigError, ModelConfig, from_mapping
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
  for name in ("targets", "modules_to_save"):
    if name in values:
      v = values[name]
      values[name] = (v,) if isinstance(v, str) else tuple(v or ())
  return from_mapping(LoRAConfig, values, "lora").validate()


def target_paths(cfg: LoRAConfig) -> list[str]:
  from qwenvl_jax.ckpt import peft

  return peft.target_paths(cfg.targets)


def save_paths(cfg: LoRAConfig) -> list[str]:
  from qwenvl_jax.ckpt import peft

  return peft.save_paths(cfg.modules_to_save)


def transform(model: QwenVL, cfg: LoRAConfig, seed: int = 0) -> QwenVL:
  """Quantises the base (Q-LoRA) and adds the LoRA factors, in place."""
  if cfg.quantize:
    # The LLM only, like the released Qwen-VL-Chat-Int4 (its ViT stays 16-bit; the ViT's head dim
    # 104 is no multiple of the usual 4-bit group sizes either).
    quant.quantize_model(model, cfg.quantize, cfg.group_size, include=lambda p: p.startswith("llm."))
  lora_lib.apply_lora(model, target_paths(cfg), cfg.rank, cfg.alpha, cfg.dropout,
                      nnx.Rngs(seed + 1))
  return model


def make_model_fn(model_cfg: ModelConfig, cfg: LoRAConfig, seed: int = 0):
  """A `() -> model` for the train setup: the fine-tuned model when LoRA is on."""
  if not cfg.enabled:
    return lambda: QwenVL(model_cfg, rngs=nnx.Rngs(seed))
  return lambda: transform(QwenVL(model_cfg, rngs=nnx.Rngs(seed)), cfg, seed)


def read_settings(run_dir) -> LoRAConfig | None:
  """The `lora` section a run was trained with (None for a plain run)."""
  path = pathlib.Path(run_dir).resolve()
  for p in (path, path.parent, path.parent.parent, path.parent.parent.parent):
    f = p / FINETUNE_FILE
    if f.is_file():
      return lora_config_from_dict(json.loads(f.read_text()))
  return None


def is_lora_run(path) -> bool:
  """Whether `path` (a run's workdir or a checkpoint inside it) was trained with LoRA on."""
  settings = read_settings(path)
  return settings is not None and settings.enabled


def load_finetuned(run_dir, *, merge: bool = False, mesh=None, rules=None):
  """(model, model config, LoRAConfig, tokenizer path or None) of a LoRA / Q-LoRA run's latest
  checkpoint, the LoRA factors kept apart (`merge=False`) or folded into the kernels."""
  import jax
  import orbax.checkpoint as ocp
  from etils import epath

  from qwenvl_jax.ckpt.checkpoint import read_model_config, resolve_checkpoint
  from qwenvl_jax.sharding import abstract_state

  cfg = read_settings(run_dir)
  if cfg is None or not cfg.enabled:
    raise FileNotFoundError(f"{run_dir}: no {FINETUNE_FILE} with lora.enabled (not a LoRA run)")
  ref = resolve_checkpoint(run_dir)
  model_cfg = read_model_config(ref)
  make = make_model_fn(model_cfg, dataclasses.replace(cfg, init=""))
  graphdef, abs_state = abstract_state(make, mesh, rules)
  target = abs_state.to_pure_dict()
  if mesh is None:
    single = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=single), target)
  with ocp.StandardCheckpointer() as ckptr:
    restored = ckptr.restore(epath.Path(ref.params_dir), target)
  nnx.replace_by_pure_dict(abs_state, restored)
  model = nnx.merge(graphdef, abs_state)
  if merge:
    lora_lib.merge_lora(model)
  return model, model_cfg, cfg, ref.tokenizer_path
