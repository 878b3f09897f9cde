"""On-disk sources: JSONL (raw records, Qwen-VL fine-tuning conversations) and ArrayRecord.

Two record kinds travel through the data package:

  raw           the generator schema of `data.synth` (image + caption/objects/words/qa)
  conversation  the Qwen-VL fine-tuning format {"id", "conversations": [{"from": "user"|"assistant",
                "value": "Picture 1: <img>path</img>\\n..."}]}

JSONL keeps images as files next to it: paths are stored relative to the JSONL's directory and resolved
to absolute paths on reading (for conversations, inside the `<img>` tags too, and listed in "images").
ArrayRecord keeps them inside the records as encoded bytes (`encode_record`), so one file is the whole
dataset; `<img>` tags in packed conversations keep the original relative path as a label and "images"
holds the bytes in order of appearance.

Bad images are never fatal and never silent: `load_images` raises `CorruptImageError`, and
`decode_images` / `pack` skip such records and count them in a `SkipCounter` by reason.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import struct
from typing import Iterable, Iterator

from qwenvl_jax.data.preprocess import CorruptImageError, load_image, preprocess
from qwenvl_jax.data.skips import SkipCounter

_IMG_TAG = re.compile(r"<img>(.*?)</img>", re.DOTALL)
ROLES = ("user", "assistant")


class SourceError(ValueError):
  """A malformed source file; the message names the file and line."""


# ------------------------------------------------------------------------------------------------
# JSON lines.


def _read_json_records(path: pathlib.Path) -> Iterator[tuple[int, dict]]:
  """(line number, record) from a .jsonl file, or (index, record) from a .json list."""
  if path.suffix == ".json":
    try:
      data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
      raise SourceError(f"{path}: invalid JSON: {e}") from None
    except UnicodeDecodeError as e:
      raise SourceError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    if not isinstance(data, list):
      raise SourceError(f"{path}: expected a JSON list of records")
    yield from enumerate(data)
    return
  with path.open("rb") as f:  # decoded per line, so a bad byte is reported with its line number
    for n, raw in enumerate(f, 1):
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise SourceError(f"{path}:{n}: not UTF-8 text (byte {e.start} of the line: {e.reason})") from None
      if not line.strip():
        continue
      try:
        rec = json.loads(line)
      except json.JSONDecodeError as e:
        raise SourceError(f"{path}:{n}: invalid JSON: {e}") from None
      if not isinstance(rec, dict):
        raise SourceError(f"{path}:{n}: a record must be a JSON object")
      yield n, rec


def _resolve(base: pathlib.Path, p: str) -> str:
  return p if os.path.isabs(p) else str((base / p).resolve())


def _validate_conversation(rec: dict, where: str):
  conv = rec.get("conversations")
  if not isinstance(conv, list) or not conv:
    raise SourceError(f"{where}: 'conversations' must be a non-empty list")
  for m in conv:
    if not isinstance(m, dict) or m.get("from") not in ROLES or not isinstance(m.get("value"), str):
      raise SourceError(f"{where}: each message needs 'from' in {ROLES} and a string 'value', got {m!r}")


def read_conversations(path, resolve_images: bool = True) -> Iterator[dict]:
  """Fine-tuning records from .jsonl (one per line) or .json (a list); image paths made absolute."""
  path = pathlib.Path(path)
  base = path.parent
  for n, rec in _read_json_records(path):
    _validate_conversation(rec, f"{path}:{n}")
    rec.setdefault("id", f"{path.stem}-{n}")
    images = []
    if resolve_images:
      def sub(m):
        images.append(_resolve(base, m.group(1)))
        return f"<img>{images[-1]}</img>"
      rec["conversations"] = [{**m, "value": _IMG_TAG.sub(sub, m["value"])} for m in rec["conversations"]]
    else:
      images = [m for c in rec["conversations"] for m in _IMG_TAG.findall(c["value"])]
    rec["images"] = images
    yield rec


def read_raw(path) -> Iterator[dict]:
  """Raw records (schema in `data.synth`) from JSONL; "image" resolved to an absolute path."""
  path = pathlib.Path(path)
  for n, rec in _read_json_records(path):
    if "id" not in rec or ("image" not in rec and "text" not in rec):
      raise SourceError(f"{path}:{n}: a raw record needs 'id' and 'image' (or 'text': text only)")
    if rec.get("image") is not None:
      rec["image"] = _resolve(path.parent, rec["image"])
    yield rec


def read_jsonl(path) -> Iterator[dict]:
  """Either kind, told apart by the first record ("conversations" present or not)."""
  path = pathlib.Path(path)
  first = next((rec for _, rec in _read_json_records(path)), None)
  if first is None:
    return iter(())
  return read_conversations(path) if "conversations" in first else read_raw(path)


def _image_ext(data: bytes) -> str:
  if data.startswith(b"\x89PNG"):
    return ".png"
  if data.startswith(b"\xff\xd8"):
    return ".jpg"
  return ".bin"


def write_raw(records: Iterable[dict], path, image_dir: str = "images") -> int:
  """Writes raw records to `path` (JSONL); in-memory image bytes become files under `image_dir`
  (relative to the JSONL). Returns the number written."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  (path.parent / image_dir).mkdir(exist_ok=True)
  n = 0
  with path.open("w", encoding="utf-8") as f:
    for rec in records:
      img = rec["image"]
      if isinstance(img, (bytes, bytearray)):
        rel = f"{image_dir}/{rec['id']}{_image_ext(img)}"
        (path.parent / rel).write_bytes(img)
      else:
        rel = os.path.relpath(img, path.parent) if os.path.isabs(img) else img
      f.write(json.dumps({**rec, "image": rel}, ensure_ascii=False) + "\n")
      n += 1
  return n


def write_conversations(records: Iterable[dict], path) -> int:
  """Writes fine-tuning records (JSONL); `<img>` paths are written as given (make them relative)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  n = 0
  with path.open("w", encoding="utf-8") as f:
    for rec in records:
      _validate_conversation(rec, f"record {rec.get('id')}")
      out = {"id": rec["id"], "conversations": rec["conversations"]}
      f.write(json.dumps(out, ensure_ascii=False) + "\n")
      n += 1
  return n


# ------------------------------------------------------------------------------------------------
# Record <-> bytes, for ArrayRecord.

_MAGIC = b"QVR1"


def encode_record(rec: dict) -> bytes:
  """MAGIC | u32 header length | JSON header | blobs. Top-level bytes values (or lists of bytes) are
  stored raw after the header (no base64), so a 300 KB PNG costs 300 KB."""
  header, blobs = {}, []
  layout = {}
  for k, v in rec.items():
    if isinstance(v, (bytes, bytearray, memoryview)):
      layout[k] = len(v)
      blobs.append(bytes(v))
    elif isinstance(v, list) and v and all(isinstance(x, (bytes, bytearray, memoryview)) for x in v):
      layout[k] = [len(x) for x in v]
      blobs.extend(bytes(x) for x in v)
    else:
      header[k] = v
  header["_blobs"] = layout
  head = json.dumps(header, ensure_ascii=False).encode("utf-8")
  return b"".join([_MAGIC, struct.pack("<I", len(head)), head, *blobs])


def decode_record(data: bytes) -> dict:
  if data[:4] != _MAGIC:
    raise SourceError("not a qwenvl-jax record (bad magic)")
  (n,) = struct.unpack("<I", data[4:8])
  rec = json.loads(data[8:8 + n].decode("utf-8"))
  pos = 8 + n
  for k, lens in rec.pop("_blobs").items():
    if isinstance(lens, list):
      rec[k] = []
      for ln in lens:
        rec[k].append(data[pos:pos + ln])
        pos += ln
    else:
      rec[k] = data[pos:pos + lens]
      pos += lens
  return rec


# ------------------------------------------------------------------------------------------------
# ArrayRecord.


def write_array_record(records: Iterable[dict], path, group_size: int = 1) -> int:
  """Encodes and writes records; group_size 1 keeps random access cheap (grain reads by index)."""
  from array_record.python.array_record_module import ArrayRecordWriter

  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  writer = ArrayRecordWriter(str(path), f"group_size:{group_size}")
  n = 0
  try:
    for rec in records:
      writer.write(encode_record(rec))
      n += 1
  finally:
    writer.close()
  return n


class ArrayRecordSource:
  """Random-access decoded records (len, [i]) over one or more ArrayRecord files; picklable, so it can
  back a grain `MapDataset` directly."""

  def __init__(self, paths):
    from grain.sources import ArrayRecordDataSource

    paths = [str(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
    self._source = ArrayRecordDataSource(paths)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, i: int) -> dict:
    return decode_record(self._source[i])

  def __iter__(self) -> Iterator[dict]:
    return (self[i] for i in range(len(self)))


def _read_file(path: str, name: str) -> bytes:
  try:
    return pathlib.Path(path).read_bytes()
  except OSError as e:
    raise CorruptImageError(name, f"cannot read file: {e.strerror or e}") from None


def embed_images(rec: dict, base_dir=None, verify: bool = True) -> dict:
  """A JSONL record with its image files read into bytes: raw records' "image", conversations'
  "images" (in `<img>` order; the tags keep their paths as labels). Relative paths are read from
  `base_dir`. `verify` decodes each image once, so corrupt files are caught when packing rather than
  when training. Raises CorruptImageError naming the file."""
  def get(p):
    path = _resolve(pathlib.Path(base_dir), p) if base_dir is not None else p
    data = _read_file(path, path)
    if verify:
      load_image(data, name=path)
    return data
  if "conversations" in rec:
    return {**rec, "images": [get(p) for p in rec["images"]]}
  img = rec["image"]
  return {**rec, "image": bytes(img) if isinstance(img, (bytes, bytearray)) else get(img)}


def pack(src, dst, verify: bool = True, counter: SkipCounter | None = None, progress: bool = False,
         overwrite: bool = False) -> int:
  """JSONL (either kind) -> ArrayRecord with embedded images; records with bad images are skipped and
  counted in `counter`. Returns the number written.

  `dst` is written under a temporary name and renamed when every record is in, so a malformed line
  or a kill leaves no partial file; an existing `dst` is refused unless `overwrite`, and `dst` may
  never be `src` itself."""
  from qwenvl_jax.ckpt.atomic import atomic_file, check_disjoint

  src = pathlib.Path(src)
  if not src.is_file():
    raise FileNotFoundError(f"no such file: {src}")
  check_disjoint(dst, src, what="--out")
  counter = counter if counter is not None else SkipCounter()
  first = next((rec for _, rec in _read_json_records(src)), {})
  if "conversations" in first:  # keep the relative paths as labels; read the files from src's folder
    records, base = read_conversations(src, resolve_images=False), src.parent
  else:
    records, base = read_raw(src), None

  bar = None
  if progress:
    from tqdm import tqdm
    bar = tqdm(desc=f"pack {src.name}", unit="rec")

  def good():
    for rec in records:
      if bar is not None:
        bar.update()
      try:
        yield embed_images(rec, base_dir=base, verify=verify)
      except CorruptImageError as e:
        counter.add("corrupt_image", e.name, e.reason)
  try:
    with atomic_file(dst, overwrite=overwrite) as tmp:
      return write_array_record(good(), tmp)
  finally:
    if bar is not None:
      bar.close()  # ends the bar's line, so an error message starts on its own


# ------------------------------------------------------------------------------------------------
# Decoding with counted skips.


def image_sources(rec: dict) -> list:
  """The record's images as paths or bytes, in order: raw records have one, conversations a list."""
  if "conversations" in rec:
    return list(rec.get("images") or [])
  return [rec["image"]] if rec.get("image") is not None else []  # text-only records (pure_text)


def load_images(rec: dict):
  """Decoded PIL images of a record (raw or conversation); raises CorruptImageError naming the file."""
  out = []
  for i, src in enumerate(image_sources(rec)):
    name = src if isinstance(src, str) else f"{rec.get('id')}#image{i}"
    out.append(load_image(src, name=name))
  return out


def decode_images(records: Iterable[dict], counter: SkipCounter, size: int | None = None) -> Iterator[dict]:
  """Adds "pixels" (PIL images, or float32 arrays preprocessed to `size` when given) to each record;
  records with a missing/corrupt/truncated image are skipped and counted as "corrupt_image"."""
  for rec in records:
    try:
      imgs = load_images(rec)
    except CorruptImageError as e:
      counter.add("corrupt_image", e.name, e.reason)
      continue
    yield {**rec, "pixels": [preprocess(im, size) for im in imgs] if size else imgs}
