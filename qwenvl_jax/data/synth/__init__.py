"""Seeded, local synthetic data: learnable image-text sets on a machine with no network.

Kinds: `shapes` (coloured shapes: captions, grounding, referring, VQA), `text` (SynthDoG-style rendered
lines: OCR, text VQA), `docs` (PyMuPDF pages: OCR, document VQA).

Raw record schema (shared by every generator, the raw JSONL/ArrayRecord sources and `data.tasks`):

  id:       str, unique within a set ("{kind}-{seed}-{index:08d}")
  image:    PNG bytes as generated; a path (relative to the JSONL's directory) once written to disk
  width, height: int, pixel size of the image
  caption:  str or None
  objects:  [{"phrase": str, "box": [x1, y1, x2, y2], "span": [start, end]?, ...}]
            box in integer pixels (x2/y2 exclusive edges, clipped to the image); phrase is a referring
            expression unique in the image; span, when present, marks the caption characters that
            mention the object (several objects may share one span: "two red circles")
  words:    [{"text": str, "box": [x1, y1, x2, y2], "quad": [[x, y] x 4]}], pixels; quad runs top-left,
            top-right, bottom-right, bottom-left in the text's reading direction; a "word" may be a line
  qa:       [{"question": str, "answer": str}]

Generators may add extra keys (e.g. objects' "category"/"color", docs' "doc_type"); readers keep them.
Sample i of a set seeded s depends only on (s, i), so `generate` gives the same records for any number
of workers.
"""

from __future__ import annotations

import functools
import multiprocessing
from typing import Callable, Iterator

DEFAULT_SIZE = {"shapes": 224, "text": 448, "docs": 448}
# Bounds on the image side: an RGB image of side s costs 3*s*s bytes several times over while it is
# drawn and PNG-encoded (text at 4096 peaked at 0.95 GB per worker); 100000 was OOM-killed.
MIN_SIZE, MAX_SIZE = 32, 2048


def check_size(size: int | None):
  """Raises ValueError for an image side outside [MIN_SIZE, MAX_SIZE] (None: the kind's default)."""
  if size is not None and not MIN_SIZE <= size <= MAX_SIZE:
    raise ValueError(f"--size {size}: image side must be between {MIN_SIZE} and {MAX_SIZE} pixels")


def generator(kind: str) -> Callable[..., dict]:
  """The per-sample function `fn(index, seed=, size=) -> record` of a kind."""
  if kind == "shapes":
    from qwenvl_jax.data.synth import shapes as mod
  elif kind == "text":
    from qwenvl_jax.data.synth import text as mod
  elif kind == "docs":
    from qwenvl_jax.data.synth import docs as mod
  else:
    raise ValueError(f"unknown synthetic kind {kind!r}; expected one of {sorted(DEFAULT_SIZE)}")
  return mod.generate


def _one(index: int, kind: str, seed: int, size: int, options: dict) -> dict:
  return generator(kind)(index, seed=seed, size=size, **options)


def generate(kind: str, n: int, seed: int = 0, size: int | None = None, workers: int = 1,
             start: int = 0, **options) -> Iterator[dict]:
  """Yields records `start .. start+n-1` of the set `(kind, seed)` in order, using `workers` processes.
  `options` go to the kind's generator (shapes: `max_objects`, `radius`).

  Workers are spawned (not forked) so this is safe in a process that already imported JAX.
  """
  check_size(size)
  size = size or DEFAULT_SIZE[kind]
  fn = functools.partial(_one, kind=kind, seed=seed, size=size, options=options)
  indices = range(start, start + n)
  if workers <= 1 or n < 4 * workers:
    yield from map(fn, indices)
    return
  with multiprocessing.get_context("spawn").Pool(workers) as pool:
    yield from pool.imap(fn, indices, chunksize=max(1, min(64, n // (8 * workers))))
