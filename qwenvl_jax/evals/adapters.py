"""Turns a model-side predictor into the runner's two callables, by duck typing (no model imports).

Accepted: an object with `generate(prompts, max_new_tokens, min_new_tokens)` and
`score_options(segments, options)` (qwenvl_jax.infer.api.Predictor; chat requests, e.g. MME's, also
need `generate_chat(prompts, max_new_tokens, min_new_tokens)`), or an object with
`predict(requests)` [+ `score(requests)`], or a bare callable predict_fn.
"""

from __future__ import annotations

from typing import Any


def _generate_fn(pred):
  def predict(requests: list[dict]) -> list[str]:
    out: list[str | None] = [None] * len(requests)
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(requests):
      key = (r["max_new_tokens"], r["min_new_tokens"], r.get("chat", False), r.get("label_pictures", True))
      groups.setdefault(key, []).append(i)
    for (max_new, min_new, chat, labels), idx in groups.items():
      if chat:
        texts = pred.generate_chat([requests[i]["segments"] for i in idx], max_new, min_new,
                                   label_pictures=labels)
      else:
        texts = pred.generate([requests[i]["segments"] for i in idx], max_new, min_new)
      for i, t in zip(idx, texts):
        out[i] = t
    return out
  return predict


def _score_fn(pred):
  def score(requests: list[dict]) -> list[list[float]]:
    return [list(pred.score_options(r["segments"], r["options"])) for r in requests]
  return score


def from_predictor(pred: Any):
  """-> (predict_fn, score_fn or None)."""
  if hasattr(pred, "generate") and hasattr(pred, "score_options"):
    return _generate_fn(pred), _score_fn(pred)
  if hasattr(pred, "predict"):
    return pred.predict, getattr(pred, "score", None)
  if callable(pred):
    return pred, None
  raise TypeError(f"cannot use {type(pred).__name__} as a predictor: no generate/predict and not callable")
