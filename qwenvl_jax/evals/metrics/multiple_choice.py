"""Multiple choice by likelihood (ScienceQA-Img, SEED-Bench).

The model side appends the tokens of ' A', ' B', ... to the prompt and returns, per option, the mean
cross-entropy over those target tokens; the prediction is the option with the lowest loss (first on
ties). This module is the pure part: losses -> letter, letters -> accuracy.
"""

from __future__ import annotations

import math
import string
from typing import Sequence

from qwenvl_jax.evals.metrics.base import MetricResult, mean

VARIANTS = ("likelihood",)


def letters(n: int) -> list[str]:
  return list(string.ascii_uppercase[:n])


def option_targets(n: int) -> list[str]:
  """The continuation scored for each option: ' A', ' B', ..."""
  return [" " + c for c in letters(n)]


def choose(losses: Sequence[float]) -> int:
  """Index of the lowest mean loss; a NaN loss never wins."""
  if not losses:
    raise ValueError("no option losses")
  keyed = [(math.inf if math.isnan(v) else v, i) for i, v in enumerate(losses)]
  return min(keyed)[1]


def choose_letter(losses: Sequence[float]) -> str:
  return string.ascii_uppercase[choose(losses)]


def choice_accuracy(predicted: Sequence[str], gold: Sequence[str]) -> MetricResult:
  scores = [float(p.strip().upper() == g.strip().upper()) for p, g in zip(predicted, gold, strict=True)]
  return MetricResult("choice_accuracy", "likelihood", 100.0 * mean(scores), len(scores))


def circular_accuracy(rows: Sequence[tuple[object, str, str]]) -> MetricResult:
  """MMBench's CircularEval: `rows` (question group, predicted letter, gold letter), one per option
  rotation of a question; a question counts only if every one of its rotations is right. `n` counts
  rotations (the items scored); the details give the questions and the plain per-rotation accuracy."""
  groups: dict = {}
  for group, pred, gold in rows:
    groups.setdefault(group, []).append(pred.strip().upper() == gold.strip().upper())
  per_rotation = [ok for oks in groups.values() for ok in oks]
  return MetricResult("circular_accuracy", "circular", 100.0 * mean(all(v) for v in groups.values()),
                      len(per_rotation), {"questions": len(groups), "rotations": len(per_rotation),
                                    "per_rotation_accuracy": 100.0 * mean(per_rotation)})
