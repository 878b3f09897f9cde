"""POPE (object hallucination): yes/no answers scored as a binary classifier, "yes" the positive class.

Answer parsing as POPE's evaluation (and LLaVA's eval_pope.py): keep the text before the first '.',
delete ',', split on spaces; 'No', 'no' or 'not' among the words -> no, anything else -> yes.
Accuracy, precision, recall, F1 (all in percent) and the yes-ratio (share of "yes" predictions).
"""

from __future__ import annotations

from typing import Sequence

from qwenvl_jax.evals.metrics.base import MetricResult

VARIANTS = ("official",)


def parse_yes_no(text: str) -> str:
  if "." in text:
    text = text.split(".")[0]
  words = text.replace(",", "").split(" ")
  return "no" if any(w in ("No", "not", "no") for w in words) else "yes"


def pope_scores(predictions: Sequence[str], labels: Sequence[str]) -> MetricResult:
  preds = [parse_yes_no(p) == "yes" for p in predictions]
  gold = [lbl.strip().lower() == "yes" for lbl in labels]
  if len(preds) != len(gold):
    raise ValueError(f"{len(preds)} predictions for {len(gold)} labels")
  tp = sum(p and g for p, g in zip(preds, gold))
  fp = sum(p and not g for p, g in zip(preds, gold))
  tn = sum(not p and not g for p, g in zip(preds, gold))
  fn = sum(not p and g for p, g in zip(preds, gold))
  n = len(preds)
  precision = tp / (tp + fp) if tp + fp else 0.0
  recall = tp / (tp + fn) if tp + fn else 0.0
  f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
  accuracy = (tp + tn) / n if n else 0.0
  return MetricResult("pope", "official", 100 * accuracy, n,
                      {"accuracy": 100 * accuracy, "precision": 100 * precision, "recall": 100 * recall,
                       "f1": 100 * f1, "yes_ratio": 100 * (tp + fp) / n if n else 0.0,
                       "tp": tp, "fp": fp, "tn": tn, "fn": fn})
