"""LoRA adapters in the HF PEFT format, names and layouts derived from the conversion table.

A PEFT LoRA adapter for the released model is a folder with `adapter_config.json` and
`adapter_model.safetensors` whose keys are the released module names under `base_model.model.`:
`base_model.model.transformer.h.N.attn.c_attn.lora_A.weight` [r, in] and `...lora_B.weight` [out, r]
(torch Linear convention), plus full tensors of `modules_to_save` (e.g. `transformer.wte.weight`).

Our LoRA factors are A [*in, r], B [r, *out] over the kernel's own axes (`model/lora.py`). Their
HF layouts come from the kernel's entry in `hf_layout.ENTRIES`: the kernel pattern
`"(3 H hd) D -> D 3 H hd"` (torch [out, in] -> ours [in..., out...]) gives A `"R D -> D R"` and
B `"(3 H hd) R -> R 3 H hd"`, so the adapter names and reshapes cannot drift from the weights'.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Iterable, Sequence

import numpy as np

from qwenvl_jax.ckpt import hf_layout
from qwenvl_jax.ckpt.atomic import atomic_directory
from qwenvl_jax.ckpt.hf_layout import Entry, Pattern
from qwenvl_jax.config import ModelConfig

PREFIX = "base_model.model."
CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"
# The released finetune.py's LoRA targets and, for a non-chat base, its modules_to_save.
RELEASED_TARGETS = ("c_attn", "attn.c_proj", "w1", "w2")
RELEASED_MODULES_TO_SAVE = ("wte", "lm_head")


class AdapterError(ValueError):
  """An adapter folder does not fit the model or uses PEFT options we do not implement."""


def _module_name(entry: Entry) -> str:
  return entry.hf[:-len(".weight")] if entry.hf.endswith(".weight") else entry.hf


def _matches(module: str, target: str) -> bool:
  """PEFT's rule for a target_modules string: the module name or its dotted suffix."""
  return module == target or module.endswith("." + target)


def _kernel_entries() -> list[Entry]:
  return [e for e in hf_layout.ENTRIES if e.ours.endswith(".kernel")]


def target_paths(targets: Sequence[str]) -> list[str]:
  """Released module names as PEFT matches them (e.g. "c_attn", "attn.c_proj") -> our Linear paths."""
  out, unmatched = [], []
  for t in targets:
    hits = [e.ours[:-len(".kernel")] for e in _kernel_entries()
            if _matches(_module_name(e).replace(".{i}", ""), t) or _matches(_module_name(e), t)]
    (out.extend(hits) if hits else unmatched.append(t))
  if unmatched:
    names = sorted({_module_name(e).replace(".{i}", "").split(".")[-1] for e in _kernel_entries()})
    raise AdapterError(f"lora target(s) {unmatched} match no linear layer; released names: {names}")
  return list(dict.fromkeys(out))


def save_paths(modules: Sequence[str]) -> list[str]:
  """modules_to_save names (e.g. "wte", "lm_head") -> our parameter paths."""
  out = []
  for m in modules:
    hits = [e.ours for e in hf_layout.ENTRIES if e.stack is None and _matches(_module_name(e), m)]
    if not hits:
      raise AdapterError(f"modules_to_save '{m}' matches no released module")
    out.extend(hits)
  return out


@dataclasses.dataclass(frozen=True)
class FactorEntry:
  """One LoRA factor: our path (`llm.blocks.attn.qkv.lora_a`), its PEFT key and per-layer pattern."""
  ours: str
  hf: str
  pattern: Pattern  # HF tensor (one layer) -> our array (one layer); symbol R = rank
  stack: str | None

  def hf_keys(self, cfg: ModelConfig) -> list[str]:
    return Entry(self.ours, self.hf, self.pattern, self.stack).hf_keys(cfg)


def factor_entries(paths: Iterable[str]) -> list[FactorEntry]:
  """The A and B entries of the Linear layers at `paths`, derived from their kernel entries."""
  by_path = {e.ours[:-len(".kernel")]: e for e in _kernel_entries()}
  out = []
  for path in paths:
    e = by_path[path]
    torch_out, torch_in = e.pattern.src
    n_in = 0
    while n_in < len(e.pattern.dst) and set(e.pattern.dst[n_in]) <= set(torch_in):
      n_in += 1
    ours_in, ours_out = e.pattern.dst[:n_in], e.pattern.dst[n_in:]
    module = PREFIX + _module_name(e)
    out.append(FactorEntry(path + ".lora_a", module + ".lora_A.weight",
                           Pattern((("R",), torch_in), (*ours_in, ("R",))), e.stack))
    out.append(FactorEntry(path + ".lora_b", module + ".lora_B.weight",
                           Pattern((torch_out, ("R",)), (("R",), *ours_out)), e.stack))
  return out


def _sizes(cfg: ModelConfig, rank: int) -> dict[str, int]:
  return {**hf_layout.symbol_sizes(cfg), "R": rank}


def _get(tree: dict, dotted: str):
  for k in dotted.split("."):
    tree = tree[k]
  return tree


def adapter_tensors(params: dict, cfg: ModelConfig, paths: Sequence[str], rank: int,
                    save: Sequence[str] = ()) -> dict[str, np.ndarray]:
  """PEFT-keyed float32 tensors from our pure parameter dict (LoRA factors + modules_to_save)."""
  sizes = _sizes(cfg, rank)
  out = {}
  for f in factor_entries(paths):
    ours = np.asarray(_get(params, f.ours), np.float32)
    inverse = f.pattern.inverse()
    slices = [ours] if f.stack is None else list(ours)
    for key, piece in zip(f.hf_keys(cfg), slices):
      out[key] = np.ascontiguousarray(inverse.apply(piece, sizes))
  for path in save:
    e = hf_layout.BY_OURS[path]
    out[PREFIX + e.hf] = e.to_hf(np.asarray(_get(params, path), np.float32), cfg)
  return out


def write_adapter(dst, tensors: dict[str, np.ndarray], *, rank: int, alpha: float, dropout: float,
                  targets: Sequence[str], modules_to_save: Sequence[str] = (),
                  base_model: str = "", overwrite: bool = False) -> pathlib.Path:
  """Writes the adapter folder atomically (ckpt/atomic.py): `dst` appears only when complete, an
  existing one is replaced only with `overwrite` and only once the new one is complete."""
  from safetensors.numpy import save_file

  config = {"peft_type": "LORA", "task_type": None, "r": rank, "lora_alpha": alpha,
            "lora_dropout": dropout, "target_modules": list(targets),
            "modules_to_save": list(modules_to_save) or None, "bias": "none",
            "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True,
            "base_model_name_or_path": base_model, "use_rslora": False, "use_dora": False}
  with atomic_directory(dst, overwrite=overwrite) as tmp:
    (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
  return pathlib.Path(dst)


@dataclasses.dataclass(frozen=True)
class Adapter:
  rank: int
  alpha: float
  dropout: float
  targets: tuple[str, ...]
  modules_to_save: tuple[str, ...]
  tensors: dict


def read_adapter(src) -> Adapter:
  """Reads a PEFT LoRA adapter folder; options we do not implement fail with one clear line."""
  from safetensors.numpy import load_file

  src = pathlib.Path(src)
  cfg_file, weights = src / CONFIG_FILE, src / WEIGHTS_FILE
  for f in (cfg_file, weights):
    if not f.is_file():
      raise AdapterError(f"{f}: missing (a PEFT adapter folder has {CONFIG_FILE} and {WEIGHTS_FILE})")
  try:
    c = json.loads(cfg_file.read_text())
  except json.JSONDecodeError as e:
    raise AdapterError(f"{cfg_file}: not valid JSON ({e})") from None
  if c.get("peft_type") != "LORA":
    raise AdapterError(f"{cfg_file}: peft_type {c.get('peft_type')!r}, only LORA is supported")
  for flag in ("use_dora", "use_rslora", "fan_in_fan_out"):
    if c.get(flag):
      raise AdapterError(f"{cfg_file}: {flag}=true is not supported")
  if c.get("bias", "none") != "none":
    raise AdapterError(f"{cfg_file}: bias={c['bias']!r} is not supported (only 'none')")
  for field in ("rank_pattern", "alpha_pattern"):
    if c.get(field):
      raise AdapterError(f"{cfg_file}: per-module {field} is not supported")
  targets = c.get("target_modules")
  if isinstance(targets, str) or not targets:
    raise AdapterError(f"{cfg_file}: target_modules must be a list of module names, got {targets!r}")
  return Adapter(int(c["r"]), float(c["lora_alpha"]), float(c.get("lora_dropout") or 0.0),
                 tuple(targets), tuple(c.get("modules_to_save") or ()), load_file(str(weights)))


def adapter_to_ours(adapter: Adapter, cfg: ModelConfig, src: str = "adapter") -> dict[str, np.ndarray]:
  """{our dotted path: array (stacked where the layers are)} for every tensor of the adapter."""
  paths = target_paths(adapter.targets)
  save = save_paths(adapter.modules_to_save)
  sizes = _sizes(cfg, adapter.rank)
  tensors = dict(adapter.tensors)
  out = {}

  def take(key):
    if key not in tensors:
      raise AdapterError(f"{src}: tensor {key} missing")
    return tensors.pop(key)

  for f in factor_entries(paths):
    pieces = [f.pattern.apply(take(k), sizes) for k in f.hf_keys(cfg)]
    out[f.ours] = pieces[0] if f.stack is None else np.stack(pieces)
  for path in save:
    e = hf_layout.BY_OURS[path]
    out[path] = e.to_ours(take(PREFIX + e.hf), cfg)
  if tensors:
    raise AdapterError(f"{src}: unexpected tensors {hf_layout._fmt_keys(list(tensors))}")
  return out


# --------------------------------------------------------------------------------------------
# Models.


def lora_settings(model) -> tuple[list[str], int]:
  """(paths of the Linear layers with LoRA, rank) of a model."""
  from qwenvl_jax.model.lora import linear_modules

  paths = [p for p, m in linear_modules(model).items() if m.lora_a is not None]
  if not paths:
    raise AdapterError("the model has no LoRA layers")
  return paths, int(linear_modules(model)[paths[0]].lora_a.get_value().shape[-1])


def export_adapter(model, cfg: ModelConfig, dst, *, alpha: float, dropout: float,
                   targets: Sequence[str], modules_to_save: Sequence[str] = (),
                   base_model: str = "", overwrite: bool = False) -> pathlib.Path:
  """Writes the LoRA factors (and modules_to_save) of `model` as a PEFT adapter folder."""
  from flax import nnx

  paths, rank = lora_settings(model)
  params = nnx.state(model, nnx.Param).to_pure_dict()
  tensors = adapter_tensors(params, cfg, paths, rank, save_paths(modules_to_save))
  return write_adapter(dst, tensors, rank=rank, alpha=alpha, dropout=dropout, targets=targets,
                       modules_to_save=modules_to_save, base_model=base_model, overwrite=overwrite)


def apply_adapter(model, cfg: ModelConfig, src, *, dtype=None) -> Adapter:
  """Adds the adapter's LoRA layers to `model` (in place) and loads its tensors."""
  import jax.numpy as jnp
  from flax import nnx

  from qwenvl_jax.model import lora

  adapter = read_adapter(src)
  arrays = adapter_to_ours(adapter, cfg, str(src))
  lora.apply_lora(model, target_paths(adapter.targets), adapter.rank, adapter.alpha,
                  adapter.dropout, nnx.Rngs(0), dtype or jnp.float32)
  load_arrays(model, arrays)
  return adapter


def load_arrays(model, arrays: dict) -> None:
  """Sets variables of `model` by dotted path (shapes must match; dtypes and shardings are kept)."""
  import jax
  from flax import nnx

  state = nnx.state(model)
  flat = dict(state.flat_state())
  for path, value in arrays.items():
    key = tuple(int(k) if k.isdigit() else k for k in path.split("."))
    if key not in flat:
      raise AdapterError(f"the model has no parameter {path}")
    var = flat[key]
    old = var.get_value()
    if tuple(old.shape) != tuple(value.shape):
      raise AdapterError(f"{path}: adapter shape {tuple(value.shape)} vs model {tuple(old.shape)}")
    new = jax.numpy.asarray(value, old.dtype)
    if hasattr(old, "sharding"):
      new = jax.device_put(new, old.sharding)
    var.set_value(new)
