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

from PIL import Image, ImageDraw, ImageFont

from qwenvl_jax.data.preprocess import load_image
from qwenvl_jax.text.boxes import PixelBox, parse_boxes_per_image

_PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 200, 200), (240, 50, 230), (128, 128, 0))


def draw_boxes(image: Image.Image, boxes: Sequence[PixelBox]) -> Image.Image:
  """A copy of `image` with pixel boxes drawn and labelled with their `<ref>` phrase."""
  img = image.convert("RGB").copy()
  d = ImageDraw.Draw(img)
  font = ImageFont.load_default(max(10, img.height // 30))
  colours: dict = {}
  for i, b in enumerate(boxes):
    colour = colours.setdefault(b.ref if b.ref is not None else f"#{i}",
                                _PALETTE[len(colours) % len(_PALETTE)])
    x1, y1, x2, y2 = b.box
    d.rectangle((x1, y1, x2, y2), outline=colour, width=max(2, img.height // 150))
    if b.ref:
      d.text((x1 + 2, y1 + 1), b.ref, fill=colour, font=font, stroke_width=2,
             stroke_fill=(255, 255, 255))
  return img


def draw_answer(answer: str, images: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                stem: str = "answer") -> list[pathlib.Path]:
  """Draws the answer's boxes on the conversation's pictures; returns the PNGs written (maybe none).

  `images` are the conversation's pictures in order (Picture 1, 2, ...); boxes not tied to an image
  in the answer go on the latest one.
  """
  if not images:
    return []
  pictures = [load_image(p) for p in images]
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
