"""Typed, validated configuration.

Configs are plain Python modules (big_vision style), packaged in `qwenvl_jax/configs/`:
`get_config(variant)` returns an `ml_collections.ConfigDict`. `load_config_dict("stage2:tiny")` loads
one (by name, by its path `configs/stage2.py:tiny`, or any .py file), and the `*_from_dict` functions
turn its `model` / `mesh` / run sections into the frozen dataclasses below, validating every field on the way, so a
bad value fails at load time with the field's dotted name rather than as a shape error inside jit.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import pathlib
from typing import Any, Mapping

import ml_collections


class ConfigError(ValueError):
  """A configuration value is invalid; the message names the field."""


def _check(cond: bool, field: str, msg: str):
  if not cond:
    raise ConfigError(f"config field '{field}': {msg}")


def _check_positive(obj, names: tuple[str, ...], prefix: str):
  # Sizes are checked before any divisibility test, so 0 is named rather than a ZeroDivisionError.
  for name in names:
    _check(getattr(obj, name) > 0, f"{prefix}.{name}", f"must be positive, got {getattr(obj, name)}")


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  """ViT-bigG/14 in the OpenCLIP layout used by Qwen-VL (no class token)."""
  image_size: int = 448
  patch_size: int = 14
  width: int = 1664
  layers: int = 48
  heads: int = 16
  mlp_dim: int = 8192
  pos_grid: int = 16  # learned position embedding is a pos_grid x pos_grid table, resized per input
  ln_eps: float = 1e-6
  # Appendix E.3 ablation: window attention (window_patches x window_patches) in most layers, global
  # attention in every `global_every`-th layer. 0 disables windowing (the released model).
  window_patches: int = 0
  global_every: int = 4

  @property
  def head_dim(self) -> int:
    return self.width // self.heads

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  def validate(self, prefix: str = "model.vision"):
    _check_positive(self, ("width", "heads", "patch_size", "image_size", "layers"), prefix)
    _check(self.width % self.heads == 0, f"{prefix}.width",
           f"width {self.width} is not divisible by heads {self.heads}")
    _check(self.image_size % self.patch_size == 0, f"{prefix}.image_size",
           f"image size {self.image_size} is not divisible by patch size {self.patch_size}")
    if self.window_patches:
      _check(self.grid % self.window_patches == 0, f"{prefix}.window_patches",
             f"patch grid {self.grid} is not divisible by window {self.window_patches}")
      _check(self.global_every > 0, f"{prefix}.global_every", "must be positive")


@dataclasses.dataclass(frozen=True)
class AdapterConfig:
  """Position-aware VL adapter: one cross-attention layer with learnable queries."""
  n_queries: int = 256
  heads: int = 32
  ln_eps: float = 1e-6
  # Initialisation only (no tensor shape depends on it; converted checkpoints overwrite it). 0: the
  # released random init, under which every query starts by averaging all patches. a > 0: "local"
  # init: the queries start as their 2D positions alone and the q/k projections pick the position
  # table's slow sin/cos dims (times a), so each query first attends to the patches around its grid
  # point (see Adapter.local_init).
  local_init: float = 0.0

  @property
  def grid(self) -> int:
    return math.isqrt(self.n_queries)

  def validate(self, embed: int, prefix: str = "model.adapter"):
    _check_positive(self, ("n_queries", "heads"), prefix)
    _check(self.grid * self.grid == self.n_queries, f"{prefix}.n_queries",
           f"{self.n_queries} is not a perfect square (queries form a 2D grid)")
    _check(embed % self.heads == 0, f"{prefix}.heads",
           f"adapter width {embed} is not divisible by heads {self.heads}")
    _check(embed % 4 == 0, f"{prefix}.heads", "adapter width must be divisible by 4 (2D sin-cos)")
    _check(self.local_init >= 0, f"{prefix}.local_init", f"must be >= 0, got {self.local_init}")


@dataclasses.dataclass(frozen=True)
class LLMConfig:
  """Qwen-7B decoder."""
  vocab_size: int = 151936
  hidden: int = 4096
  layers: int = 32
  heads: int = 32
  head_dim: int = 128
  mlp_dim: int = 11008  # width of each of w1 / w2 (config.json intermediate_size // 2)
  rope_base: float = 10000.0
  rms_eps: float = 1e-6
  seq_length: int = 2048  # training context: the reference for log-n scaling and dynamic NTK
  use_dynamic_ntk: bool = True  # inference only
  use_logn_attn: bool = True  # inference only

  def validate(self, prefix: str = "model.llm"):
    _check_positive(self, ("hidden", "layers", "heads", "head_dim", "mlp_dim"), prefix)
    _check(self.heads * self.head_dim == self.hidden, f"{prefix}.heads",
           f"heads {self.heads} x head_dim {self.head_dim} != hidden {self.hidden}")
    _check(self.head_dim % 2 == 0, f"{prefix}.head_dim", "rotary embeddings need an even head_dim")
    _check(self.vocab_size > 0, f"{prefix}.vocab_size", "must be positive")


_DTYPES = ("float32", "bfloat16", "float16")
_REMAT = ("none", "full", "dots", "dots_no_batch")
ATTENTION_IMPLS = ("auto", "xla", "splash", "cudnn")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vision: VisionConfig = VisionConfig()
  adapter: AdapterConfig = AdapterConfig()
  llm: LLMConfig = LLMConfig()
  # Special token ids the model itself needs (image span delimiters). Defaults: the Qwen vocabulary.
  image_start_id: int = 151857
  image_end_id: int = 151858
  image_pad_id: int = 151859
  dtype: str = "float32"  # compute dtype
  param_dtype: str = "float32"  # master weights
  remat: str = "none"
  # ViT layers per rematerialised group (with remat and scanned layers): the backward keeps the
  # input of every group plus, while one group runs backward, its layers' inputs, instead of every
  # layer's input (48 x 7 images x 1024 x 1664 bf16 = 1.07 GiB per stage-2 row), for one more
  # forward pass of the ViT. 1 = per layer (no grouping); must divide vision.layers.
  vit_remat_group: int = 1
  scan_layers: bool = True
  # Kernel for self-attention (ViT and LLM): "xla" (einsum + softmax), "splash" (Pallas TPU kernel),
  # "cudnn" (jax.nn.dot_product_attention on GPU); "auto" picks per platform (model/attention.py).
  attention: str = "auto"
  # Training loss: the LM head runs on chunks of this many positions per row, targets only
  # (model/lm_loss.py); 0 = full [rows, T, vocab] logits (the reference path).
  loss_chunk: int = 256
  # The chunked loss's LM head split over the vocabulary across the row shards (model/lm_loss.py):
  # gathers each chunk's hidden states instead of the [embed, vocab] head, and the head's gradient
  # stays sharded (no full per-chip partial). Needs loss_chunk > 0.
  loss_shard_vocab: bool = True

  def validate(self):
    self.vision.validate()
    self.adapter.validate(self.llm.hidden)
    self.llm.validate()
    for name in ("image_start_id", "image_end_id", "image_pad_id"):
      _check(0 <= getattr(self, name) < self.llm.vocab_size, f"model.{name}",
             f"{getattr(self, name)} outside the vocabulary [0, {self.llm.vocab_size})")
    _check(self.dtype in _DTYPES, "model.dtype", f"{self.dtype!r} not in {_DTYPES}")
    _check(self.param_dtype in _DTYPES, "model.param_dtype", f"{self.param_dtype!r} not in {_DTYPES}")
    _check(self.remat in _REMAT, "model.remat", f"{self.remat!r} not in {_REMAT}")
    _check(self.vit_remat_group >= 1 and self.vision.layers % self.vit_remat_group == 0,
           "model.vit_remat_group", f"{self.vit_remat_group} does not divide vision.layers "
           f"({self.vision.layers})")
    _check(self.attention in ATTENTION_IMPLS, "model.attention",
           f"{self.attention!r} not in {ATTENTION_IMPLS}")
    _check(self.loss_chunk >= 0, "model.loss_chunk", f"must be >= 0, got {self.loss_chunk}")
    return self

  @property
  def tokens_per_image(self) -> int:
    return self.adapter.n_queries

  @property
  def image_span(self) -> list[int]:
    """The token ids one image takes in a prompt: start, `tokens_per_image` pads, end."""
    return [self.image_start_id] + [self.image_pad_id] * self.tokens_per_image + [self.image_end_id]


MESH_AXES = ("data", "fsdp", "tensor")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Sizes of the (data, fsdp, tensor) mesh axes; one size may be -1 (fill with the rest).

  `rules` overrides entries of the logical-axis rules table (`sharding.DEFAULT_RULES`), e.g.
  `(("embed", None),)` to replicate the LLM width instead of sharding it over fsdp; () = the table.
  """
  data: int = 1
  fsdp: int = -1
  tensor: int = 1
  rules: tuple = ()

  def resolved_shape(self, n_devices: int) -> tuple[int, int, int]:
    sizes = [self.data, self.fsdp, self.tensor]
    free = [i for i, s in enumerate(sizes) if s == -1]
    _check(len(free) <= 1, "mesh", f"at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
    for name, s in zip(MESH_AXES, sizes):
      _check(s == -1 or s >= 1, f"mesh.{name}", f"size {s} must be >= 1 or -1")
    known = math.prod(s for s in sizes if s != -1)
    if free:
      _check(n_devices % known == 0, f"mesh.{MESH_AXES[free[0]]}",
             f"cannot fill: {n_devices} devices not divisible by the other axes' product {known}")
      sizes[free[0]] = n_devices // known
    _check(math.prod(sizes) == n_devices, "mesh",
           f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, have {n_devices}")
    return tuple(sizes)


# --------------------------------------------------------------------------------------------
# Building dataclasses from ConfigDicts / plain dicts.


def from_mapping(cls, values: Mapping[str, Any] | None, prefix: str):
  """A config dataclass from a mapping: unknown keys and values of the wrong type raise ConfigError
  naming the dotted field (`prefix` "" for top-level run fields). The one type check of every
  config value, `--set` overrides included."""
  values = dict(values or {})
  fields = {f.name: f for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - set(fields))
  _check(not unknown, prefix or "config", f"unknown field(s) {unknown}; known: {sorted(fields)}")
  kwargs = {}
  for name, value in values.items():
    field = f"{prefix}.{name}" if prefix else name
    sub = {"vision": VisionConfig, "adapter": AdapterConfig, "llm": LLMConfig}.get(name)
    if cls is ModelConfig and sub is not None:
      _check(isinstance(value, Mapping), field, f"is a section; set its fields ({field}.<name>=...)")
      kwargs[name] = from_mapping(sub, value, field)
      continue
    default = fields[name].default
    if isinstance(default, bool):
      _check(isinstance(value, bool), field, f"expects True or False, got {value!r}")
    elif isinstance(default, int):
      _check(isinstance(value, int) and not isinstance(value, bool), field, f"expects an int, got {value!r}")
    elif isinstance(default, float):
      _check(isinstance(value, (int, float)) and not isinstance(value, bool), field,
             f"expects a number, got {value!r}")
      value = float(value)
    elif isinstance(default, str):
      _check(isinstance(value, str), field, f"expects a string, got {value!r}")
    kwargs[name] = value
  return cls(**kwargs)


def _to_plain(value):
  if isinstance(value, ml_collections.ConfigDict):
    return {k: _to_plain(v) for k, v in value.items()}
  if isinstance(value, Mapping):
    return {k: _to_plain(v) for k, v in value.items()}
  return value


def model_config_from_dict(values: Mapping[str, Any]) -> ModelConfig:
  return from_mapping(ModelConfig, _to_plain(values), "model").validate()


def _rules_tuple(rules) -> tuple:
  """Config rules (lists from JSON / --set) -> ((logical name, None | mesh axis | axes tuple), ...)."""
  out = []
  for entry in rules or ():
    _check(isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], str),
           "mesh.rules", f"each rule is (logical name, mesh axes), got {entry!r}")
    name, axes = entry
    axes_t = (axes,) if isinstance(axes, str) else tuple(axes or ())
    _check(all(a in MESH_AXES for a in axes_t), "mesh.rules",
           f"rule for '{name}': mesh axes {axes!r} not among {MESH_AXES}")
    out.append((name, axes if axes is None or isinstance(axes, str) else tuple(axes)))
  return tuple(out)


def mesh_config_from_dict(values: Mapping[str, Any] | None) -> MeshConfig:
  values = dict(_to_plain(values) or {})
  if "rules" in values:
    values["rules"] = _rules_tuple(values["rules"])
  return from_mapping(MeshConfig, values, "mesh")


def model_config_to_dict(cfg: ModelConfig) -> dict:
  return dataclasses.asdict(cfg)


# --------------------------------------------------------------------------------------------
# Scaled-down models (configs tiny and small).


def scaled_model_config(vocab_size: int, vision: Mapping[str, Any], adapter: Mapping[str, Any],
                        llm: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """The released architecture at the given sizes, everything else at the released values.

  Fields left out of `vision` / `adapter` / `llm` take the dataclass defaults (patch 14, eps 1e-6,
  rope base 1e4, dynamic NTK + log-n on); the image special ids sit at the top of the (small)
  vocabulary, as in the released one; float32 compute and weights, no remat.
  """
  v = vocab_size
  return ml_collections.ConfigDict(dict(
      vision=dataclasses.asdict(VisionConfig(**vision)),
      adapter=dataclasses.asdict(AdapterConfig(**adapter)),
      llm=dataclasses.asdict(LLMConfig(vocab_size=v, **llm)),
      image_start_id=v - 3, image_end_id=v - 2, image_pad_id=v - 1,
      dtype="float32", param_dtype="float32", remat="none", scan_layers=True,
      attention="auto", loss_chunk=256, loss_shard_vocab=True,
  ))


def model_file_config(model: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """What a model config file's get_config returns: the model on a pure-FSDP mesh."""
  return ml_collections.ConfigDict(dict(model=model, mesh=dict(data=1, fsdp=-1, tensor=1, rules=())))


# --------------------------------------------------------------------------------------------
# Config files.

PACKAGE = "qwenvl_jax.configs"
# A source checkout's top-level configs/ folder: configs not (yet) moved into the package still load.
CONFIG_DIR = pathlib.Path(__file__).resolve().parent.parent / "configs"


def packaged_configs() -> list[str]:
  """Names of the configs in qwenvl_jax/configs/ (those with a get_config)."""
  folder = pathlib.Path(__file__).resolve().parent / "configs"
  return sorted(p.stem for p in folder.glob("*.py")
                if not p.stem.startswith("_") and "def get_config" in p.read_text())


def _config_source(spec: str):
  """A config spec's path part -> (module name, importlib spec). Order: a file at that path (relative
  to the working directory), the packaged config of that name, the checkout's configs/ folder."""
  path = pathlib.Path(spec)
  if path.suffix != ".py":
    path = path.with_suffix(".py")
  if path.is_file():
    return path.stem, importlib.util.spec_from_file_location(f"qwenvl_config_{path.stem}", path)
  if path.stem in packaged_configs():
    return path.stem, importlib.util.find_spec(f"{PACKAGE}.{path.stem}")
  candidate = CONFIG_DIR / path.name
  if candidate.is_file():
    return path.stem, importlib.util.spec_from_file_location(f"qwenvl_config_{path.stem}", candidate)
  raise ConfigError(f"config '{spec}' not found: no such file, and no packaged config of that name "
                    f"(known: {', '.join(packaged_configs())})")


def load_config_dict(spec: str) -> ml_collections.ConfigDict:
  """`stage1:tiny`, `qwen_vl_7b`, `configs/stage1.py:tiny` or `path/to/file.py:variant` -> its
  get_config(variant). Each call executes the module afresh (configs may keep module-level tables)."""
  path_part, _, variant = spec.partition(":")
  name, module_spec = _config_source(path_part)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"config '{path_part}' has no get_config(variant) function")
  return module.get_config(variant or None)


def parse_override_value(raw: str):
  """An override's value: a Python literal where it parses as one (0, 1e-4, False, (1, 2)), else
  the string itself (two_pass, splash)."""
  import ast

  try:
    return ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    return raw


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: list[str]) -> ml_collections.ConfigDict:
  """Applies `key.sub=value` strings (values parse as Python literals where they can), then checks the
  result as the typed run config (`run_config_from_dict`): the one validation of every value, so a
  wrong type or value raises ConfigError naming the dotted field. The `lora` and `evals` sections
  are typed where they are read (ckpt/lora_run.py, evals/in_loop.py)."""
  for item in overrides or []:
    key, sep, raw = item.partition("=")
    if not sep:
      raise ConfigError(f"override '{item}' is not of the form key=value")
    value = parse_override_value(raw)
    node = cfg
    parts = key.split(".")
    for part in parts[:-1]:
      if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
        raise ConfigError(f"override '{item}': no config field '{key}'")
      node = node[part]
    if parts[-1] not in node and not _is_typed_field(parts):
      raise ConfigError(f"override '{item}': no config field '{key}'")
    if isinstance(node.get(parts[-1]), ml_collections.ConfigDict):
      raise ConfigError(f"override '{item}': config field '{key}' is a section; set its fields "
                        f"({key}.<name>=...)")
    with node.ignore_type():  # the typed config checks the value, below
      node[parts[-1]] = value
  if overrides and "model" in cfg:
    run_config_from_dict(cfg)
  return cfg


def _is_typed_field(parts: list[str]) -> bool:
  """Whether the dotted key names a field of the typed run config (which an override may set even
  where the config file leaves it at its default, e.g. `data.num_epochs`)."""
  sections = {"model": ModelConfig, "mesh": MeshConfig, "optim": OptimConfig, "data": DataConfig}
  cls = TrainConfig if len(parts) == 1 else sections.get(parts[0])
  for part in parts[1:-1]:
    if cls is ModelConfig and part in ("vision", "adapter", "llm"):
      cls = {"vision": VisionConfig, "adapter": AdapterConfig, "llm": LLMConfig}[part]
    else:
      return False
  return cls is not None and parts[-1] in {f.name for f in dataclasses.fields(cls)} \
      and parts[-1] not in ("optim", "data")


def load_model_config(spec: str) -> ModelConfig:
  cfg = load_config_dict(spec)
  return model_config_from_dict(cfg.model)


# --------------------------------------------------------------------------------------------
# Training (qwenvl_jax/train): the optimizer and the run. Top-level keys of a stage config
# (configs stage1/2/3) besides `model`, `mesh`, `optim` and `data`.


UPDATE_GUARDS = ("auto", "cond", "two_pass", "select")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """AdamW + warmup/cosine + ViT layer-wise LR decay (Table 8 of the paper).

  `frozen` lists dotted parameter-path prefixes that get no update and no optimizer state, e.g.
  ("llm",) in stage 1 and ("visual", "adapter.ln_post", "adapter.proj") in stage 3.
  """
  peak_lr: float = 2e-4
  min_lr: float = 1e-6
  warmup_steps: int = 500
  b1: float = 0.9
  b2: float = 0.98
  eps: float = 1e-6
  weight_decay: float = 0.05
  grad_clip: float = 1.0
  vit_lr_decay: float = 0.95  # block i of L gets lr * decay^(L - i); 1.0 disables
  frozen: tuple = ()
  # Storage dtype of both Adam moments (train/optim.py: updated in float32, stored rounded to this).
  # "bfloat16" halves the optimizer state; with b2 close to 1 (> ~0.99) bf16 cannot represent the
  # second moment's per-step change (its relative step (1 - b2) is below bf16's half ulp, 2^-9).
  moment_dtype: str = "float32"
  # Keep the Adam moments in the host's pinned memory between steps (TPU memory kind "pinned_host"):
  # they are read once per step, in the update after the last microbatch, so they need no HBM while
  # the microbatches run (at 7B on 16 v5e chips: 2.25 GiB per chip with bf16 moments).
  offload_moments: bool = False
  # How the step applies an update only when it is finite (train/step.py); `finite` comes from the
  # loss, the gradient norm and the new parameters. "cond": the new values are only reduced, then
  # the update is computed again and written in place under `lax.cond(finite)` (CPU: 0.30 vs
  # 0.63 s and 0.44 vs 1.42 GiB of temporaries per update of 118M parameters against "select",
  # the same as no guard); "two_pass": only reduced, then computed again and selected against
  # the old values elementwise (TPU: old and new state never all in HBM, what fits the 7B on
  # v5e); "select": computed once, kept and selected against the old values. "auto" = "cond" on
  # CPU, "two_pass" elsewhere.
  update_guard: str = "auto"

  def validate(self, prefix: str = "optim"):
    _check(self.peak_lr > 0, f"{prefix}.peak_lr", f"must be positive, got {self.peak_lr}")
    _check(0 <= self.min_lr <= self.peak_lr, f"{prefix}.min_lr",
           f"must be in [0, peak_lr={self.peak_lr}], got {self.min_lr}")
    _check(self.warmup_steps >= 0, f"{prefix}.warmup_steps", "must be >= 0")
    for name in ("b1", "b2"):
      _check(0 <= getattr(self, name) < 1, f"{prefix}.{name}", "must be in [0, 1)")
    _check(self.eps > 0, f"{prefix}.eps", "must be positive")
    _check(self.weight_decay >= 0, f"{prefix}.weight_decay", "must be >= 0")
    _check(self.grad_clip > 0, f"{prefix}.grad_clip", "must be positive")
    _check(0 < self.vit_lr_decay <= 1, f"{prefix}.vit_lr_decay", "must be in (0, 1]")
    _check(all(isinstance(f, str) and f for f in self.frozen), f"{prefix}.frozen",
           f"must be a tuple of dotted parameter paths, got {self.frozen!r}")
    _check(self.update_guard in UPDATE_GUARDS, f"{prefix}.update_guard",
           f"{self.update_guard!r} not in {UPDATE_GUARDS}")
    _check(self.moment_dtype in ("float32", "bfloat16"), f"{prefix}.moment_dtype",
           f"{self.moment_dtype!r} not in ('float32', 'bfloat16')")
    _check(self.moment_dtype == "float32" or self.b2 <= 0.99, f"{prefix}.moment_dtype",
           f"bfloat16 moments need b2 <= 0.99 (got {self.b2}): bf16 cannot hold the second "
           f"moment's per-step change of (1 - b2)")
    return self


DATA_SOURCES = ("synthetic", "jsonl", "array_record", "tfds")
_DATA_FORMATS = ("auto", "chatml", "pretrain")
_DATA_LAYOUTS = ("unpacked", "packed")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """The run's `data` section: where training rows come from and how they are built.

  `synthetic` is train/batch.py's generated batches (tests, benchmarks); the record sources go
  through the grain pipeline (data/pipeline.py), which also checks what needs the disk: that the
  files exist, that the tokenizer loads and fits the model, and the task names.
  """
  source: str = "synthetic"
  paths: tuple = ()  # record files; for `tfds`, prepared datasets "NAME" or "NAME:SPLIT"
  tokenizer: str = ""  # a .tiktoken / .model file or a directory holding one
  tfds_dir: str = ""  # data_dir of the prepared TFDS datasets
  format: str = "auto"  # "chatml" (conversations), "pretrain" (raw records via `tasks`), "auto": by record
  # Pretraining tasks drawn from, one example per record visit: a task named k times is drawn k times
  # as often. () = every task.
  tasks: tuple = ()
  ocr_max_regions: int = 32
  layout: str = "unpacked"  # or "packed" (several samples per row)
  pack_window: int = 64  # samples packed together; larger packs tighter, costs memory and latency
  max_images: int = 1  # images per row
  seed: int | None = None  # None: the run's seed
  shuffle: bool = True
  num_epochs: int | None = None  # None: repeat forever
  num_workers: int = 0
  read_threads: int = 2
  read_prefetch: int = 16
  worker_buffer: int = 4
  fixed: bool = False  # synthetic only: the same batch every step

  def validate(self, prefix: str = "data"):
    _check(self.source in DATA_SOURCES, f"{prefix}.source",
           f"{self.source!r} is not a data source; expected one of {DATA_SOURCES}")
    _check(self.format in _DATA_FORMATS, f"{prefix}.format", f"{self.format!r} is not one of {_DATA_FORMATS}")
    _check(self.layout in _DATA_LAYOUTS, f"{prefix}.layout", f"{self.layout!r} is not one of {_DATA_LAYOUTS}")
    for name, strings in (("paths", self.paths), ("tasks", self.tasks)):
      _check(isinstance(strings, tuple) and all(isinstance(x, str) for x in strings), f"{prefix}.{name}",
             f"must be a tuple of strings, got {strings!r}")
    for name, least in (("max_images", 0), ("num_workers", 0), ("ocr_max_regions", 0), ("pack_window", 1),
                        ("read_threads", 1), ("read_prefetch", 1), ("worker_buffer", 1), ("seed", 0),
                        ("num_epochs", 1)):
      value = getattr(self, name)
      if value is None and name in ("seed", "num_epochs"):
        continue
      _check(isinstance(value, int) and not isinstance(value, bool) and value >= least, f"{prefix}.{name}",
             f"must be an integer >= {least}, got {value!r}")
    return self


def data_config_from_dict(values: Mapping[str, Any] | None) -> DataConfig:
  values = dict(_to_plain(values) or {})
  known = [f.name for f in dataclasses.fields(DataConfig)]
  unknown = sorted(set(values) - set(known))
  _check(not unknown, f"data.{unknown[0] if unknown else ''}", f"unknown field; the data section takes {known}")
  for name in ("paths", "tasks"):  # one name may be given as a string; JSON / --set give lists
    if isinstance(values.get(name), str):
      values[name] = (values[name],)
    elif isinstance(values.get(name), list):
      values[name] = tuple(values[name])
  for name in ("tokenizer", "tfds_dir"):  # None / a path object read as the path text
    if name in values:
      values[name] = "" if values[name] is None else str(values[name])
  return from_mapping(DataConfig, values, "data").validate()


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """One training run. `batch_size` is global (all hosts, all microbatches of one optimizer step);
  each step runs `grad_accum` microbatches of batch_size // grad_accum rows."""
  stage: int = 1
  steps: int = 50_000
  batch_size: int = 30720
  seq_len: int = 512
  grad_accum: int = 6
  seed: int = 0
  checkpoint_every: int = 1000
  keep_checkpoints: int = 3
  async_checkpoint: bool = True
  log_every: int = 10  # console lines when no progress bar is shown; metrics.jsonl gets every step
  init: str = ""  # checkpoint / workdir to initialise parameters from (previous stage); "" = random
  peak_flops: float = 0.0  # per device, for MFU; 0 = look up the device kind (unknown -> no MFU)
  pause_after_step: int = 0  # preemption drills: after this step (and its checkpoint) wait for a signal
  optim: OptimConfig = OptimConfig()
  data: DataConfig = DataConfig()

  @property
  def data_source(self) -> str:
    return self.data.source

  @property
  def microbatch(self) -> int:
    return self.batch_size // self.grad_accum

  def validate(self):
    self.optim.validate()
    _check(self.stage in (1, 2, 3), "stage", f"must be 1, 2 or 3, got {self.stage}")
    for name in ("steps", "batch_size", "seq_len", "grad_accum", "checkpoint_every",
                 "keep_checkpoints", "log_every"):
      _check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
    _check(self.batch_size % self.grad_accum == 0, "grad_accum",
           f"batch_size {self.batch_size} is not divisible by grad_accum {self.grad_accum}")
    _check(self.seq_len >= 2, "seq_len", "must be >= 2 (next-token prediction)")
    _check(self.optim.warmup_steps <= self.steps, "optim.warmup_steps",
           f"{self.optim.warmup_steps} warmup steps exceed the {self.steps} training steps")
    _check(self.peak_flops >= 0, "peak_flops", "must be >= 0")
    _check(self.pause_after_step >= 0, "pause_after_step", "must be >= 0")
    return self


def optim_config_from_dict(values: Mapping[str, Any] | None) -> OptimConfig:
  values = dict(_to_plain(values) or {})
  if "frozen" in values:
    frozen = values["frozen"]
    values["frozen"] = (frozen,) if isinstance(frozen, str) else tuple(frozen or ())
  return from_mapping(OptimConfig, values, "optim").validate()


def train_config_from_dict(cfg: Mapping[str, Any]) -> TrainConfig:
  """The run settings of a whole stage config (its `model` / `mesh` sections are read elsewhere)."""
  values = _to_plain(cfg)
  # `evals` (in-training evaluation) is read by qwenvl_jax/evals/in_loop.py, `lora` by ckpt/lora_run.py
  top = {k: v for k, v in values.items() if k not in ("model", "mesh", "optim", "data", "evals", "lora")}
  out = from_mapping(TrainConfig, top, "")
  return dataclasses.replace(out, optim=optim_config_from_dict(values.get("optim")),
                             data=data_config_from_dict(values.get("data"))).validate()


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """A whole training run's typed config: the model, the mesh (and its sharding rules) and the run
  (steps, batch, optimizer, data). The `lora` section is typed by ckpt/lora_run.py (it needs the
  quantisation formats of the model layer), `evals` by evals/in_loop.py."""
  model: ModelConfig
  mesh: MeshConfig
  train: TrainConfig


def run_config_from_dict(cfg: Mapping[str, Any]) -> RunConfig:
  """Every typed section of a run config (a ConfigDict after `--set`), validated in one place;
  a bad value raises ConfigError naming its dotted field."""
  return RunConfig(model=model_config_from_dict(cfg["model"]), mesh=mesh_config_from_dict(cfg.get("mesh")),
                   train=train_config_from_dict(cfg))
