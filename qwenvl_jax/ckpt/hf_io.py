"""Reading and writing HF-style weight files one tensor at a time.

safetensors are read with plain `pread`s of the header-declared byte ranges (no mmap, so resident
memory is exactly the tensor asked for) and written by a streaming writer that lays out the header
from known shapes first and then appends tensors in order. `pytorch_model-*.bin` shards go through
`torch.load(mmap=True)` (one shard open at a time) and `torch.save` (one shard in memory). bfloat16
is represented in numpy with `ml_dtypes.bfloat16`, so bits pass through untouched.
"""

from __future__ import annotations

import json
import math
import pathlib
import struct
from typing import Callable, Iterable, Mapping, Sequence, TypeVar

import ml_dtypes
import numpy as np

ST_DTYPES = {"F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
             "BF16": np.dtype(ml_dtypes.bfloat16), "F64": np.dtype(np.float64),
             "I64": np.dtype(np.int64), "I32": np.dtype(np.int32), "I16": np.dtype(np.int16),
             "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_)}
ST_NAMES = {v: k for k, v in ST_DTYPES.items()}
DTYPE_NAMES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16),
               "float16": np.dtype(np.float16)}
DTYPE_ALIASES = {"fp32": "float32", "f32": "float32", "float32": "float32", "bf16": "bfloat16",
                 "bfloat16": "bfloat16", "fp16": "float16", "f16": "float16", "float16": "float16"}

FLOAT_DTYPES = frozenset(DTYPE_NAMES.values()) | {np.dtype(np.float64)}

ST_INDEX = "model.safetensors.index.json"


class CheckpointFileError(ValueError):
  """A weight file that cannot be read (truncated, not the format, bad header); names the file."""
BIN_INDEX = "pytorch_model.bin.index.json"


def dtype_name(name: str) -> str:
  """'bf16' / 'bfloat16' / 'fp32' ... -> the canonical name ('bfloat16', 'float32', 'float16')."""
  if name not in DTYPE_ALIASES:
    raise ValueError(f"unknown dtype {name!r}; use one of {sorted(DTYPE_ALIASES)}")
  return DTYPE_ALIASES[name]


def np_dtype(name: str) -> np.dtype:
  return DTYPE_NAMES[dtype_name(name)]


# --------------------------------------------------------------------------------------------
# Readers.

class SafetensorsFile:
  """Header of one .safetensors file; `read(key)` reads exactly that tensor's bytes."""

  def __init__(self, path: pathlib.Path):
    self.path = pathlib.Path(path)
    size = self.path.stat().st_size
    with open(self.path, "rb") as f:
      head = f.read(8)
      if len(head) < 8:
        raise CheckpointFileError(f"{self.path}: not a safetensors file ({size} bytes, no header)")
      (n,) = struct.unpack("<Q", head)
      if n > size - 8:
        raise CheckpointFileError(f"{self.path}: truncated or not a safetensors file (header of {n} "
                                  f"bytes declared, file has {size})")
      try:
        header = json.loads(f.read(n))
      except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointFileError(f"{self.path}: unreadable safetensors header ({e})") from None
    if not isinstance(header, dict):
      raise CheckpointFileError(f"{self.path}: the safetensors header is not a JSON object")
    self.data_start = 8 + n
    self.metadata = header.pop("__metadata__", None) or {}
    self.entries = header
    for key, e in header.items():
      try:
        start, end = e["data_offsets"]
        want = math.prod(e["shape"]) * ST_DTYPES[e["dtype"]].itemsize
      except (KeyError, TypeError, ValueError) as err:
        raise CheckpointFileError(f"{self.path}: tensor {key}: malformed header entry ({err!r})") from None
      if end - start != want or start < 0:
        raise CheckpointFileError(f"{self.path}: tensor {key}: byte range {start}..{end} does not fit "
                                  f"its shape {e['shape']} {e['dtype']}")
      if self.data_start + end > size:
        raise CheckpointFileError(f"{self.path}: truncated: tensor {key} ends at byte "
                                  f"{self.data_start + end}, the file has {size}")

  def keys(self) -> list[str]:
    return list(self.entries)

  def shape(self, key: str) -> tuple[int, ...]:
    return tuple(self.entries[key]["shape"])

  def dtype(self, key: str) -> np.dtype:
    return ST_DTYPES[self.entries[key]["dtype"]]

  def read(self, key: str, rows: tuple[int, int] | None = None) -> np.ndarray:
    """The tensor, or rows [r0, r1) of its first axis (contiguous bytes in the file)."""
    e = self.entries[key]
    start, end = e["data_offsets"]
    shape = list(e["shape"])
    if rows is not None:
      row_bytes = (end - start) // max(shape[0], 1)
      start, end = start + rows[0] * row_bytes, start + rows[1] * row_bytes
      shape[0] = rows[1] - rows[0]
    buf = bytearray(end - start)
    with open(self.path, "rb") as f:
      f.seek(self.data_start + start)
      got = f.readinto(buf)
    if got != end - start:
      raise IOError(f"{self.path}: truncated tensor {key} ({got} of {end - start} bytes)")
    return np.frombuffer(buf, dtype=ST_DTYPES[e["dtype"]]).reshape(shape)


def torch_to_numpy(t) -> np.ndarray:
  """A CPU torch tensor -> numpy (copy), bfloat16 kept bit-exact via ml_dtypes."""
  import torch

  t = t.detach().cpu().contiguous()
  if t.dtype == torch.bfloat16:
    return t.view(torch.int16).numpy().copy().view(ml_dtypes.bfloat16)
  return t.numpy().copy()


def numpy_to_torch(a: np.ndarray):
  import torch

  a = np.ascontiguousarray(a)
  if a.dtype == np.dtype(ml_dtypes.bfloat16):
    return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
  return torch.from_numpy(a.copy())


class BinFile:
  """One pytorch_model*.bin shard, memory-mapped (torch >= 2.1 zip format) while open."""

  def __init__(self, path: pathlib.Path):
    import torch

    self.path = pathlib.Path(path)
    try:
      self._sd = torch.load(self.path, map_location="cpu", mmap=True, weights_only=True)
    except OSError:
      raise
    except Exception as e:  # torch reports a bad zip / pickle with several exception types
      first = str(e).strip().splitlines()[0] if str(e).strip() else ""
      raise CheckpointFileError(f"{self.path}: cannot read PyTorch weights ({type(e).__name__}: "
                                f"{first})") from None
    if not isinstance(self._sd, dict):
      raise CheckpointFileError(f"{self.path}: holds a {type(self._sd).__name__}, not a state dict")

  def keys(self) -> list[str]:
    return list(self._sd)

  def shape(self, key: str) -> tuple[int, ...]:
    return tuple(self._sd[key].shape)

  def dtype(self, key: str) -> np.dtype:
    import torch

    t = self._sd[key]
    return np.dtype(ml_dtypes.bfloat16) if t.dtype == torch.bfloat16 else np.dtype(
        torch.empty((), dtype=t.dtype).numpy().dtype)

  def read(self, key: str, rows: tuple[int, int] | None = None) -> np.ndarray:
    t = self._sd[key]
    return torch_to_numpy(t if rows is None else t[rows[0]:rows[1]])

  def close(self):
    self._sd = None


class HFWeights:
  """All weight files of an HF checkpoint directory (or one file): key -> file, read on demand.

  safetensors headers are all kept (small); at most one .bin shard is open (mapped) at a time.
  """

  def __init__(self, src):
    src = pathlib.Path(src)
    self.root = src if src.is_dir() else src.parent
    self.files = self._discover(src)
    self._key_file: dict[str, pathlib.Path] = {}
    self._st: dict[pathlib.Path, SafetensorsFile] = {}
    self._bin: tuple[pathlib.Path, BinFile] | None = None
    for f in self.files:
      for k in self._open(f).keys():
        if k in self._key_file:
          raise ValueError(f"key {k} appears in both {self._key_file[k].name} and {f.name}")
        self._key_file[k] = f

  @staticmethod
  def _discover(src: pathlib.Path) -> list[pathlib.Path]:
    if src.is_file():
      return [src]
    if not src.is_dir():
      raise FileNotFoundError(f"no checkpoint at {src}")
    for index_name in (ST_INDEX, BIN_INDEX):
      index = src / index_name
      if index.exists():
        try:
          weight_map = json.loads(index.read_text())["weight_map"]
          files = sorted(set(weight_map.values()))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
          raise CheckpointFileError(f"{index}: not a weight index ({type(e).__name__}: {e})") from None
        missing = [f for f in files if not (src / f).exists()]
        if missing:
          raise FileNotFoundError(f"{index} lists shard(s) that do not exist: {missing}")
        return [src / f for f in files]
    files = sorted(src.glob("*.safetensors")) or sorted(src.glob("pytorch_model*.bin")) or sorted(
        list(src.glob("*.bin")) + list(src.glob("*.pt")) + list(src.glob("*.pth")))
    if not files:
      raise FileNotFoundError(f"no *.safetensors or pytorch_model*.bin weights in {src}")
    return files

  def _open(self, f: pathlib.Path):
    if f.suffix == ".safetensors":
      if f not in self._st:
        self._st[f] = SafetensorsFile(f)
      return self._st[f]
    if self._bin is None or self._bin[0] != f:
      if self._bin is not None:
        self._bin[1].close()
      self._bin = (f, BinFile(f))
    return self._bin[1]

  def keys(self) -> list[str]:
    return list(self._key_file)

  def __contains__(self, key: str) -> bool:
    return key in self._key_file

  def shape(self, key: str) -> tuple[int, ...]:
    return self._open(self._key_file[key]).shape(key)

  def shapes(self) -> dict[str, tuple[int, ...]]:
    """Shapes of every key, reading each file's metadata once (file order)."""
    out = {}
    for f in self.files:
      h = self._open(f)
      for k in h.keys():
        out[k] = h.shape(k)
    return out

  def dtype(self, key: str) -> np.dtype:
    return self._open(self._key_file[key]).dtype(key)

  def check_float(self, keys: Iterable[str]):
    """Refuses integer / bool tensors among `keys`: casting them to float would give nonsense."""
    bad = [(k, self.dtype(k)) for k in keys if k in self._key_file and self.dtype(k) not in FLOAT_DTYPES]
    if bad:
      k, dt = bad[0]
      more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
      raise CheckpointFileError(f"tensor {k} in {self._key_file[k]} has dtype {dt}, expected a float "
                                f"type{more}")

  def read(self, key: str, rows: tuple[int, int] | None = None) -> np.ndarray:
    """The tensor `key`, or only rows [r0, r1) of its first axis."""
    if key not in self._key_file:
      raise KeyError(f"tensor {key} is not in the checkpoint at {self.root}")
    return self._open(self._key_file[key]).read(key, rows)

  def close(self):
    if self._bin is not None:
      self._bin[1].close()
      self._bin = None


# --------------------------------------------------------------------------------------------
# Writers.

class SafetensorsWriter:
  """Writes a .safetensors file whose tensors (name, shape, dtype) are declared up front.

  Tensors must then be written in the declared order; only one is in memory at a time.
  """

  def __init__(self, path, specs: Sequence[tuple[str, tuple[int, ...], np.dtype]],
               metadata: Mapping[str, str] | None = None):
    header, offset = {}, 0
    if metadata:
      header["__metadata__"] = dict(metadata)
    for name, shape, dtype in specs:
      n = math.prod(shape) * np.dtype(dtype).itemsize
      header[name] = {"dtype": ST_NAMES[np.dtype(dtype)], "shape": list(shape),
                      "data_offsets": [offset, offset + n]}
      offset += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the format pads the header to 8-byte alignment
    self._specs = list(specs)
    self._next = 0
    self._f = open(path, "wb")
    self._f.write(struct.pack("<Q", len(blob)) + blob)

  def write(self, name: str, data: np.ndarray | Iterable[np.ndarray]):
    """The next declared tensor: an array, or an iterable of row blocks (first-axis pieces)."""
    want_name, shape, dtype = self._specs[self._next]
    blocks = [data] if isinstance(data, np.ndarray) else data
    rows = 0
    for block in blocks:
      if (name != want_name or tuple(block.shape[1:]) != tuple(shape[1:]) or block.ndim != len(shape)
          or block.dtype != np.dtype(dtype)):
        raise ValueError(f"safetensors writer expected {want_name} {tuple(shape)} {np.dtype(dtype)}, "
                         f"got {name} block {tuple(block.shape)} {block.dtype}")
      self._f.write(memoryview(np.ascontiguousarray(block).view(np.uint8).reshape(-1)))
      rows += block.shape[0]
    if rows != shape[0]:
      raise ValueError(f"safetensors writer: {name} got {rows} rows, declared {shape[0]}")
    self._next += 1

  def close(self):
    f, self._f = self._f, None
    if f is not None:
      f.close()
    if self._next != len(self._specs):
      raise ValueError(f"safetensors writer closed after {self._next} of {len(self._specs)} tensors")


T = TypeVar("T")


def group_by_bytes(items: Sequence[T], nbytes: Callable[[T], int], max_bytes: int) -> list[list[T]]:
  """Greedy in-order groups of at most `max_bytes` (an item larger than that gets a group of its own)."""
  groups, cur, cur_bytes = [], [], 0
  for item in items:
    n = nbytes(item)
    if cur and cur_bytes + n > max_bytes:
      groups.append(cur)
      cur, cur_bytes = [], 0
    cur.append(item)
    cur_bytes += n
  if cur:
    groups.append(cur)
  return groups


def plan_shards(specs: Sequence[tuple[str, tuple[int, ...], np.dtype]], shard_size: int,
                fmt: str) -> list[tuple[str, list]]:
  """Greedy in-order split into shards of at most `shard_size` bytes (a larger tensor gets its own).

  File names follow transformers: model-00001-of-0000N.safetensors / pytorch_model-...bin.
  """
  shards = group_by_bytes(specs, lambda spec: math.prod(spec[1]) * np.dtype(spec[2]).itemsize,
                          shard_size)
  stem, ext = ("model", "safetensors") if fmt == "safetensors" else ("pytorch_model", "bin")
  total = len(shards)
  return [(f"{stem}-{i + 1:05d}-of-{total:05d}.{ext}", s) for i, s in enumerate(shards)]


def write_shards(dst, specs: Sequence[tuple[str, tuple[int, ...], np.dtype]],
                 produce: Callable[[str], np.ndarray], *, shard_size: int, fmt: str = "safetensors",
                 progress: Callable[[int], None] | None = None) -> dict:
  """Writes all tensors (`produce(name)` called once per name, in order) plus the index JSON.

  `produce` returns an array or an iterable of row blocks. safetensors: one tensor (or block) in
  memory at a time. bin: one shard (torch.save needs the dict). Returns the index dict.
  """
  if fmt not in ("safetensors", "bin"):
    raise ValueError(f"unknown weight format {fmt!r}: use 'safetensors' or 'bin'")
  dst = pathlib.Path(dst)
  weight_map, total = {}, 0
  for filename, shard in plan_shards(specs, shard_size, fmt):
    if fmt == "safetensors":
      writer = SafetensorsWriter(dst / filename, shard, metadata={"format": "pt"})
      for name, shape, dtype in shard:
        writer.write(name, produce(name))
        total += math.prod(shape) * np.dtype(dtype).itemsize
        weight_map[name] = filename
        if progress:
          progress(1)
      writer.close()
    else:
      import torch

      tensors = {}
      for name, shape, dtype in shard:
        arr = produce(name)
        if not isinstance(arr, np.ndarray):
          arr = np.concatenate(list(arr), axis=0)
        if tuple(arr.shape) != tuple(shape) or arr.dtype != np.dtype(dtype):
          raise ValueError(f"{name}: produced {arr.shape} {arr.dtype}, declared {shape} {dtype}")
        tensors[name] = numpy_to_torch(arr)
        total += arr.nbytes
        weight_map[name] = filename
        if progress:
          progress(1)
      torch.save(tensors, dst / filename)
      del tensors
  index = {"metadata": {"total_size": total}, "weight_map": weight_map}
  index_name = ST_INDEX if fmt == "safetensors" else BIN_INDEX
  (dst / index_name).write_text(json.dumps(index, indent=2) + "\n")
  return index


# --------------------------------------------------------------------------------------------
# Non-weight files.

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".msgpack", ".h5", ".ckpt")
TOKENIZER_SIDECARS = (".specials.json", ".vocab")


def find_tokenizer_file(src) -> pathlib.Path | None:
  """A `*.tiktoken` or SentencePiece `*.model` in a checkpoint dir (qwen.tiktoken preferred)."""
  src = pathlib.Path(src)
  if not src.is_dir():
    return None
  found = sorted(src.glob("*.tiktoken")) + sorted(src.glob("*.model"))
  preferred = [p for p in found if p.name in ("qwen.tiktoken", "tokenizer.model")]
  return (preferred or found or [None])[0]


def tokenizer_files(path) -> list[pathlib.Path]:
  """The tokenizer file and its sidecars (SentencePiece `<stem>.specials.json`, `<stem>.vocab`)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"tokenizer file {path} does not exist")
  stem = path.with_suffix("")
  return [path] + [p for s in TOKENIZER_SIDECARS if (p := stem.with_name(stem.name + s)).is_file()]


def aux_files(src, skip: Iterable[pathlib.Path] = (), max_bytes: int = 16 << 20) -> list[pathlib.Path]:
  """Small non-weight files of an HF dir worth carrying along (remote code, generation config).

  config.json and the weight index are regenerated, and tokenizer files travel separately.
  """
  src = pathlib.Path(src)
  if not src.is_dir():
    return []
  skip = {pathlib.Path(p).resolve() for p in skip}
  out = []
  for p in sorted(src.iterdir()):
    if (not p.is_file() or p.suffix in WEIGHT_SUFFIXES or p.name in ("config.json", ST_INDEX, BIN_INDEX)
        or p.resolve() in skip or p.name.startswith(".") or p.stat().st_size > max_bytes):
      continue
    out.append(p)
  return out
