"""An easier variant of the project's text images (qwenvl_jax/data/synth/text.py) for the 2-core runs.

One word per image, drawn from the first `n_words` words of the generator's word list, upright, in
large type on a light, lightly textured background. The project's SynthDoG-style set (2-8 rotated
lines of 1-4 words each, 14-40 px type at 448 px) cannot be read at the 96 px resolution and the
few thousand steps these experiments can afford, so the difficulty knobs are here: word-list size,
font size range, fonts. Records follow the shared raw schema (`qwenvl_jax.data.synth`): `words`
with box and quad (so the OCR-with-grounding task applies) and one question, "What is written in the
image?", whose exact-match accuracy is the word accuracy (one word per image).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from qwenvl_jax.data.synth import common

READ_QUESTION = "What is written in the image?"
# Fonts whose glyphs stay legible at ~16 px: the upright DejaVu faces.
FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf")


def word_list(n_words: int) -> list[str]:
  """The first `n_words` distinct words of at least 3 letters from the generator's vocabulary."""
  words = list(dict.fromkeys(w for w in common.WORDS if len(w) >= 3))
  if not 1 <= n_words <= len(words):
    raise ValueError(f"n_words must be in [1, {len(words)}], got {n_words}")
  return words[:n_words]


def _font_paths() -> list[str]:
  paths = [p for p in common.font_paths() if p.rsplit("/", 1)[-1] in FONTS]
  return paths or [""]  # PIL's default font when matplotlib's fonts are missing


def generate(index: int, seed: int = 0, size: int = 96, n_words: int = 100,
             font_px: tuple[int, int] = (16, 24), jitter: int | None = None, n_fonts: int = len(FONTS)) -> dict:
  """One record: a single word, its box/quad, and the reading question. The word sits anywhere
  (`jitter` None) or centred up to `jitter` px off; it is set in one of the first `n_fonts` fonts."""
  r = common.rng(seed, index)
  words, fonts = word_list(n_words), _font_paths()[:max(1, n_fonts)]
  text = words[int(r.integers(len(words)))]
  img = Image.fromarray(common.noise_texture(r, size, size, base=r.uniform(200, 250, size=3),
                                             contrast=10, grain=0))
  for _ in range(20):  # shrink the type until the word fits
    font = common.load_font(fonts[int(r.integers(len(fonts)))], int(r.integers(font_px[0], font_px[1] + 1)))
    x0, y0, x1, y1 = font.getbbox(text)
    if x1 - x0 <= size - 6:
      break
    font_px = (max(8, font_px[0] - 2), max(8, font_px[1] - 2))
  w, h = x1 - x0, y1 - y0
  if jitter is None:
    ox = int(r.integers(2, max(3, size - w - 2)))
    oy = int(r.integers(2, max(3, size - h - 2)))
  else:
    ox = int(np.clip((size - w) // 2 + r.integers(-jitter, jitter + 1), 0, max(0, size - w)))
    oy = int(np.clip((size - h) // 2 + r.integers(-jitter, jitter + 1), 0, max(0, size - h)))
  ink = tuple(int(v) for v in r.uniform(0, 80, size=3))
  ImageDraw.Draw(img).text((ox - x0, oy - y0), text, font=font, fill=ink)
  box = common.clip_box((ox, oy, ox + w, oy + h), size, size)
  quad = [[box[0], box[1]], [box[2], box[1]], [box[2], box[3]], [box[0], box[3]]]
  return {
      "id": f"word-{seed}-{index:08d}",
      "image": common.encode_png(img),
      "width": size, "height": size,
      "caption": None,
      "objects": [],
      "words": [{"text": text, "box": box, "quad": quad}],
      "qa": [{"question": READ_QUESTION, "answer": text}],
  }
