"""The project's own synthetic held-out sets: JSONL, one record per line, image paths relative to the
JSONL's folder.

Flat schema (one evaluation item per line):
  synth_grounding  {"question_id", "image", "width", "height", "expression", "box": [x1, y1, x2, y2]}
                   box in pixels, xyxy
  synth_ocr        {"question_id", "image", "question", "answers": [str, ...]}
  synth_caption    {"image_id", "image", "captions": [str, ...]}
  synth_vqa        {"question_id", "image", "question", "answers": [str, ...]}
Raw records as written by `qwenvl-jax data synth` (`qwenvl_jax.data.synth` schema: id, image, width,
height, caption, objects[{phrase, box}], qa[{question, answer}]) are read too and expanded: one
grounding item per object ("{id}/obj{i}"), one OCR/VQA item per qa pair ("{id}/qa{i}"), one caption
item per record with a caption.

Data path: a .jsonl file, or a folder holding {split}.jsonl (test.jsonl; train.jsonl for few-shot) or,
for raw exports, shapes.jsonl (grounding, caption, vqa) / text.jsonl or docs.jsonl (ocr).
Metrics: grounding accuracy; exact match for OCR and VQA (single answers: VQA accuracy needs ten), with
ANLS alongside for OCR; CIDEr for captions.
"""

from __future__ import annotations

import os
import pathlib

from qwenvl_jax.evals.tasks.base import Item, load_jsonl

_RAW_FILES = {"grounding": ("shapes.jsonl",), "caption": ("shapes.jsonl",), "vqa": ("shapes.jsonl",),
              "ocr": ("text.jsonl", "docs.jsonl")}


def _jsonl_path(root: pathlib.Path, split: str, kind: str) -> pathlib.Path:
  if root.is_file():
    return root
  for name in (f"{split}.jsonl", f"synth_{kind}_{split}.jsonl") + (_RAW_FILES[kind] if split == "test" else ()):
    if (root / name).is_file():
      return root / name
  raise FileNotFoundError(f"no {split}.jsonl under {root}")


def object_item_id(record_id: str, index: int) -> str:
  """The grounding item id of a raw record's `index`-th object."""
  return f"{record_id}/obj{index}"


def parse_object_item_id(item_id: str) -> tuple[str, int]:
  """`object_item_id`'s inverse: -> (record id, object index)."""
  record_id, sep, index = item_id.rpartition("/obj")
  if not sep or not index.isdigit():
    raise ValueError(f"{item_id!r} is not a '<record id>/obj<k>' grounding item id")
  return record_id, int(index)


def _expand(rec: dict, kind: str, base: pathlib.Path) -> list[Item]:
  image = os.fspath(base / rec["image"])
  if "objects" in rec or "qa" in rec:  # a raw synth record
    rid = rec["id"]
    if kind == "grounding":
      return [{"id": object_item_id(rid, i), "image": image, "expression": o["phrase"], "box": list(o["box"]),
               "width": rec["width"], "height": rec["height"]} for i, o in enumerate(rec.get("objects") or [])]
    if kind == "caption":
      return [{"id": rid, "image": image, "captions": [rec["caption"]]}] if rec.get("caption") else []
    return [{"id": f"{rid}/qa{i}", "image": image, "question": qa["question"], "answers": [qa["answer"]],
             "shot_answer": qa["answer"]} for i, qa in enumerate(rec.get("qa") or [])]
  if kind == "grounding":
    return [{"id": rec["question_id"], "image": image, "expression": rec["expression"], "box": list(rec["box"]),
             "width": rec["width"], "height": rec["height"]}]
  if kind == "caption":
    return [{"id": rec["image_id"], "image": image, "captions": list(rec["captions"])}]
  answers = list(rec["answers"])
  return [{"id": rec["question_id"], "image": image, "question": rec["question"], "answers": answers,
           "shot_answer": answers[0] if answers else None}]


def reader(kind: str):
  def read(root: pathlib.Path, split: str) -> list[Item]:
    path = _jsonl_path(root, split, kind)
    items = []
    for rec in load_jsonl(path):
      items += _expand(rec, kind, path.parent)
    return items
  read.__name__ = f"read_synth_{kind}"
  return read
