"""Referring expression readers: RefCOCO / RefCOCO+ / RefCOCOg (refer toolkit files), GRIT refexp.

Layouts (under the task's data path):
  refcoco*  refs(unc).p (RefCOCO, RefCOCO+), refs(umd).p or refs(google).p (RefCOCOg), or the same list
            as refs.json; instances.json (COCO: images with width/height, annotations with xywh bbox);
            images in images/, train2014/, or where refer lays them (images/mscoco/images/train2014/
            in this folder or beside it). One item per sentence, id "{ref_id}/{sent_id}".
            Or Qwen-VL's converted {task}_{split}.jsonl (qwenvl_jsonl.py; ids are line numbers).
  grit      samples/{split}/refexp.json ([{input: {example_id, image_id, task_query},
            output: {bboxes: [[x1,y1,x2,y2]]}}], no output on test), images/{image_id}
Boxes become xyxy pixels (COCO xywh -> x, y, x+w, y+h).
The .p files are Python pickles: only load copies from the dataset's own distribution.
"""

from __future__ import annotations

import pathlib
import pickle

from qwenvl_jax.evals.tasks import qwenvl_jsonl
from qwenvl_jax.evals.tasks.base import Item, find_file, image_path, image_size, load_json

# refer's data root holds refcoco/ (this folder) beside images/mscoco/images/train2014/.
_COCO_DIRS = ("images", "train2014", "images/mscoco/images/train2014", "../images/mscoco/images/train2014", "")


def _load_refs(root: pathlib.Path) -> list[dict]:
  for name in ("refs.json", "refs(unc).p", "refs(umd).p", "refs(google).p"):
    path = root / name
    if path.is_file():
      if path.suffix == ".json":
        return load_json(path)
      with open(path, "rb") as f:
        return pickle.load(f)  # noqa: S301 -- the refer toolkit's published format
  raise FileNotFoundError(f"no refs.json / refs(unc).p / refs(umd).p under {root}")


def read_refcoco(root: pathlib.Path, split: str) -> list[Item]:
  try:
    refs = _load_refs(root)
  except FileNotFoundError as e:
    converted = qwenvl_jsonl.grounding_file(root, split)
    if converted is None:
      raise FileNotFoundError(f"{e}; or Qwen-VL's converted {{refcoco,refcoco+,refcocog}}_{split}.jsonl") from None
    return qwenvl_jsonl.read_grounding(converted, root)
  inst = load_json(find_file(root, "instances.json"))
  images = {im["id"]: im for im in inst["images"]}
  anns = {a["id"]: a for a in inst["annotations"]}
  items = []
  for ref in refs:
    if ref["split"] != split:
      continue
    img = images[ref["image_id"]]
    x, y, w, h = anns[ref["ann_id"]]["bbox"]
    path = image_path(root, img["file_name"], *_COCO_DIRS)
    for sent in ref["sentences"]:
      items.append({"id": f"{ref['ref_id']}/{sent['sent_id']}", "image": path, "expression": sent["sent"],
                    "box": [x, y, x + w, y + h], "width": img["width"], "height": img["height"]})
  return items


def read_grit(root: pathlib.Path, split: str) -> list[Item]:
  path = find_file(root, f"samples/{split}/refexp.json", f"{split}/refexp.json", "refexp.json")
  items = []
  for s in load_json(path):
    inp = s["input"]
    img = image_path(root, inp["image_id"], "images", "")
    boxes = (s.get("output") or {}).get("bboxes")
    width, height = image_size(img)
    items.append({"id": inp["example_id"], "image": img, "expression": inp["task_query"],
                  "box": list(boxes[0]) if boxes else None, "width": width, "height": height})
  return items
