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


class PredictionsError(ValueError):
  """A predictions file that cannot be read as written by `Writer`; names the file and line."""


def _scan(path: pathlib.Path, data: bytes) -> tuple[list[dict], int | None, bool]:
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
    try:
      rec = json.loads(raw.decode("utf-8")) if raw.strip() else None
      if rec is not None and not isinstance(rec, dict):
        raise PredictionsError(f"{path}: line {n} is not a JSON object")
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
      if last:
        return records, pos, False
      what = "not UTF-8 text" if isinstance(e, UnicodeDecodeError) else "not JSON"
      raise PredictionsError(f"{path}: line {n} is {what}; only a torn last line is repaired "
                             "automatically: fix or remove that line") from None
    except PredictionsError:
      if last:
        return records, pos, False
      raise
    if rec is not None:
      records.append(rec)
    if last:
      return records, None, bool(raw.strip())
    pos = nl + 1
  return records, None, False


def read_records(path) -> list[dict]:
  """All complete records; a torn final line (unterminated, unreadable) is ignored. Raises
  PredictionsError (naming file and line) for any other unreadable line."""
  path = pathlib.Path(path)
  if not path.exists():
    return []
  return _scan(path, path.read_bytes())[0]


def repair(path) -> int:
  """Makes a file ready for appending after a kill: cuts off a torn final line (or ends a complete
  final record with its missing newline); returns the number of good records. Damage anywhere else
  raises PredictionsError and changes nothing."""
  path = pathlib.Path(path)
  if not path.exists():
    return 0
  records, torn_at, unterminated_ok = _scan(path, path.read_bytes())
  if torn_at is not None:
    with open(path, "r+b") as f:
      f.truncate(torn_at)
  elif unterminated_ok:
    with open(path, "ab") as f:
      f.write(b"\n")
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
