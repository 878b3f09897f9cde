"""Drawing boxes and quads on images: a raw record's annotations (the check a human can do at a glance)
and, through `draw_boxes`, the boxes of a chat answer (qwenvl_jax/infer/draw.py)."""

from __future__ import annotations

import math
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

from qwenvl_jax.data.preprocess import load_image
from qwenvl_jax.text.boxes import PixelBox

_PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 200, 200),
            (240, 50, 230), (128, 128, 0))


def draw_boxes(image: Image.Image, boxes: Sequence[PixelBox]) -> Image.Image:
  """A copy of `image` with pixel boxes drawn, one colour per `ref` phrase, the phrase written at the
  box's top-left corner (as the reference chat helper draws them); unlabelled boxes get a colour each."""
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
      d.text((x1 + 2, y1 + 1), b.ref, fill=colour, font=font, stroke_width=2, stroke_fill=(255, 255, 255))
  return img


def draw_record(record: dict, image: Image.Image | None = None, labels: bool = True) -> Image.Image:
  """The record's image with object boxes (labelled with their phrase) and word quads drawn on it."""
  img = image or load_image(record["image"], name=record.get("id"))
  boxes = [PixelBox(obj["phrase"] if labels else None, tuple(obj["box"]))
           for obj in record.get("objects") or []]
  img = draw_boxes(img, boxes)
  d = ImageDraw.Draw(img)
  for i, w in enumerate(record.get("words") or []):
    color = _PALETTE[i % len(_PALETTE)]
    quad = [tuple(p) for p in w["quad"]]
    d.line(quad + quad[:1], fill=color, width=2)
    d.ellipse((quad[0][0] - 2, quad[0][1] - 2, quad[0][0] + 2, quad[0][1] + 2), fill=color)  # marks top-left
  return img


def grid(images: list[Image.Image], cols: int | None = None, pad: int = 4) -> Image.Image:
  """Tiles images (scaled to the first one's height) into one preview sheet."""
  if not images:
    raise ValueError("no images to tile")
  h = images[0].height
  images = [im.resize((max(1, round(im.width * h / im.height)), h)) for im in images]
  cols = cols or math.ceil(math.sqrt(len(images)))
  rows = math.ceil(len(images) / cols)
  w = max(im.width for im in images)
  sheet = Image.new("RGB", (cols * (w + pad) + pad, rows * (h + pad) + pad), (255, 255, 255))
  for i, im in enumerate(images):
    sheet.paste(im, (pad + (i % cols) * (w + pad), pad + (i // cols) * (h + pad)))
  return sheet
