"""Predictions JSONL: append-only, crash-tolerant, readable back by id.

One JSON object per line, `{"question_id": ..., "answer": ...}` (captions: `{"image_id", "caption"}`;
likelihood tasks add `"losses"`). Each batch is flushed and fsync'ed, so a killed run loses at most the
batch in flight; a torn last line is cut off on the next open.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Iterable

ID_KEYS = ("question_id", "image_id", "questionId", "id")
OUTPUT_KEYS = ("answer", "caption", "prediction", "text")


def read_records(path) -> list[dict]:
  """All complete records; a torn (unterminated or unparsable) final line is ignored."""
  path = pathlib.Path(path)
  if not path.exists():
    return []
  records = []
  with open(path, encoding="utf-8") as f:
    lines = f.read().split("\n")
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      if i >= len(lines) - 2:  # the last written line: an interrupted write
        break
      raise ValueError(f"{path}: line {i + 1} is not JSON")
  return records


def repair(path) -> int:
  """Truncates a torn final line so appending continues cleanly; returns the number of good records."""
  path = pathlib.Path(path)
  if not path.exists():
    return 0
  data = path.read_bytes()
  good_end = 0
  n = 0
  pos = 0
  while pos < len(data):
    nl = data.find(b"\n", pos)
    if nl < 0:
      break  # unterminated: torn
    line = data[pos:nl]
    if line.strip():
      try:
        json.loads(line)
      except json.JSONDecodeError:
        break
      n += 1
    pos = good_end = nl + 1
  if good_end != len(data):
    with open(path, "r+b") as f:
      f.truncate(good_end)
  return n


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
