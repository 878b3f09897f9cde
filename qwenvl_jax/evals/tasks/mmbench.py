"""MMBench reader: the dev TSV as released (mmbench_dev_20230712.tsv), images inline as base64.

Columns: index, question, hint, A, B, C, D (unused options empty), answer, category, image, ...
CircularEval: the released dev TSV already holds each question's option rotations as rows of their own,
index + k * 1_000_000 for rotation k (Qwen-VL's mmbench_evaluation.py groups them by index % 1e6); those
rows are read as they are. A TSV without such rows (the original questions only) gets the rotations
made here the same way: rotation k shifts the options left by k, the answer letter moving with them.
`group` is index % 1_000_000; a question counts only if every rotation of it is right. The images are
decoded once into {tsv stem}_images/{index}.jpg beside the TSV (new files only; each written to a
temporary name and renamed).
"""

from __future__ import annotations

import base64
import csv
import os
import pathlib
import string
import sys

from qwenvl_jax.evals.tasks.base import Item

ROTATION_STRIDE = 1_000_000
_REQUIRED = ("index", "question", "A", "B", "image")


def _tsv(root: pathlib.Path, split: str) -> pathlib.Path:
  if root.is_file():
    return root
  hits = sorted(root.glob(f"mmbench*{split}*.tsv")) or sorted(root.glob(f"MMBench*{split}*.tsv"))
  if not hits:
    raise FileNotFoundError(f"MMBench: no mmbench_{split}_*.tsv (e.g. mmbench_dev_20230712.tsv) under {root}")
  return hits[0]


def _image_file(folder: pathlib.Path, index: str, b64: str) -> str:
  path = folder / f"{index}.jpg"
  if not path.is_file():
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(base64.b64decode(b64))
    os.replace(tmp, path)
  return os.fspath(path)


def _blank(value) -> bool:
  return value is None or value.strip() in ("", "nan", "NaN")


def read_mmbench(root: pathlib.Path, split: str) -> list[Item]:
  path = _tsv(root, split)
  csv.field_size_limit(sys.maxsize)  # the image column holds whole base64 files
  with open(path, encoding="utf-8", newline="") as f:
    rows = list(csv.DictReader(f, delimiter="\t"))
  if rows:
    missing = [c for c in _REQUIRED if c not in rows[0]]
    if missing:
      raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
  images = path.with_name(path.stem + "_images")
  rotated_in_file = any(int(row["index"]) >= ROTATION_STRIDE for row in rows)
  items = []
  for row in rows:
    index = int(row["index"])
    choices = [row[c] for c in "ABCD" if c in row and not _blank(row[c])]
    answer = None if _blank(row.get("answer")) else row["answer"].strip()
    gold = "ABCD".index(answer) if answer else None
    image = _image_file(images, str(index), row["image"])
    hint = "" if _blank(row.get("hint")) else row["hint"]
    if rotated_in_file:
      items.append({"id": index, "group": index % ROTATION_STRIDE, "image": image, "question": row["question"],
                    "hint": hint, "choices": choices, "answer": answer, "category": row.get("category")})
      continue
    for k in range(len(choices)):
      rotated = choices[k:] + choices[:k]
      items.append({"id": index + k * ROTATION_STRIDE, "group": index, "image": image,
                    "question": row["question"], "hint": hint, "choices": rotated,
                    "answer": None if gold is None else string.ascii_uppercase[(gold - k) % len(choices)],
                    "category": row.get("category")})
  return items
