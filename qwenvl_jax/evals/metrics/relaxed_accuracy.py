"""ChartQA relaxed accuracy: numbers within 5% of the target, anything else exact (case-insensitive).

Variants:
  correct  (default) the published definition: |pred - target| / |target| <= 0.05 when both parse as
           floats ('12%' -> 0.12) and the target is non-zero.
  qwenvl   the Qwen-VL eval passes the prediction in the target's slot, so it divides by |pred| and
           needs a non-zero *prediction*: 95.1 against 100 is right in `correct`, wrong here.
"""

from __future__ import annotations

from typing import Sequence

from qwenvl_jax.evals.metrics.base import MetricResult, check_variant, mean

VARIANTS = ("correct", "qwenvl")


def _to_float(text: str) -> float | None:
  try:
    if text.endswith("%"):
      return float(text.rstrip("%")) / 100.0
    return float(text)
  except ValueError:
    return None


def relaxed_correct(prediction: str, target: str, tolerance: float = 0.05) -> bool:
  """The published rule, `prediction` against `target`."""
  p, t = _to_float(prediction), _to_float(target)
  if p is not None and t:
    return abs(p - t) / abs(t) <= tolerance
  return prediction.lower() == target.lower()


def relaxed_score(prediction: str, targets: Sequence[str], variant: str = "correct") -> float:
  variant = check_variant(variant, VARIANTS, "relaxed_accuracy")
  pred = prediction.strip()
  if variant == "correct":
    return float(max(relaxed_correct(pred, t) for t in targets))
  return float(max(relaxed_correct(t, pred) for t in targets))


def relaxed_accuracy(predictions: Sequence[str], targets: Sequence[Sequence[str]],
                     variant: str | None = None) -> MetricResult:
  variant = check_variant(variant, VARIANTS, "relaxed_accuracy")
  scores = [relaxed_score(p, t, variant) for p, t in zip(predictions, targets, strict=True)]
  return MetricResult("relaxed_accuracy", variant, 100.0 * mean(scores), len(scores))
