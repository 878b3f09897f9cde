"""SynthDoG-style text images: short lines of words on textured backgrounds, with boxes and quads.

As in the paper's synthetic OCR data (Appendix A.4, following SynthDoG), each rendered line is tracked
through its rotation and reported as a quadrilateral (top-left, top-right, bottom-right, bottom-left, in
the text's own reading order) plus the enclosing axis-aligned box. Half the images put the text on a
lighter, slightly rotated "paper" patch over the texture, the other half directly on it. Fonts are the
locally available ones (`common.font_paths`); SynthDoG's COCO backgrounds are replaced by procedural noise
so nothing needs downloading. English only: no CJK font ships with the pinned packages.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from qwenvl_jax.data.synth import common


def _phrase(r: np.random.Generator) -> str:
  n = int(r.integers(1, 5))
  words = [common.WORDS[int(i)] for i in r.integers(len(common.WORDS), size=n)]
  style = r.random()
  if style < 0.15:
    words.append(str(int(r.integers(1, 2100))))
  elif style < 0.25:
    words.append(f"${r.integers(1, 500)}.{r.integers(0, 100):02d}")
  text = " ".join(words)
  case = r.random()
  if case < 0.2:
    return text.upper()
  if case < 0.5:
    return text[0].upper() + text[1:]
  return text


def _render_line(text: str, font, angle: float):
  """A rotated 'L' mask of `text` and the quad of its ink box in mask coordinates."""
  x0, y0, x1, y1 = font.getbbox(text)
  pad = 2
  w, h = x1 - x0 + 2 * pad, y1 - y0 + 2 * pad
  mask = Image.new("L", (w, h), 0)
  ImageDraw.Draw(mask).text((pad - x0, pad - y0), text, font=font, fill=255)
  corners = [(pad, pad), (w - pad, pad), (w - pad, h - pad), (pad, h - pad)]
  if not angle:
    return mask, [(float(x), float(y)) for x, y in corners]
  rot = mask.rotate(angle, resample=Image.BICUBIC, expand=True)
  # PIL rotates counter-clockwise about the centre; map the corners the same way (y points down).
  t = math.radians(angle)
  c, s = math.cos(t), math.sin(t)
  cx, cy, ncx, ncy = w / 2, h / 2, rot.width / 2, rot.height / 2
  quad = [(ncx + (x - cx) * c + (y - cy) * s, ncy - (x - cx) * s + (y - cy) * c) for x, y in corners]
  return rot, quad


def _background(r: np.random.Generator, size: int):
  """Texture, plus optionally a paper patch; returns the image and the region text may go in."""
  tex = common.noise_texture(r, size, size, contrast=float(r.uniform(30, 90)))
  img = Image.fromarray(tex)
  region = (0, 0, size, size)
  if r.random() < 0.5:
    m = int(size * r.uniform(0.05, 0.15))
    paper = common.noise_texture(r, size - 2 * m, size - 2 * m, base=r.uniform(200, 250, size=3), contrast=10)
    img.paste(Image.fromarray(paper), (m, m))
    region = (m, m, size - m, size - m)
  return img, region


def generate(index: int, seed: int = 0, size: int = 448, max_lines: int = 8, n_questions: int = 3) -> dict:
  """One SynthDoG-style record (schema in `qwenvl_jax.data.synth`)."""
  r = common.rng(seed, index)
  img, (rx0, ry0, rx1, ry1) = _background(r, size)
  pixels = np.asarray(img, np.float32)
  fonts = common.font_paths()
  scale = size / 448
  words, boxes = [], []
  n_lines = int(r.integers(2, max_lines + 1))
  for _ in range(n_lines * 10):
    if len(words) == n_lines:
      break
    text = _phrase(r)
    font_size = max(8, int(r.uniform(14, 40) * scale))
    font = common.load_font(fonts[int(r.integers(len(fonts)))], font_size)
    angle = 0.0 if r.random() < 0.4 else float(r.uniform(-12, 12))
    mask, quad = _render_line(text, font, angle)
    if mask.width >= rx1 - rx0 - 4 or mask.height >= ry1 - ry0 - 4:
      continue
    ox = int(r.integers(rx0 + 2, rx1 - mask.width - 1))
    oy = int(r.integers(ry0 + 2, ry1 - mask.height - 1))
    quad = [(x + ox, y + oy) for x, y in quad]
    box = [min(p[0] for p in quad), min(p[1] for p in quad), max(p[0] for p in quad), max(p[1] for p in quad)]
    if any(common.boxes_overlap(box, b, margin=4) for b in boxes):
      continue
    # Contrast with what is underneath: dark ink on light ground and vice versa.
    under = pixels[int(box[1]):int(box[3]) + 1, int(box[0]):int(box[2]) + 1].reshape(-1, 3).mean(0)
    ink = r.uniform(0, 70, size=3) if common.luminance(under) > 128 else r.uniform(190, 255, size=3)
    img.paste(tuple(int(v) for v in ink), (ox, oy, ox + mask.width, oy + mask.height), mask)
    boxes.append(box)
    words.append({"text": text, "box": common.clip_box(box, size, size),
                  "quad": [[int(round(min(max(x, 0), size))), int(round(min(max(y, 0), size)))] for x, y in quad],
                  "font_size": font_size})
  # Reading order: top to bottom, then left to right.
  words.sort(key=lambda w: (w["box"][1], w["box"][0]))
  return {
    "id": f"text-{seed}-{index:08d}",
    "image": common.encode_png(img),
    "width": size, "height": size,
    "caption": None,
    "objects": [],
    "words": words,
    "qa": _questions(words, r, n_questions),
  }


def _questions(words: list[dict], r: np.random.Generator, n_questions: int) -> list[dict]:
  if not words:
    return []
  cands = [
    {"question": "What is written at the top of the image?", "answer": words[0]["text"]},
    {"question": "What is written at the bottom of the image?",
     "answer": max(words, key=lambda w: w["box"][3])["text"]},
    {"question": "How many lines of text are there?", "answer": str(len(words))},
  ]
  sizes = sorted(w["font_size"] for w in words)
  if len(sizes) == 1 or sizes[-1] > sizes[-2]:
    cands.append({"question": "What is written in the largest letters?",
                  "answer": max(words, key=lambda w: w["font_size"])["text"]})
  for w in words:
    toks = w["text"].split()
    for a, b in zip(toks, toks[1:]):
      if sum(x["text"].split().count(a) for x in words) == 1:
        cands.append({"question": f"Which word comes after \"{a}\"?", "answer": b})
        break
  picks = r.choice(len(cands), size=min(n_questions, len(cands)), replace=False)
  return [cands[int(i)] for i in sorted(picks)]
