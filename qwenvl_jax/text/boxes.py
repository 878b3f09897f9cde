"""Bounding boxes as text: pixel boxes <-> Qwen-VL's normalised `<box>(x1,y1),(x2,y2)</box>` strings.

Qwen-VL writes a box as integers normalised to [0, 1000) and tokenises the coordinates as ordinary
text (paper 2.2); `<ref>phrase</ref>` marks what a box refers to, `<quad>` holds the four corners of
OCR text. The functions here build and read those *strings*; the tag strings only become special ids
when the structured builders in `interface.py` assemble a sequence.

Rounding: `normalize_box` maps a pixel coordinate v in [0, size] to floor(v * 1000 / size + 0.5)
clamped to [0, 999] (round half up), so `denormalize_box(.., divisor=1000)` recovers v within one
normalised unit (half a unit except at the right/bottom edge). The reference grounding eval
de-normalises with /999; pass `divisor=999` to reproduce it.

`parse_boxes` reads model output and never raises: unclosed tags, non-numbers, inverted boxes and
values >= 1000 are skipped and every well-formed box is returned. Decode with `skip_special=False`
first, or the tags are gone.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Sequence

import numpy as np

SCALE = 1000  # normalised coordinates are ints in [0, SCALE)

Box = tuple[int, int, int, int]


def _norm_coord(v: float, size: float) -> int:
  return min(SCALE - 1, max(0, math.floor(v * SCALE / size + 0.5)))


def normalize_box(box_xyxy_pixels, width: float, height: float) -> Box:
  """Pixel (x1, y1, x2, y2) -> ints in [0, 1000); out-of-image coordinates are clamped."""
  x1, y1, x2, y2 = (float(v) for v in box_xyxy_pixels)
  if not (width > 0 and height > 0):
    raise ValueError(f"image size must be positive, got {width}x{height}")
  if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
    raise ValueError(f"box has a non-finite coordinate: {box_xyxy_pixels}")
  if x2 < x1 or y2 < y1:
    raise ValueError(f"box {box_xyxy_pixels} is not (x1, y1, x2, y2) with x1 <= x2 and y1 <= y2")
  return (_norm_coord(x1, width), _norm_coord(y1, height), _norm_coord(x2, width),
          _norm_coord(y2, height))


def denormalize_box(box, width: float, height: float, divisor: int = SCALE):
  """Normalised box -> float pixel box (x * width / divisor); divisor 999 = the grounding eval's."""
  x1, y1, x2, y2 = box
  return (x1 * width / divisor, y1 * height / divisor, x2 * width / divisor, y2 * height / divisor)


def _check_coords(values, what: str):
  for v in values:
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or not 0 <= v < SCALE:
      raise ValueError(f"{what} coordinates must be ints in [0, {SCALE}), got {tuple(values)}")


def box_text(norm_box) -> str:
  """The text between the box tags: "(x1,y1),(x2,y2)"."""
  vals = tuple(norm_box)
  if len(vals) != 4:
    raise ValueError(f"a box has 4 coordinates, got {vals}")
  _check_coords(vals, "box")
  x1, y1, x2, y2 = (int(v) for v in vals)
  if x2 < x1 or y2 < y1:
    raise ValueError(f"box {vals} has x2 < x1 or y2 < y1")
  return f"({x1},{y1}),({x2},{y2})"


def quad_text(points) -> str:
  """The text between the quad tags: "(x1,y1),(x2,y2),(x3,y3),(x4,y4)"."""
  pts = [tuple(p) for p in points]
  if len(pts) != 4 or any(len(p) != 2 for p in pts):
    raise ValueError(f"a quad has 4 (x, y) points, got {pts}")
  _check_coords([v for p in pts for v in p], "quad")
  return ",".join(f"({int(x)},{int(y)})" for x, y in pts)


def format_box(norm_box) -> str:
  return f"<box>{box_text(norm_box)}</box>"


def format_quad(points) -> str:
  return f"<quad>{quad_text(points)}</quad>"


def format_ref(phrase: str) -> str:
  return f"<ref>{phrase}</ref>"


# --------------------------------------------------------------------------------------------
# Parsing model output.


@dataclasses.dataclass(frozen=True)
class ParsedBox:
  ref: str | None  # the <ref> phrase this box belongs to, if any
  box: Box  # normalised ints, x1 <= x2, y1 <= y2, all in [0, 1000)


@dataclasses.dataclass(frozen=True)
class ParsedQuad:
  ref: str | None
  points: tuple[tuple[int, int], ...]


@dataclasses.dataclass(frozen=True)
class PixelBox:
  ref: str | None
  box: tuple[float, float, float, float]  # pixels, xyxy


_INNER = r"((?:(?!</?(?:ref|box|quad|img)>).)*)"  # tag content: anything but another tag
_ELEMENT = re.compile(rf"<(ref|box|quad|img)>{_INNER}</\1>", re.DOTALL)
_NUM = r"\s*([0-9]{1,12})\s*"
_PAIR = rf"\({_NUM},{_NUM}\)"
_BOX_BODY = re.compile(rf"\s*{_PAIR}\s*,\s*{_PAIR}\s*")
_QUAD_BODY = re.compile(rf"\s*{_PAIR}\s*,\s*{_PAIR}\s*,\s*{_PAIR}\s*,\s*{_PAIR}\s*")
_CHAIN_GAP = re.compile(r"[\s,;]*")  # what may separate a ref from its boxes / one box from the next


def read_box_body(body: str) -> Box | None:
  """Box text "(x1,y1),(x2,y2)" -> a valid normalised box, else None."""
  m = _BOX_BODY.fullmatch(body)
  if not m:
    return None
  x1, y1, x2, y2 = (int(v) for v in m.groups())
  if max(x1, y1, x2, y2) >= SCALE or x2 < x1 or y2 < y1:
    return None
  return (x1, y1, x2, y2)


def read_quad_body(body: str):
  """Quad text "(x,y),(x,y),(x,y),(x,y)" -> four valid normalised points, else None."""
  m = _QUAD_BODY.fullmatch(body)
  if not m:
    return None
  vals = [int(v) for v in m.groups()]
  if max(vals) >= SCALE:
    return None
  return tuple(zip(vals[0::2], vals[1::2]))


def _elements(text: str):
  """Yields (kind, value, image_index, ref) for every closed, well-formed box/quad in `text`.

  A box belongs to the <ref> it follows when only whitespace, commas or other boxes lie between them.
  image_index counts the closed <img>..</img> spans seen before the element (-1 if none).
  """
  if not isinstance(text, str):
    return
  ref, chain_end, n_images = None, -1, 0
  for m in _ELEMENT.finditer(text):
    kind, body = m.group(1), m.group(2)
    if kind == "img":
      n_images += 1
      ref = None
      continue
    if kind == "ref":
      ref, chain_end = body, m.end()
      continue
    linked = ref is not None and _CHAIN_GAP.fullmatch(text, chain_end, m.start()) is not None
    if linked:
      chain_end = m.end()
    else:
      ref = None
    value = read_box_body(body) if kind == "box" else read_quad_body(body)
    if value is not None:
      yield kind, value, n_images - 1, ref if linked else None


def parse_boxes(text: str) -> list[ParsedBox]:
  """Every well-formed `<box>(x1,y1),(x2,y2)</box>` in `text`, with its `<ref>`. Never raises."""
  return [ParsedBox(ref, v) for kind, v, _, ref in _elements(text) if kind == "box"]


def parse_quads(text: str) -> list[ParsedQuad]:
  """Every well-formed `<quad>` with four points in `text`, with its `<ref>` phrase. Never raises."""
  return [ParsedQuad(ref, v) for kind, v, _, ref in _elements(text) if kind == "quad"]


def to_pixel_boxes(boxes: Sequence[ParsedBox], width: float, height: float,
                   divisor: int = SCALE) -> list[PixelBox]:
  return [PixelBox(b.ref, denormalize_box(b.box, width, height, divisor)) for b in boxes]


def parse_boxes_per_image(text: str, image_sizes: Sequence[tuple[float, float]],
                          divisor: int = SCALE, default_image: int = -1) -> list[list[PixelBox]]:
  """Pixel boxes grouped by the image they refer to; `image_sizes` is [(width, height), ...].

  A box belongs to the last `<img>..</img>` before it in `text`. Boxes with no image before them (a
  generated answer on its own) go to `default_image`, by default the latest picture, which is what the
  reference chat helper draws on. Boxes whose image index has no size are dropped. Never raises on
  malformed `text`.
  """
  out = [[] for _ in image_sizes]
  if not image_sizes:
    return out
  default = default_image % len(image_sizes)
  for kind, value, index, ref in _elements(text):
    if kind != "box":
      continue
    index = default if index < 0 else index
    if index < len(image_sizes):
      w, h = image_sizes[index]
      out[index].append(PixelBox(ref, denormalize_box(value, w, h, divisor)))
  return out


_FIRST_PAIR = re.compile(rf"{_PAIR}\s*,\s*{_PAIR}")


def parse_first_box(text: str) -> Box | None:
  """The first "(x1,y1),(x2,y2)" anywhere in `text` (tags optional, no range check), or None.

  This is the grounding eval's reading: the prompt ends with `<box>`, so the answer starts with the
  coordinates; the eval scores a missing box as (0, 0, 0, 0).
  """
  if not isinstance(text, str):
    return None
  m = _FIRST_PAIR.search(text)
  return tuple(int(v) for v in m.groups()) if m else None
