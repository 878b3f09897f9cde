"""Drawing a raw record's boxes and quads on its image: the check a human can do at a glance."""

from __future__ import annotations

import math

from PIL import Image, ImageDraw, ImageFont

from qwenvl_jax.data.preprocess import load_image

_PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
            (240, 50, 230), (128, 128, 0))


def draw_record(record: dict, image: Image.Image | None = None, labels: bool = True) -> Image.Image:
  """The record's image with object boxes (labelled with their phrase) and word quads drawn on it."""
  img = (image or load_image(record["image"], name=record.get("id"))).convert("RGB").copy()
  d = ImageDraw.Draw(img)
  font = ImageFont.load_default(max(9, img.height // 40))
  for i, obj in enumerate(record.get("objects") or []):
    color = _PALETTE[i % len(_PALETTE)]
    d.rectangle(obj["box"], outline=color, width=2)
    if labels:
      x, y = obj["box"][0], max(0, obj["box"][1] - font.size - 2)
      d.text((x + 1, y), obj["phrase"], fill=color, font=font, stroke_width=2, stroke_fill=(255, 255, 255))
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
