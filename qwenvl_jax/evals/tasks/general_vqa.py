"""General VQA readers: VQAv2, OK-VQA (questions + annotations JSON pairs), GQA, VizWiz, ScienceQA-Img.

Layouts (under the task's data path):
  vqav2     v2_OpenEnded_mscoco_{split}_questions.json [+ v2_mscoco_{split}_annotations.json],
            images COCO_{subtype}_{image_id:012d}.jpg in {subtype}/ or images/ (test-dev -> test2015)
  okvqa     OpenEnded_mscoco_{split}_questions.json + mscoco_{split}_annotations.json, COCO images
  gqa       {split}_questions.json ({qid: {imageId, question, answer}}), images/{imageId}.jpg
  vizwiz    Annotations/{split}.json or {split}.json ([{image, question, answers}]), images in {split}/
  scienceqa problems.json ({pid: {question, choices, answer, hint, image, split}}),
            images/{split}/{pid}/{image}; only problems with an image
A split without answers (VQAv2 test-dev, VizWiz test) reads with answers None: predictions only.
"""

from __future__ import annotations

import json
import pathlib
import string

from qwenvl_jax.evals.tasks.base import Item, find_file, image_path, load_json, most_common


def _read_vqa_pair(root: pathlib.Path, split: str, questions: str, annotations: str) -> list[Item]:
  qs = load_json(find_file(root, questions))
  anns = {}
  if (root / annotations).is_file():
    anns = {a["question_id"]: a for a in load_json(root / annotations)["annotations"]}
  subtype = qs.get("data_subtype", split)
  if subtype.startswith("test"):  # test-dev2015 questions use the test2015 images
    subtype = "test2015"
  items = []
  for q in qs["questions"]:
    ann = anns.get(q["question_id"])
    answers = [a["answer"] for a in ann["answers"]] if ann else None
    name = f"COCO_{subtype}_{int(q['image_id']):012d}.jpg"
    items.append({
      "id": q["question_id"], "image": image_path(root, name, subtype, "images", ""),
      "question": q["question"], "answers": answers,
      "shot_answer": (ann.get("multiple_choice_answer") or most_common(answers)) if ann else None,
      "answer_type": ann.get("answer_type") if ann else None,
    })
  return items


def read_vqav2(root: pathlib.Path, split: str) -> list[Item]:
  return _read_vqa_pair(root, split, f"v2_OpenEnded_mscoco_{split}_questions.json",
                        f"v2_mscoco_{split}_annotations.json")


def read_okvqa(root: pathlib.Path, split: str) -> list[Item]:
  return _read_vqa_pair(root, split, f"OpenEnded_mscoco_{split}_questions.json",
                        f"mscoco_{split}_annotations.json")


def read_gqa(root: pathlib.Path, split: str) -> list[Item]:
  data = load_json(find_file(root, f"{split}_questions.json", f"questions/{split}_questions.json"))
  return [{"id": qid, "image": image_path(root, f"{q['imageId']}.jpg", "images", ""),
           "question": q["question"], "answers": [q["answer"]] if "answer" in q else None,
           "shot_answer": q.get("answer")}
          for qid, q in data.items()]


def read_vizwiz(root: pathlib.Path, split: str) -> list[Item]:
  data = load_json(find_file(root, f"Annotations/{split}.json", f"{split}.json"))
  items = []
  for q in data:
    answers = [a["answer"] for a in q["answers"]] if q.get("answers") else None
    items.append({"id": q["image"], "image": image_path(root, q["image"], split, "images", ""),
                  "question": q["question"], "answers": answers, "shot_answer": most_common(answers or []),
                  "answer_type": q.get("answer_type")})
  return items


def read_scienceqa(root: pathlib.Path, split: str) -> list[Item]:
  problems = load_json(find_file(root, "problems.json", "data/scienceqa/problems.json"))
  items = []
  for pid, p in problems.items():
    if p.get("split") != split or not p.get("image"):
      continue
    items.append({
      "id": pid, "image": image_path(root, f"{split}/{pid}/{p['image']}", "images", ""),
      "question": p["question"], "choices": list(p["choices"]), "hint": p.get("hint") or "",
      "answer": string.ascii_uppercase[p["answer"]] if p.get("answer") is not None else None,
      "category": p.get("subject"),
    })
  return items


POPE_SPLITS = ("random", "popular", "adversarial")


def read_pope(root: pathlib.Path, split: str) -> list[Item]:
  """POPE: coco_pope_{split}.json, one JSON object per line {question_id, image, text, label}."""
  path = find_file(root, f"coco_pope_{split}.json", f"output/coco/coco_pope_{split}.json", f"{split}.json")
  items = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      if line.strip():
        q = json.loads(line)
        items.append({"id": q["question_id"], "image": image_path(root, q["image"], "val2014", "images", ""),
                      "question": q["text"], "answers": [q["label"]] if "label" in q else None,
                      "shot_answer": q.get("label")})
  return items
