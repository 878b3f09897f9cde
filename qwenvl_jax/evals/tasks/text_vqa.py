"""Text-oriented VQA readers: TextVQA, DocVQA, ChartQA, OCR-VQA, AI2D, each in its published format.

Layouts (under the task's data path):
  textvqa  TextVQA_0.5.1_{split}.json ({data: [{question_id, question, image_id, answers}]}),
           images train_images/{image_id}.jpg (val images ship there too) or test_images/
  docvqa   {split}/{split}_v1.0.json or {split}_v1.0.json ({data: [{questionId, question, image,
           answers}]}), image paths relative to that JSON's folder
  chartqa  {split}/{split}_human.json and {split}/{split}_augmented.json ([{imgname, query, label}]),
           images {split}/png/{imgname}; ids are "{subset}/{index}" (ChartQA has none)
  ocrvqa   dataset.json ({imageId: {imageURL, questions, answers, split: 1 train/2 val/3 test}}),
           images images/{imageId}{extension of imageURL}
  ai2d     questions/*.json ({imageName, questions: {text: {answerTexts, correctAnswer, questionId}}}),
           images/{imageName}, directly or as the archive unpacks (ai2d/questions/, ai2d/images/);
           split "test" needs ai2d_test_ids.csv (one image id per line) beside them or beside ai2d/
AI2D prompt: the paper's VQA prompt with the options listed ("{q}\\nOptions: A. ..\\nB. .."); the
Qwen-VL converted file is not published, so exact match accepts the letter or the option text.
"""

from __future__ import annotations

import os
import pathlib
import string
import urllib.parse

from qwenvl_jax.evals.tasks.base import Item, find_file, image_path, load_json, most_common


def read_textvqa(root: pathlib.Path, split: str) -> list[Item]:
  data = load_json(find_file(root, f"TextVQA_0.5.1_{split}.json"))["data"]
  items = []
  for q in data:
    answers = q.get("answers") or None
    items.append({"id": q["question_id"],
                  "image": image_path(root, f"{q['image_id']}.jpg", "train_images", "test_images", "images", ""),
                  "question": q["question"], "answers": answers, "shot_answer": most_common(answers or [])})
  return items


def read_docvqa(root: pathlib.Path, split: str) -> list[Item]:
  path = find_file(root, f"{split}/{split}_v1.0.json", f"{split}_v1.0.json")
  base = path.parent
  items = []
  for q in load_json(path)["data"]:
    answers = q.get("answers") or None
    items.append({"id": q["questionId"], "image": os.fspath(base / q["image"]), "question": q["question"],
                  "answers": answers, "shot_answer": answers[0] if answers else None})
  return items


def read_infographicvqa(root: pathlib.Path, split: str) -> list[Item]:
  """InfographicVQA (DocVQA's RRC task 3): {data: [{questionId, question, image_local_name, answers}]}."""
  hits = [p for p in sorted(root.glob("*.json")) if "infographic" in p.name.lower() and f"_{split}" in p.name]
  if not hits:
    raise FileNotFoundError(f"InfographicVQA: no infographicsVQA_{split}_v1.0.json (or ..._withQT.json) under {root}")
  items = []
  for q in load_json(hits[0])["data"]:
    answers = q.get("answers") or None
    items.append({"id": q["questionId"], "question": q["question"], "answers": answers,
                  "image": image_path(root, q["image_local_name"], "infographicsvqa_images",
                                      f"infographicVQA_{split}_v1.0_images", "images", ""),
                  "shot_answer": answers[0] if answers else None})
  return items


CHARTQA_SUBSETS = ("human", "augmented")


def read_chartqa(root: pathlib.Path, split: str) -> list[Item]:
  items = []
  for subset in CHARTQA_SUBSETS:
    names = (f"{split}/{split}_{subset}.json", f"{split}_{subset}.json")
    if not any((root / n).is_file() for n in names):
      continue
    path = find_file(root, *names)
    for i, q in enumerate(load_json(path)):
      label = str(q["label"]) if "label" in q else None
      items.append({"id": f"{subset}/{i}", "subset": subset,
                    "image": image_path(path.parent, q["imgname"], "png", ""), "question": q["query"],
                    "answers": [label] if label is not None else None, "shot_answer": label})
  if not items:
    raise FileNotFoundError(f"no ChartQA {split}_human.json / {split}_augmented.json under {root}")
  return items


_OCRVQA_SPLIT = {"train": 1, "val": 2, "test": 3}


def read_ocrvqa(root: pathlib.Path, split: str) -> list[Item]:
  data = load_json(find_file(root, "dataset.json"))
  items = []
  for image_id, rec in data.items():
    if rec.get("split") != _OCRVQA_SPLIT[split]:
      continue
    ext = os.path.splitext(urllib.parse.urlparse(rec.get("imageURL", "")).path)[1] or ".jpg"
    img = image_path(root, f"{image_id}{ext}", "images", "")
    for i, (q, a) in enumerate(zip(rec["questions"], rec["answers"])):
      items.append({"id": f"{image_id}_{i}", "image": img, "question": q, "answers": [a], "shot_answer": a})
  return items


def _ai2d_test_ids(root: pathlib.Path, base: pathlib.Path) -> set[str]:
  try:
    path = find_file(root, "ai2d_test_ids.csv", "test_ids.csv")
  except FileNotFoundError:
    path = find_file(base, "ai2d_test_ids.csv", "test_ids.csv")
  ids = set()
  for line in path.read_text().split():
    ids.update(tok.strip().removesuffix(".png") for tok in line.split(",") if tok.strip())
  return ids


def read_ai2d(root: pathlib.Path, split: str) -> list[Item]:
  # The release archive unpacks to ai2d/{images,questions,annotations}, ai2d_test_ids.csv beside it.
  base = root / "ai2d" if (root / "ai2d" / "questions").is_dir() else root
  qdir = base / "questions"
  if not qdir.is_dir():
    raise FileNotFoundError(f"no questions/ or ai2d/questions/ folder under {root}")
  test_ids = _ai2d_test_ids(root, base) if split != "all" else set()
  items = []
  for path in sorted(qdir.glob("*.json")):
    rec = load_json(path)
    image_name = rec["imageName"]
    in_test = image_name.removesuffix(".png") in test_ids
    if (split == "test" and not in_test) or (split == "train" and in_test):
      continue
    for text, q in rec["questions"].items():
      choices = list(q["answerTexts"])
      letter = string.ascii_uppercase[q["correctAnswer"]]
      options = "\n".join(f"{string.ascii_uppercase[i]}. {c}" for i, c in enumerate(choices))
      items.append({"id": q["questionId"], "image": image_path(base, image_name, "images", ""),
                    "question": f"{text}\nOptions: {options}", "choices": choices,
                    "answers": [letter, choices[q["correctAnswer"]]], "shot_answer": letter})
  return items
