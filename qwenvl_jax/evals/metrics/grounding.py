"""Grounding accuracy (RefCOCO/+/g, GRIT): IoU >= 0.5 between the predicted and the true box.

The model writes `(x1,y1),(x2,y2)` with integers in [0, 1000); the Qwen-VL eval takes the first such
pair in the output (none, or unparsable -> box (0,0,0,0)), divides by 999 and scales by the image
width/height. Boxes are xyxy pixels, areas without +1, and areas are not clamped (an inverted box keeps
its signed area), as in torchvision's `box_area` the reference uses.
"""

from __future__ import annotations

import math
import re
from typing import Sequence

from qwenvl_jax.evals.metrics.base import MetricResult

VARIANTS = ("qwenvl",)
_PAIR = re.compile(r"\((.*?)\),\((.*?)\)")
Box = tuple[float, float, float, float]


def parse_box(text: str) -> Box:
  """First `(x1,y1),(x2,y2)` in model units; (0, 0, 0, 0) when absent or malformed."""
  m = _PAIR.search(text)
  if m is None:
    return (0.0, 0.0, 0.0, 0.0)
  try:
    x1, y1 = (float(v) for v in m.group(1).split(","))
    x2, y2 = (float(v) for v in m.group(2).split(","))
  except ValueError:  # a missing comma, three values, or a non-number
    return (0.0, 0.0, 0.0, 0.0)
  return (x1, y1, x2, y2)


def to_pixels(box: Box, width: float, height: float, scale: float = 999.0) -> Box:
  x1, y1, x2, y2 = box
  return (x1 / scale * width, y1 / scale * height, x2 / scale * width, y2 / scale * height)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
  """IoU of two xyxy boxes; 0 when the union is empty (the reference gets NaN, which never passes)."""
  area_a = (a[2] - a[0]) * (a[3] - a[1])
  area_b = (b[2] - b[0]) * (b[3] - b[1])
  iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = iw * ih
  union = area_a + area_b - inter
  if union == 0:
    return 0.0
  iou = inter / union
  return 0.0 if math.isnan(iou) else iou


def grounding_correct(output: str, gt_box: Sequence[float], width: float, height: float,
                      threshold: float = 0.5) -> bool:
  return box_iou(to_pixels(parse_box(output), width, height), gt_box) >= threshold


def grounding_accuracy(outputs: Sequence[str], gt_boxes: Sequence[Sequence[float]],
                       sizes: Sequence[tuple[float, float]], variant: str | None = None) -> MetricResult:
  """`sizes` are (width, height) per item."""
  hits = [grounding_correct(o, b, w, h) for o, b, (w, h) in zip(outputs, gt_boxes, sizes, strict=True)]
  n = len(hits)
  return MetricResult("grounding_accuracy", "qwenvl", 100.0 * sum(hits) / n if n else 0.0, n,
                      {"iou_threshold": 0.5, "box_scale": 999})
