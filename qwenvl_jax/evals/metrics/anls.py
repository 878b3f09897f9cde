"""ANLS, the DocVQA metric (Average Normalized Levenshtein Similarity, threshold 0.5).

Per answer: both strings stripped, lower-cased and space-collapsed, unit-cost Levenshtein distance,
divided by the longer of the two *raw* (un-normalised, upper-cased) lengths as the official script
does; similarity = 1 - that. Best answer wins; below 0.5 counts 0 (exactly 0.5 is kept).
"""

from __future__ import annotations

from typing import Sequence

from qwenvl_jax.evals.metrics.base import MetricResult, mean

VARIANTS = ("official",)


def levenshtein(a: str, b: str) -> int:
  if len(a) < len(b):
    a, b = b, a
  prev = list(range(len(b) + 1))
  for i, ca in enumerate(a, 1):
    cur = [i]
    for j, cb in enumerate(b, 1):
      cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
    prev = cur
  return prev[-1]


def _squash(text: str) -> str:
  return " ".join(text.strip().lower().split())


def anls_score(prediction: str, answers: Sequence[str], threshold: float = 0.5) -> float:
  if not answers:
    raise ValueError("anls_score needs at least one answer")
  best = 0.0
  for ans in answers:
    length = max(len(ans.upper()), len(prediction.upper()))
    dist = 0.0 if length == 0 else levenshtein(_squash(ans), _squash(prediction)) / length
    best = max(best, 1.0 - dist)
  return 0.0 if best < threshold else best


def anls(predictions: Sequence[str], answers: Sequence[Sequence[str]], threshold: float = 0.5,
         variant: str | None = None) -> MetricResult:
  scores = [anls_score(p, a, threshold) for p, a in zip(predictions, answers, strict=True)]
  return MetricResult("anls", "official", 100.0 * mean(scores), len(scores),
                      {"threshold": threshold})
