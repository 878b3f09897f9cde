"""Predictions JSONL: append-only, crash-tolerant, readable back by id.

One JSON object per line, `{"question_id": ..., "answer": ...}` (captions: `{"image_id", "caption"}`;
likelihood tasks add `"losses"`). Each batch is flushed and fsync'ed, so a killed run loses at most the
batch in flight; a torn last line is cut off on the next open. Any other unreadable line is refused
(`PredictionsError`, naming the file and line) and nothing is deleted.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Iterable

ID_KEYS = ("question_id", "image_id", "questionId", "id")
OUTPUT_KEYS = ("answer", "caption", "prediction", "text")


_JSON_SPACE = b" \t\r"  # blank lines hold only JSON whitespace (bytes.strip() would also drop \x0b)


class PredictionsError(ValueError):
  """A predictions file that cannot be read as written by `Writer`; names the file and line."""


def _scan(path, data: bytes) -> tuple[list[dict], int | None, bool]:
  """(records, torn_at, unterminated_ok) for a predictions file's bytes.

  A kill during `Writer.write` leaves a prefix of the last batch, so a torn line is always the final
  one and has no newline: `torn_at` is its byte offset (None if there is none). An unterminated
  final line that is a whole record is kept (`unterminated_ok`: only its newline is missing). Any
  other unreadable line is damage, not a torn write: raises PredictionsError naming the line.
  """
  records, pos, n = [], 0, 0
  while pos < len(data):
    n += 1
    nl = data.find(b"\n", pos)
    last = nl < 0
    raw = data[pos:] if last else data[pos:nl]
    rec, problem = None, None
    try:
      rec = json.loads(raw.decode("utf-8")) if raw.strip(_JSON_SPACE) else None
      if rec is not None and not isinstance(rec, dict):
        problem = "not a JSON object"
    except UnicodeDecodeError:
      problem = "not UTF-8 text"
    except (json.JSONDecodeError, RecursionError):
      problem = "not JSON"
    if problem:
      if last:
        return records, pos, False
      raise PredictionsError(f"{path}: line {n} is {problem}; only a torn last line is repaired "
                             "automatically: fix or remove that line")
    if rec is not None:
      records.append(rec)
    if last:
      return records, None, bool(raw.strip(_JSON_SPACE))
    pos = nl + 1
  return records, None, False


def parse_records(data: bytes, name="predictions") -> list[dict]:
  """`read_records` on bytes already in memory; `name` goes into error messages."""
  return _scan(name, data)[0]


def repaired_bytes(data: bytes, name="predictions") -> bytes:
  """What `repair` leaves of a file holding `data`: a torn final line cut off, or a complete final
  record given its missing newline. Raises PredictionsError for damage anywhere else."""
  _, torn_at, unterminated_ok = _scan(name, data)
  if torn_at is not None:
    return data[:torn_at]
  return data + b"\n" if unterminated_ok else data


def read_records(path) -> list[dict]:
  """All complete records; a torn final line (unterminated, unreadable) is ignored. Raises
  PredictionsError (naming file and line) for any other unreadable line."""
  path = pathlib.Path(path)
  if not path.exists():
    return []
  return parse_records(path.read_bytes(), path)


def repair(path) -> int:
  """Makes a file ready for appending after a kill (see `repaired_bytes`); returns the number of
  good records. Damage anywhere but the torn last line raises PredictionsError and changes nothing."""
  path = pathlib.Path(path)
  if not path.exists():
    return 0
  data = path.read_bytes()
  records = parse_records(data, path)
  fixed = repaired_bytes(data, path)
  if len(fixed) < len(data):
    with open(path, "r+b") as f:
      f.truncate(len(fixed))
  elif len(fixed) > len(data):
    with open(path, "ab") as f:
      f.write(fixed[len(data):])
  return len(records)


def record_id(rec: dict, preferred: str):
  for key in (preferred,) + ID_KEYS:
    if key in rec:
      return rec[key]
  raise KeyError(f"prediction record has no id field ({preferred}): {rec}")


def record_output(rec: dict, preferred: str) -> str:
  for key in (preferred,) + OUTPUT_KEYS:
    if key in rec:
      return str(rec[key])
  raise KeyError(f"prediction record has no output field ({preferred}): {rec}")


def outputs_by_id(records: Iterable[dict], id_key: str, output_key: str) -> dict[str, str]:
  """id (as str) -> output; a later record for the same id wins."""
  return {str(record_id(r, id_key)): record_output(r, output_key) for r in records}


class Writer:
  """Appends batches of records durably."""

  def __init__(self, path):
    self.path = pathlib.Path(path)
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self._f = open(self.path, "a", encoding="utf-8")

  def write(self, records: list[dict]):
    self._f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    self._f.flush()
    os.fsync(self._f.fileno())

  def close(self):
    self._f.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def write_json_atomic(path, obj):
  path = pathlib.Path(path)
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
  os.replace(tmp, path)
