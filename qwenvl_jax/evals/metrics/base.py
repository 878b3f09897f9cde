"""The one result type every metric returns, so each number carries the variant that produced it."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass
class MetricResult:
  """`score` is in the paper's units (percent for accuracies, CIDEr x100, MME points).

  `score` is None when the split has no public ground truth (predictions only).
  """
  metric: str
  variant: str
  score: float | None
  n: int
  details: dict[str, Any] = dataclasses.field(default_factory=dict)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def check_variant(variant: str | None, variants: tuple[str, ...], metric: str) -> str:
  """Returns the variant, defaulting to the first (the paper's); unknown names fail loudly."""
  if variant is None:
    return variants[0]
  if variant not in variants:
    raise ValueError(f"{metric}: unknown variant {variant!r}; choose from {', '.join(variants)}")
  return variant


def mean(values) -> float:
  values = list(values)
  return sum(values) / len(values) if values else 0.0
