"""Why grounding answers miss: synth_grounding predictions broken down against the scene records.

  python -m experiments.grounding_errors --records DATA/heldout/shapes.jsonl \
      --predictions EVAL/synth_grounding_test_0shot.predictions.jsonl [--out errors.json]

Per asked object: `hit` (IoU >= 0.5 after the eval's own parsing and scaling, so the overall rate equals
the eval's grounding accuracy), `chose` (the predicted box's centre is nearer the asked object's centre
than any other object's: the model picked the right one) and, when it chose right, the absolute error
of each coordinate in pixels. Grouped by the number of objects in the scene and by shape category:
single-object scenes measure how precisely boxes are written, the others also how well the phrase
picks the object. A chat answer names the object before its box (`<ref>phrase</ref><box>..`): `named_asked`
says whether that name is the asked phrase (a wrong name is followed by the named object's box).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

from qwenvl_jax.evals.metrics.grounding import box_iou, parse_box, to_pixels
from qwenvl_jax.evals.tasks.base import load_jsonl
from qwenvl_jax.evals.tasks.synthetic import parse_object_item_id


def _centre(box) -> np.ndarray:
  return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])


def _name(answer: str) -> str | None:
  """The text an answer puts before its box (the `<ref>` phrase of a chat answer), tags removed; None
  when there is none (a pre-training-prompt answer is the box alone)."""
  head = answer.split("<box>")[0] if "<box>" in answer else answer.split("(")[0]
  for tag in ("<ref>", "</ref>"):
    head = head.replace(tag, "")
  return head.strip() or None


def item_errors(record: dict, index: int, answer: str) -> dict:
  """hit / chose / per-coordinate error (x1, y1, x2, y2 px) of one answer about object `index`."""
  objects = record["objects"]
  box = to_pixels(parse_box(answer), record["width"], record["height"])
  name = _name(answer)
  asked = objects[index]["box"]
  distances = [np.linalg.norm(_centre(box) - _centre(o["box"])) for o in objects]
  return {"hit": box_iou(box, asked) >= 0.5, "chose": int(np.argmin(distances)) == index,
          "error_px": np.abs(np.subtract(box, asked)).tolist(),
          "centre_error_px": float(distances[index]), "n_objects": len(objects),
          "named_asked": None if name is None else name.lower() == str(objects[index].get("phrase", "")).lower(),
          "category": objects[index].get("category", "?")}


def _summary(rows: list[dict]) -> dict:
  chosen = [r for r in rows if r["chose"]]
  err = np.array([r["error_px"] for r in chosen]).reshape(-1, 4)
  return {"n": len(rows), "accuracy": float(np.mean([r["hit"] for r in rows])),
          "chose_asked_object": float(np.mean([r["chose"] for r in rows])),
          "accuracy_when_chosen": float(np.mean([r["hit"] for r in chosen])) if chosen else None,
          "median_error_px_x1y1x2y2": np.median(err, 0).round(1).tolist() if len(err) else None,
          "median_centre_error_px": float(np.median([r["centre_error_px"] for r in rows])),
          **({"named_asked_phrase": float(np.mean([r["named_asked"] for r in named])), "named": len(named)}
             if (named := [r for r in rows if r["named_asked"] is not None]) else {})}


def breakdown(records: list[dict], predictions: list[dict]) -> dict:
  """Overall, per number of objects and per category (see the module docstring)."""
  by_id = {r["id"]: r for r in records}
  rows = []
  for p in predictions:
    record_id, index = parse_object_item_id(p["question_id"])
    if record_id not in by_id:
      raise KeyError(f"prediction {p['question_id']!r}: record {record_id!r} is not in the records file")
    rows.append(item_errors(by_id[record_id], index, p["answer"]))
  if not rows:
    raise ValueError("no predictions to break down")
  group = lambda key: {str(k): _summary([r for r in rows if r[key] == k])
                       for k in sorted({r[key] for r in rows})}
  return {"all": _summary(rows), "by_objects_in_scene": group("n_objects"), "by_category": group("category")}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--records", required=True, help="the raw shapes records the eval read (shapes.jsonl)")
  p.add_argument("--predictions", required=True, help="synth_grounding_*.predictions.jsonl")
  p.add_argument("--out", help="write the breakdown here as JSON")
  args = p.parse_args(argv)
  result = breakdown(load_jsonl(pathlib.Path(args.records)), load_jsonl(pathlib.Path(args.predictions)))
  text = json.dumps(result, indent=2)
  if args.out:
    pathlib.Path(args.out).write_text(text + "\n")
  print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
