"""Draw the boxes of a chat answer on the picture they belong to, as the reference chat helper does.

The reference (`draw_bbox_on_latest_picture`) draws every `<ref>..</ref><box>..</box>` of the answer on
the most recent picture of the conversation, de-normalising with x / 1000 * width, one colour per
phrase with the phrase written at the box's top-left corner. A box whose answer text sits after an
`<img>` span of its own belongs to that image instead (`parse_boxes_per_image`).
"""

from __future__ import annotations

import os
import pathlib
from typing import Sequence

from PIL import Image

from qwenvl_jax.data.draw import draw_boxes
from qwenvl_jax.data.preprocess import load_image
from qwenvl_jax.text.boxes import parse_boxes_per_image

MIN_SIDE = 384  # smaller pictures are enlarged before drawing, so box and phrase stay readable

__all__ = ["draw_answer", "draw_boxes"]  # draw_boxes lives in data/draw.py, shared with data previews


def draw_answer(answer: str, images: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                stem: str = "answer") -> list[pathlib.Path]:
  """Draws the answer's boxes on the conversation's pictures; returns the PNGs written (maybe none).

  `images` are the conversation's pictures in order (Picture 1, 2, ...); boxes not tied to an image
  in the answer go on the latest one.
  """
  if not images:
    return []
  pictures = [_viewable(load_image(p)) for p in images]
  per_image = parse_boxes_per_image(answer, [p.size for p in pictures], divisor=1000)
  out_dir = pathlib.Path(out_dir)
  written = []
  for n, (pic, boxes) in enumerate(zip(pictures, per_image), 1):
    if not boxes:
      continue
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{stem}_picture{n}.png"
    draw_boxes(pic, boxes).save(path)
    written.append(path)
  return written


def _viewable(picture: Image.Image) -> Image.Image:
  """`picture` enlarged by a whole factor (nearest pixel) until its short side is >= MIN_SIDE: a 96 px
  training picture is too small to read a drawn phrase on. Boxes parse against the enlarged size."""
  factor = -(-MIN_SIDE // max(1, min(picture.size)))
  if factor <= 1:
    return picture
  return picture.resize((picture.width * factor, picture.height * factor), Image.Resampling.NEAREST)
