"""SEED-Bench (image part) reader: SEED-Bench.json ({question_type: {name: id}, questions: [{question_id,
question, choice_a..choice_d, answer, data_id, data_type, question_type_id}]}), image dimensions 1-9.

Layout: SEED-Bench.json in the data path, images in SEED-Bench-image/{data_id} or images/{data_id}.
"""

from __future__ import annotations

import pathlib

from qwenvl_jax.evals.tasks.base import Item, find_file, image_path, load_json


def read_seed_bench(root: pathlib.Path, split: str) -> list[Item]:
  data = load_json(find_file(root, "SEED-Bench.json"))
  names = {v: k for k, v in (data.get("question_type") or {}).items()}
  items = []
  for q in data["questions"]:
    if not 1 <= int(q["question_type_id"]) <= 9:  # 10-12 are the video dimensions
      continue
    items.append({"id": q["question_id"], "image": image_path(root, q["data_id"], "SEED-Bench-image", "images", ""),
                  "question": q["question"], "choices": [q[f"choice_{c}"] for c in "abcd"],
                  "answer": q.get("answer"),
                  "category": names.get(q["question_type_id"], str(q["question_type_id"]))})
  return items
