"""Scenes of coloured shapes with exact pixel boxes: captioning, grounding, referring and VQA from one image.

Every referring expression is unique by construction: a (colour, shape) pair occurs at most twice, and a
twice-occurring pair is told apart by where its two members sit relative to each other ("on the left" /
"on the right" along the axis on which their centres are further apart). Captions mention each
(colour, shape) group once ("two red circles"), with a character span, so grounded captioning can attach
every box of the group to the same `<ref>`, as GRIT does ("bees" with two boxes).
"""

from __future__ import annotations

import collections
import math

import numpy as np
from PIL import Image, ImageDraw

from qwenvl_jax.data.synth import common

COLORS = {
  "red": (214, 39, 40), "green": (44, 160, 44), "blue": (31, 90, 220), "yellow": (240, 205, 30),
  "orange": (255, 127, 14), "purple": (140, 70, 190), "pink": (240, 110, 180), "cyan": (23, 190, 207),
  "brown": (140, 86, 75), "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle", "star", "diamond", "hexagon")
PLURAL = {s: s + "s" for s in SHAPES}
RADIUS = (0.06, 0.15)  # default range of shape radii, as fractions of the image side

CAPTION_TEMPLATES = (
  "{objects} on a {bg} background.",
  "A picture of {objects}.",
  "This image shows {objects}.",
  "{objects}.",
)


def _a(word: str) -> str:
  return "an" if word[0] in "aeiou" else "a"


def _polygon(shape: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
  def ring(n, radius, phase):
    return [(cx + radius * math.cos(phase + 2 * math.pi * k / n), cy + radius * math.sin(phase + 2 * math.pi * k / n))
            for k in range(n)]
  if shape == "square":
    h = r / math.sqrt(2) * 1.2
    return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
  if shape == "triangle":
    return ring(3, r, -math.pi / 2 + rot)
  if shape == "diamond":
    return [(cx, cy - r), (cx + 0.7 * r, cy), (cx, cy + r), (cx - 0.7 * r, cy)]
  if shape == "hexagon":
    return ring(6, r, rot)
  if shape == "star":
    outer, inner = ring(5, r, -math.pi / 2 + rot), ring(5, 0.45 * r, -math.pi / 2 + rot + math.pi / 5)
    return [p for pair in zip(outer, inner) for p in pair]
  raise ValueError(shape)


def _draw(draw: ImageDraw.ImageDraw, shape, cx, cy, r, rot, fill) -> list[float]:
  """Draws one shape and returns its tight float box."""
  if shape == "circle":
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    return [cx - r, cy - r, cx + r, cy + r]
  pts = _polygon(shape, cx, cy, r, rot)
  draw.polygon(pts, fill=fill)
  xs, ys = [p[0] for p in pts], [p[1] for p in pts]
  return [min(xs), min(ys), max(xs), max(ys)]


def _sample_objects(r: np.random.Generator, size: int, max_objects: int,
                    radius: tuple[float, float] = RADIUS) -> list[dict]:
  n = int(r.integers(1, max_objects + 1))
  placed, counts = [], {}
  for _ in range(n * 30):
    if len(placed) == n:
      break
    color = list(COLORS)[int(r.integers(len(COLORS)))]
    shape = SHAPES[int(r.integers(len(SHAPES)))]
    if counts.get((color, shape), 0) >= 2:
      continue
    rad = float(r.uniform(*radius) * size)
    cx, cy = (float(v) for v in r.uniform(rad + 2, size - rad - 2, size=2))
    footprint = (cx - rad, cy - rad, cx + rad, cy + rad)
    if any(common.boxes_overlap(footprint, o["footprint"], margin=3) for o in placed):
      continue
    counts[(color, shape)] = counts.get((color, shape), 0) + 1
    placed.append({"color": color, "shape": shape, "cx": cx, "cy": cy, "r": rad,
                   "rot": float(r.uniform(-0.3, 0.3)), "footprint": footprint})
  return placed


def _referring(objs: list[dict], r: np.random.Generator, size: int) -> list[str]:
  """A unique referring expression per object."""
  phrases = []
  for i, o in enumerate(objs):
    base = f"the {o['color']} {o['shape']}"
    twins = [p for j, p in enumerate(objs) if j != i and (p["color"], p["shape"]) == (o["color"], o["shape"])]
    if twins:
      t = twins[0]
      if abs(o["cx"] - t["cx"]) >= abs(o["cy"] - t["cy"]):
        phrases.append(f"{base} on the {'left' if o['cx'] < t['cx'] else 'right'}")
      else:
        phrases.append(f"{base} at the {'top' if o['cy'] < t['cy'] else 'bottom'}")
    elif r.random() < 0.5:
      region = common.region_name(o["cx"], o["cy"], size, size)
      where = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
               "center": "in the center"}.get(region, f"in the {region}")
      phrases.append(f"{base} {where}")
    else:
      phrases.append(base)
  return phrases


def _caption(objs: list[dict], r: np.random.Generator, bg: str):
  """Caption text and, per object, the character span of the mention that covers it."""
  groups: dict = {}
  for i, o in enumerate(objs):
    groups.setdefault((o["color"], o["shape"]), []).append(i)
  keys = list(groups)
  r.shuffle(keys)
  mentions = []
  for color, shape in keys:
    k = len(groups[(color, shape)])
    mentions.append(f"{_a(color)} {color} {shape}" if k == 1 else f"{common.number_word(k)} {color} {PLURAL[shape]}")
  template = CAPTION_TEMPLATES[int(r.integers(len(CAPTION_TEMPLATES)))]
  prefix, suffix = template.split("{objects}")
  suffix = suffix.format(bg=bg)
  text, spans = prefix, {}
  for m, key in enumerate(keys):
    if m:
      text += " and " if m == len(keys) - 1 else ", "
    mention = mentions[m]
    if not text:  # sentence start
      mention = mention[0].upper() + mention[1:]
    for i in groups[key]:
      spans[i] = [len(text), len(text) + len(mention)]
    text += mention
  return text + suffix, [spans[i] for i in range(len(objs))]


def _questions(objs, phrases, r: np.random.Generator, size: int, n_questions: int) -> list[dict]:
  cands = [{"question": "How many shapes are there?", "answer": str(len(objs))}]
  shape_counts = {s: sum(o["shape"] == s for o in objs) for s in SHAPES}
  color_counts = {c: sum(o["color"] == c for o in objs) for c in COLORS}
  s = SHAPES[int(r.integers(len(SHAPES)))]
  cands.append({"question": f"How many {PLURAL[s]} are there?", "answer": str(shape_counts[s])})
  c = list(COLORS)[int(r.integers(len(COLORS)))]
  cands.append({"question": f"How many {c} shapes are there?", "answer": str(color_counts[c])})
  cands.append({"question": f"Is there {_a(c)} {c} {s}?",
                "answer": "yes" if any(o["color"] == c and o["shape"] == s for o in objs) else "no"})
  pair_counts = collections.Counter((o["color"], o["shape"]) for o in objs)
  for o in objs:
    if shape_counts[o["shape"]] == 1:
      cands.append({"question": f"What color is the {o['shape']}?", "answer": o["color"]})
    if color_counts[o["color"]] == 1:
      cands.append({"question": f"What shape is the {o['color']} object?", "answer": o["shape"]})
    if pair_counts[(o["color"], o["shape"])] == 1:  # named without a location, so the answer is not given away
      cands.append({"question": f"Where is the {o['color']} {o['shape']}?",
                    "answer": common.region_name(o["cx"], o["cy"], size, size)})
  for a, b in zip(range(len(objs)), range(1, len(objs))):
    if abs(objs[a]["cx"] - objs[b]["cx"]) > 0.1 * size:
      left = objs[a]["cx"] < objs[b]["cx"]
      cands.append({"question": f"Is {phrases[a]} to the left of {phrases[b]}?", "answer": "yes" if left else "no"})
  picks = r.choice(len(cands), size=min(n_questions, len(cands)), replace=False)
  return [cands[int(i)] for i in sorted(picks)]


def generate(index: int, seed: int = 0, size: int = 224, max_objects: int = 5, n_questions: int = 3,
             radius: tuple[float, float] = RADIUS) -> dict:
  """One shapes record (schema in `qwenvl_jax.data.synth`); `radius` is the range of shape radii as
  fractions of the image side."""
  r = common.rng(seed, index)
  plain = r.random() < 0.5
  tex = common.noise_texture(r, size, size, base=r.uniform(170, 245, size=3), contrast=8 if plain else 25,
                             grain=0)
  img = Image.fromarray(tex)
  draw = ImageDraw.Draw(img)
  objs = _sample_objects(r, size, max_objects, radius)
  phrases = _referring(objs, r, size)
  caption, spans = _caption(objs, r, "plain" if plain else "textured")
  objects = []
  for o, phrase, span in zip(objs, phrases, spans):
    jitter = r.integers(-12, 13, size=3)
    fill = tuple(int(np.clip(v + j, 0, 255)) for v, j in zip(COLORS[o["color"]], jitter))
    box = _draw(draw, o["shape"], o["cx"], o["cy"], o["r"], o["rot"], fill)
    objects.append({"phrase": phrase, "box": common.clip_box(box, size, size), "span": span,
                    "category": o["shape"], "color": o["color"]})
  return {
    "id": f"shapes-{seed}-{index:08d}",
    "image": common.encode_png(img),
    "width": size, "height": size,
    "caption": caption,
    "objects": objects,
    "words": [],
    "qa": _questions(objs, phrases, r, size, n_questions),
  }
