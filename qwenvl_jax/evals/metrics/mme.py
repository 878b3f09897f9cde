"""MME: yes/no answers scored per subtask as acc + acc+, summed into perception and cognition.

Answer parsing follows the MME tool: lower-case; exactly 'yes'/'no', else 'yes' then 'no' searched in
the first 4 characters, else 'other' (always wrong). Per subtask: acc = fraction of questions right,
acc+ = fraction of images with every question right (MME has two per image), score = 100 (acc + acc+).
Perception sums 10 subtasks (max 2000), cognition 4 (max 800).
"""

from __future__ import annotations

import collections
from typing import Iterable

from qwenvl_jax.evals.metrics.base import MetricResult

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark",
              "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
VARIANTS = ("official",)


def parse_yes_no(text: str) -> str:
  text = text.lower()
  if text in ("yes", "no"):
    return text
  head = text[:4]
  if "yes" in head:
    return "yes"
  if "no" in head:
    return "no"
  return "other"


def mme_scores(rows: Iterable[tuple[str, str, str, str]]) -> MetricResult:
  """`rows`: (subtask, image, prediction, ground truth 'Yes'/'No')."""
  per_q = collections.defaultdict(list)
  per_img = collections.defaultdict(lambda: collections.defaultdict(list))
  for subtask, image, pred, gt in rows:
    ok = parse_yes_no(pred) == gt.strip().lower()
    per_q[subtask].append(ok)
    per_img[subtask][image].append(ok)
  subtasks = {}
  for name, oks in per_q.items():
    acc = sum(oks) / len(oks)
    imgs = per_img[name].values()
    acc_plus = sum(all(v) for v in imgs) / len(imgs)
    subtasks[name] = {"acc": 100 * acc, "acc_plus": 100 * acc_plus, "score": 100 * (acc + acc_plus),
                      "n_questions": len(oks), "n_images": len(imgs)}
  groups = {}
  for group, names in (("perception", PERCEPTION), ("cognition", COGNITION)):
    present = [s for s in names if s in subtasks]
    groups[group] = sum(subtasks[s]["score"] for s in present)
    groups[f"{group}_complete"] = len(present) == len(names)
  n = sum(len(v) for v in per_q.values())
  # The headline: perception + cognition; report both, as Table 7 does.
  return MetricResult("mme", "official", groups["perception"] + groups["cognition"], n,
                      {**groups, "subtasks": subtasks})
