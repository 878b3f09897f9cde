"""Exact match (GQA, OCR-VQA, AI2D) and the GQA answer clean-up of the Qwen-VL eval.

Variants: `plain` is the published definition (strip + lower-case on both sides, any answer);
`qwenvl` first runs `gqa_postprocess` on the prediction, which is how the paper's GQA number was made.
"""

from __future__ import annotations

from typing import Sequence

from qwenvl_jax.evals.metrics.base import MetricResult, check_variant, mean

VARIANTS = ("plain", "qwenvl")


def exact_match(prediction: str, answers: Sequence[str]) -> float:
  pred = prediction.strip().lower()
  return float(any(pred == a.strip().lower() for a in answers))


def gqa_postprocess(text: str) -> str:
  """The Qwen-VL GQA clean-up, reproduced as it behaves.

  Keeps the text before the first '.', ',' or '!', lower-cased; then for each of 'is ', 'are ', 'a ',
  'an ', 'the ' found *anywhere* keeps what lies between its first and second occurrence, and cuts at
  ' of'. Note the substring tests also fire inside words ("banana split" -> "split", "this is" -> ""):
  that is the paper's behaviour, so it is not "fixed" here.
  """
  r = text.strip().split(".")[0].split(",")[0].split("!")[0].lower()
  for marker in ("is ", "are ", "a ", "an ", "the "):
    if marker in r:
      r = r.split(marker)[1]
  if " of" in r:
    r = r.split(" of")[0]
  return r.strip()


def exact_match_accuracy(predictions: Sequence[str], answers: Sequence[Sequence[str]],
                         variant: str | None = None) -> MetricResult:
  variant = check_variant(variant, VARIANTS, "exact_match")
  if variant == "qwenvl":
    predictions = [gqa_postprocess(p) for p in predictions]
  scores = [exact_match(p, a) for p, a in zip(predictions, answers, strict=True)]
  return MetricResult("exact_match", variant, 100.0 * mean(scores), len(scores))
