"""Streaming conversion between the released HF/PyTorch layout and our Orbax checkpoints.

* `convert_hf_to_orbax`: config.json + `*.safetensors` / `pytorch_model-*.bin` shards -> DIR.
* `convert_orbax_to_hf`: DIR (or a training workdir) -> config.json + shards + index, the released
  key names, any dtype.
* `convert_stage1`: stage-1 initialisation from an OpenCLIP ViT-bigG state dict and / or a
  Qwen-7B LLM checkpoint; whatever is not given (always the adapter) is freshly initialised as
  `QwenVL(cfg, rngs=nnx.Rngs(seed))` would.

Memory: parameters are produced block by block while Orbax writes them: one layer of a stacked
parameter, a <= 64 MiB row block of the embedding / lm_head, or one small tensor at a time; the
way back reads the same blocks and streams them into safetensors shards (a .bin shard is built in
memory: torch.save needs the dict). Measured with benchmarks/convert_bench.py. Every output is
written into a temporary directory and renamed into place only when complete.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import shutil
from typing import Sequence

import numpy as np

from qwenvl_jax.ckpt import hf_io, hf_layout
from qwenvl_jax.ckpt.atomic import atomic_directory, check_disjoint
from qwenvl_jax.ckpt.checkpoint import (HF_EXTRA, PARAMS, TOKENIZER_DIR, copy_tokenizer,
                                        flatten_dict, read_model_config, resolve_checkpoint,
                                        write_model_config)
from qwenvl_jax.ckpt.orbax_io import (CHUNK_BYTES, LazyArray, ParamReader, check_checkpoint,
                                      save_lazy_params)
from qwenvl_jax.config import ModelConfig

log = logging.getLogger(__name__)

DEFAULT_SHARD_SIZE = 2 << 30
BLOCK_BYTES = 64 << 20  # row blocks of big unstacked tensors (embedding, lm_head)
MIN_LAYER_CHUNK_BYTES = 1 << 20  # smaller layers are written as one chunk (Orbax's advice)


class _Progress:
  """A tqdm bar when asked for (imported lazily), else a no-op."""

  def __init__(self, total: int, desc: str, enabled: bool):
    self.bar = None
    if enabled:
      from tqdm import tqdm

      self.bar = tqdm(total=total, desc=desc, unit="tensor")

  def __call__(self, n: int = 1):
    if self.bar is not None:
      self.bar.update(n)

  def close(self):
    if self.bar is not None:
      self.bar.close()


class _FiniteCheck:
  """Warns once per tensor (naming it) that holds NaN or inf: converting it is allowed (a user may
  want to inspect a diverged run) but must not go unnoticed."""

  def __init__(self):
    self.reported: set[str] = set()

  def __call__(self, key: str, arr: np.ndarray) -> np.ndarray:
    if key in self.reported:
      return arr
    finite = np.isfinite(arr.astype(np.float32, copy=False))  # (numpy has no isfinite for bf16)
    if not finite.all():
      self.reported.add(key)
      log.warning("tensor %s holds %s", key, "NaN/inf values" if finite.any() else "only NaN/inf")
    return arr


def read_config_json(path: pathlib.Path) -> dict:
  """A checkpoint's config.json; errors name the file."""
  try:
    cj = json.loads(path.read_text(encoding="utf-8"))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise hf_layout.ConfigError(f"{path}: not valid JSON ({e})") from None
  if not isinstance(cj, dict):
    raise hf_layout.ConfigError(f"{path}: must hold a JSON object, got {type(cj).__name__}")
  return cj


def _hf_config(path: pathlib.Path, base: ModelConfig | None) -> ModelConfig:
  try:
    return hf_layout.hf_config_to_model_config(read_config_json(path), base=base)
  except hf_layout.ConfigError as e:
    raise hf_layout.ConfigError(e.args[0] if str(e).startswith(str(path)) else f"{path}: {e}") from None


def _lazy_from_hf(entry: hf_layout.Entry, cfg: ModelConfig, read, dtype: np.dtype, tick,
                  finite=lambda key, arr: arr) -> LazyArray:
  """Our array for `entry`, assembled from HF tensors while Orbax writes it.

  Stacked: one layer at a time (one chunk per layer on disk). Big unstacked tensors with a row
  axis (embedding, lm_head): blocks of HF rows, one chunk each. Small arrays: one piece.
  `read(key, rows=None)` returns an HF tensor or a block of its rows.
  """
  keys = entry.hf_keys(cfg)
  shape = entry.ours_shape(cfg)
  nbytes = int(np.prod(shape)) * dtype.itemsize

  def convert(key, rows=None):
    return entry.to_ours(finite(key, read(key, rows)), cfg, rows=rows is not None).astype(dtype)

  if entry.stack is not None:
    layer_bytes = nbytes // shape[0]
    if layer_bytes < MIN_LAYER_CHUNK_BYTES:  # tiny layers: one chunk, one write
      def whole(_chunk):
        blocks = [convert(k) for k in keys]
        tick(len(keys))
        yield (), np.stack(blocks)

      return LazyArray(shape, dtype, whole)

    def layers(_chunk):
      for i, key in enumerate(keys):
        block = convert(key)
        tick()
        yield (i,), block

    return LazyArray(shape, dtype, layers, chunk_axis=0, chunk_bytes=min(layer_bytes, CHUNK_BYTES))

  axis = entry.block_axis()
  if axis is not None and nbytes > BLOCK_BYTES:
    pos, n = axis[1], shape[axis[1]]

    def row_blocks(chunk):
      step = chunk[pos]
      for r0 in range(0, n, step):
        r1 = min(r0 + step, n)
        yield (slice(None),) * pos + (slice(r0, r1),), convert(keys[0], (r0, r1))
      tick()

    return LazyArray(shape, dtype, row_blocks, chunk_bytes=BLOCK_BYTES)

  def single(_chunk):
    block = convert(keys[0])
    tick()
    yield (), block

  return LazyArray(shape, dtype, single)


def _hf_blocks(entry: hf_layout.Entry, cfg: ModelConfig, reader: ParamReader, layer, np_dt):
  """One HF tensor from our checkpoint: an array, or row blocks for big blockable tensors."""
  axis = entry.block_axis()
  shape = entry.ours_shape(cfg)
  nbytes = int(np.prod(shape)) * np_dt.itemsize
  if layer is not None or axis is None or nbytes <= BLOCK_BYTES:
    return entry.to_hf(reader.read(entry.ours, layer).astype(np_dt, copy=False), cfg)
  pos, n = axis[1], shape[axis[1]]
  chunk = reader.chunk_shape(entry.ours)[pos]
  step = chunk * max(1, (BLOCK_BYTES // (nbytes // n)) // chunk)

  def blocks():
    for r0 in range(0, n, step):
      r1 = min(r0 + step, n)
      index = (slice(None),) * pos + (slice(r0, r1),)
      yield entry.to_hf(reader.read(entry.ours, index).astype(np_dt, copy=False), cfg, rows=r1 - r0)

  return blocks()


def _write_checkpoint(tmp: pathlib.Path, flat: dict, cfg: ModelConfig, tok):
  """Our checkpoint's contents: parameters, model config and (when there is one) the tokenizer."""
  save_lazy_params(tmp / PARAMS, flat)
  write_model_config(tmp, cfg)
  if tok is not None:
    copy_tokenizer(tok, tmp)


def _copy_hf_extras(src: pathlib.Path, dst: pathlib.Path, skip=()):
  """Keeps the source config.json and small non-weight files for the way back to HF."""
  if not src.is_dir():
    return
  out = dst / HF_EXTRA
  out.mkdir(parents=True, exist_ok=True)
  if (src / "config.json").exists():
    shutil.copy2(src / "config.json", out / "config.json")
  for f in hf_io.aux_files(src, skip=skip):
    shutil.copy2(f, out / f.name)


def _tokenizer_for(src: pathlib.Path, tokenizer_file):
  if tokenizer_file is not None:
    return pathlib.Path(tokenizer_file)
  return hf_io.find_tokenizer_file(src)


def convert_hf_to_orbax(src, dst, model_cfg: ModelConfig | None = None, *,
                        param_dtype: str | None = None, tokenizer_file=None,
                        overwrite: bool = False, progress: bool = False) -> pathlib.Path:
  """HF checkpoint dir -> our checkpoint dir (atomic, streaming).

  The architecture comes from `src/config.json`; `model_cfg` supplies runtime fields (dtype, remat,
  ...) and must agree with config.json on the architecture (the error names the field). Without a
  config.json, `model_cfg` is the architecture. Arrays are stored in `param_dtype` (default: the
  config's, float32), which is lossless for bf16 / fp16 sources.
  """
  src, dst = pathlib.Path(src), pathlib.Path(dst)
  if not src.exists():
    raise FileNotFoundError(f"no checkpoint at {src}")
  check_disjoint(dst, src, tokenizer_file)
  config_path = src / "config.json"
  if config_path.exists():
    cfg = _hf_config(config_path, model_cfg)
  elif model_cfg is not None:
    cfg = model_cfg
  else:
    raise FileNotFoundError(f"no config.json in {src}: pass a model config (--config)")
  if param_dtype is not None:
    cfg = dataclasses.replace(cfg, param_dtype=hf_io.dtype_name(param_dtype))
  weights = hf_io.HFWeights(src)
  shapes = weights.shapes()
  read = weights.read
  kv_key = "transformer.visual.attn_pool.kv_proj.weight"
  if kv_key not in shapes and cfg.vision.width == cfg.llm.hidden:
    # The released Resampler uses nn.Identity (no key) when kv_dim == embed_dim.
    shapes[kv_key] = (cfg.llm.hidden, cfg.vision.width)
    eye = np.eye(cfg.llm.hidden, dtype=np.float32)
    read = lambda k, rows=None, _read=weights.read: eye if k == kv_key else _read(k, rows)
  hf_layout.check_tensors(shapes, cfg, side="hf", where=f"HF checkpoint {src}")
  weights.check_float(hf_layout.hf_key_map(cfg))
  dtype = hf_io.np_dtype(cfg.param_dtype)
  bar = _Progress(len(hf_layout.hf_key_map(cfg)), "hf -> orbax", progress)
  finite = _FiniteCheck()
  flat = {e.ours: _lazy_from_hf(e, cfg, read, dtype, bar, finite) for e in hf_layout.ENTRIES}
  tok = _tokenizer_for(src, tokenizer_file)
  try:
    with atomic_directory(dst, overwrite=overwrite) as tmp:
      _write_checkpoint(tmp, flat, cfg, tok)
      _copy_hf_extras(src, tmp, skip=hf_io.tokenizer_files(tok) if tok is not None else ())
  finally:
    bar.close()
    weights.close()
  return dst


# --------------------------------------------------------------------------------------------
# Back to HF.

def _source_dtype(ref) -> str:
  cfg_json = ref.hf_extra / "config.json"
  if cfg_json.exists():
    name = read_config_json(cfg_json).get("torch_dtype")
    if name in hf_io.DTYPE_ALIASES:
      return hf_io.dtype_name(name)
  return "bfloat16"


def convert_orbax_to_hf(src, dst, *, dtype: str | None = None, shard_size: int = DEFAULT_SHARD_SIZE,
                        fmt: str = "safetensors", overwrite: bool = False,
                        progress: bool = False) -> pathlib.Path:
  """Our checkpoint dir (or a training workdir: latest step) -> an HF checkpoint dir.

  `dtype` defaults to the dtype of the HF checkpoint this one was converted from (recorded in
  hf_extra/config.json), else bfloat16 as released. Shards hold at most `shard_size` bytes.
  """
  if not pathlib.Path(src).exists():
    raise FileNotFoundError(f"no checkpoint at {src}")
  check_disjoint(dst, src)
  ref = resolve_checkpoint(src)
  check_disjoint(dst, ref.root)
  cfg = read_model_config(ref)
  check_checkpoint(ref, cfg)
  dtype = hf_io.dtype_name(dtype) if dtype is not None else _source_dtype(ref)
  np_dt = hf_io.np_dtype(dtype)
  reader = ParamReader(ref.params_dir)
  key_map = hf_layout.hf_key_map(cfg)
  specs = [(k, e.hf_shape(cfg), np_dt) for k, (e, _) in key_map.items()]

  finite = _FiniteCheck()

  def produce(key: str):
    entry, layer = key_map[key]
    out = _hf_blocks(entry, cfg, reader, layer, np_dt)
    if isinstance(out, np.ndarray):
      return finite(key, out)
    return (finite(key, block) for block in out)

  base_json = ref.hf_extra / "config.json"
  base = read_config_json(base_json) if base_json.exists() else None
  bar = _Progress(len(specs), "orbax -> hf", progress)
  try:
    with atomic_directory(dst, overwrite=overwrite) as tmp:
      hf_io.write_shards(tmp, specs, produce, shard_size=shard_size, fmt=fmt, progress=bar)
      config = hf_layout.model_config_to_hf_config(cfg, dtype=dtype, base=base)
      (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
      if ref.hf_extra.is_dir():
        for f in sorted(ref.hf_extra.iterdir()):
          if f.is_file() and f.name != "config.json":
            shutil.copy2(f, tmp / f.name)
      tok_dir = ref.root / TOKENIZER_DIR
      if tok_dir.is_dir():
        for f in sorted(tok_dir.iterdir()):
          shutil.copy2(f, tmp / f.name)
  finally:
    bar.close()
  return pathlib.Path(dst)


# --------------------------------------------------------------------------------------------
# Stage-1 initialisation from separate sources.

class _FreshParams:
  """Parameters initialised as `QwenVL(cfg, rngs=nnx.Rngs(seed))` does (same initialisers and
  RNG stream; jit may differ from eager construction in the last ulp).

  The constructor runs under jit returning only the requested parameters, so XLA computes nothing
  else; parameters are computed in batches of at most `max_bytes` (one compile per batch), each
  batch when its first member is needed, and handed out once.
  """

  def __init__(self, cfg: ModelConfig, seed: int, names: Sequence[str], max_bytes: int = 1 << 30):
    self.cfg, self.seed = cfg, seed
    itemsize = hf_io.np_dtype(cfg.param_dtype).itemsize
    self.batches = hf_io.group_by_bytes(
        names, lambda name: int(np.prod(hf_layout.BY_OURS[name].ours_shape(cfg))) * itemsize, max_bytes)
    self.ready: dict[str, np.ndarray] = {}

  def take(self, name: str) -> np.ndarray:
    if name not in self.ready:
      batch = next(b for b in self.batches if name in b)
      self.ready.update(self._compute(batch))
    return self.ready.pop(name)

  def _compute(self, names):
    import jax
    from flax import nnx

    from qwenvl_jax.model.qwenvl import QwenVL

    def make():
      flat = flatten_dict(nnx.state(QwenVL(self.cfg, rngs=nnx.Rngs(self.seed))).to_pure_dict())
      return {n: flat[n] for n in names}

    return {k: np.asarray(v) for k, v in jax.jit(make)().items()}


def _lazy_fresh(entry: hf_layout.Entry, cfg: ModelConfig, fresh: _FreshParams, dtype,
                tick) -> LazyArray:
  def pieces(_chunk):
    block = fresh.take(entry.ours)
    tick(len(entry.hf_keys(cfg)))
    yield (), block

  return LazyArray(entry.ours_shape(cfg), dtype, pieces)


def _openclip_prefix(keys: Sequence[str]) -> str:
  for prefix in ("visual.", ""):
    if f"{prefix}conv1.weight" in keys:
      return prefix
  raise hf_layout.LayoutError("not an OpenCLIP vision state dict: no 'visual.conv1.weight' or "
                              "'conv1.weight' key")


def _openclip_pos_embed(table: np.ndarray, cfg: ModelConfig, key: str) -> np.ndarray:
  """OpenCLIP's [1 + g*g, W] table (class token first) -> [pos_grid**2, W], resized if needed."""
  from qwenvl_jax.model.resize import resize_grid_table

  n = table.shape[0]
  g = int(round((n - 1) ** 0.5))
  if g * g + 1 == n:
    table = table[1:]
  else:
    g = int(round(n ** 0.5))
    if g * g != n:
      raise hf_layout.LayoutError(f"{key}: {n} rows is neither g*g nor 1 + g*g")
  if g != cfg.vision.pos_grid:
    table = np.asarray(resize_grid_table(np.asarray(table, np.float32), cfg.vision.pos_grid))
  return table


def _check_llm_config(src: pathlib.Path, cfg: ModelConfig):
  """A Qwen-7B config.json, if present, must describe the same LLM as `cfg` (names the field)."""
  path = src / "config.json" if src.is_dir() else None
  if path is None or not path.exists():
    return
  try:
    theirs = hf_layout.hf_llm_config(read_config_json(path))
  except hf_layout.ConfigError as e:
    raise hf_layout.ConfigError(e.args[0] if str(e).startswith(str(path)) else f"{path}: {e}") from None
  for field in ("vocab_size", "hidden", "layers", "heads", "head_dim", "mlp_dim"):
    if getattr(theirs, field) != getattr(cfg.llm, field):
      raise hf_layout.ConfigError(
          f"config field 'model.llm.{field}': the given config says {getattr(cfg.llm, field)} but "
          f"{path} says {getattr(theirs, field)}")


def convert_stage1(dst, model_cfg: ModelConfig, *, openclip=None, qwen_llm=None, seed: int = 0,
                   param_dtype: str | None = None, tokenizer_file=None, overwrite: bool = False,
                   progress: bool = False) -> dict:
  """Stage-1 init: ViT from OpenCLIP, LLM from Qwen-7B, the rest fresh. Returns a report dict.

  OpenCLIP: keys under `visual.` (or bare); the class-token row of `positional_embedding` is
  dropped and the grid resized to `model.vision.pos_grid` with the PyTorch-bicubic kernel when it
  differs; `in_proj_weight` (contiguous q|k|v) is permuted into our layout. Dropped and reported:
  class_embedding, OpenCLIP's ln_post / proj (the CLIP head), and every non-`visual.` key.
  """
  cfg = model_cfg if param_dtype is None else dataclasses.replace(
      model_cfg, param_dtype=hf_io.dtype_name(param_dtype))
  cfg.validate()
  for given in (openclip, qwen_llm, tokenizer_file):
    if given is not None and not pathlib.Path(given).exists():
      raise FileNotFoundError(f"no such file or folder: {given}")
  check_disjoint(dst, openclip, qwen_llm, tokenizer_file)
  dtype = hf_io.np_dtype(cfg.param_dtype)
  report = {"from_openclip": [], "from_qwen_llm": [], "fresh": [], "dropped": []}
  flat: dict[str, LazyArray] = {}
  opened = []
  n_total = sum(len(e.hf_keys(cfg)) for e in hf_layout.ENTRIES)
  finite = _FiniteCheck()
  bar = _Progress(n_total, "stage-1 init", progress)
  try:
    if openclip is not None:
      weights = hf_io.HFWeights(openclip)
      opened.append(weights)
      shapes = weights.shapes()
      prefix = _openclip_prefix(list(shapes))
      entries = hf_layout.openclip_entries(prefix)
      pos_key = f"{prefix}positional_embedding"
      check_shapes = dict(shapes)
      if pos_key in check_shapes:
        check_shapes[pos_key] = (cfg.vision.pos_grid ** 2, check_shapes[pos_key][-1])
      hf_layout.check_tensors(check_shapes, cfg, side="hf", entries=entries,
                              where=f"OpenCLIP state dict {openclip}", ignore_unexpected=True)
      used = {k for e in entries for k in e.hf_keys(cfg)}
      weights.check_float(used)
      report["dropped"] += sorted(k for k in shapes if k not in used)

      def read_clip(key, rows=None, _w=weights, _pos=pos_key):
        arr = _w.read(key, rows)
        return _openclip_pos_embed(arr, cfg, key) if key == _pos else arr

      for e in entries:
        flat[e.ours] = _lazy_from_hf(e, cfg, read_clip, dtype, bar, finite)
        report["from_openclip"].append(e.ours)
    tok = pathlib.Path(tokenizer_file) if tokenizer_file is not None else None
    if qwen_llm is not None:
      src = pathlib.Path(qwen_llm)
      _check_llm_config(src, cfg)
      weights = hf_io.HFWeights(src)
      opened.append(weights)
      entries = hf_layout.part_entries("llm")
      shapes = weights.shapes()
      hf_layout.check_tensors(shapes, cfg, side="hf", entries=entries,
                              where=f"Qwen LLM checkpoint {src}", ignore_unexpected=True)
      used = {k for e in entries for k in e.hf_keys(cfg)}
      weights.check_float(used)
      report["dropped"] += sorted(k for k in shapes if k not in used
                                  and not k.endswith(hf_layout.IGNORED_HF_SUFFIXES))
      for e in entries:
        flat[e.ours] = _lazy_from_hf(e, cfg, weights.read, dtype, bar, finite)
        report["from_qwen_llm"].append(e.ours)
      tok = tok or hf_io.find_tokenizer_file(src)
    report["fresh"] = [e.ours for e in hf_layout.ENTRIES if e.ours not in flat]
    fresh = _FreshParams(cfg, seed, report["fresh"])
    for name in report["fresh"]:
      flat[name] = _lazy_fresh(hf_layout.BY_OURS[name], cfg, fresh, dtype, bar)
    flat = {e.ours: flat[e.ours] for e in hf_layout.ENTRIES}
    with atomic_directory(dst, overwrite=overwrite) as tmp:
      _write_checkpoint(tmp, flat, cfg, tok)
  finally:
    bar.close()
    for w in opened:
      w.close()
  return report
