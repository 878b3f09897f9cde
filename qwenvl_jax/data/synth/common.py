"""Helpers shared by the synthetic generators: per-sample RNGs, PNG encoding, textures, fonts, words.

Every sample draws from `rng(seed, index)`, its own generator keyed by (seed, index), so a sample does not
depend on how many workers produced the set or in which order; that is what makes parallel generation
deterministic.
"""

from __future__ import annotations

import functools
import io
import os
import pathlib

import numpy as np
from PIL import Image, ImageFont

# A small vocabulary for rendered text, so generation needs no corpus or network.
WORDS = """
the of and to in is was for on are with as be at by this have from or had not but what all were when we there
can an your which their said if do will each about how up out them then she many some so these would other into
has more her two like him see time could no make than first been its who now people my made over did down only
way find use may water long little very after words called just where most know get through back much before go
good new write our used me man too any day same right look think also around another came come work three word
must because does part even place well such here take why things help put years different away again off went old
number great tell men say small every found still between name should home big give air line set own under read
last never us left end along while might next sound below saw something thought both few those always looked show
large often together asked house world going want school important until form food keep children feet land side
without boy once animals life enough took sometimes four head above kind began almost live page got earth need far
hand high year mother light parts country father let night following picture being study second eyes soon times
story boys since white days ever paper hard near sentence better best across during today others however sure means
knew try told young miles sun ways thing whole hear example heard several change answer room sea against top turned
learn point city play toward five using himself usually money seen car morning given open river market garden window
station coffee bridge letter office green street music table winter summer spring autumn north south east west
""".split()

# Pixel-exact fonts: PIL's bundled default plus matplotlib's TTFs (pinned with matplotlib, so the same files on
# every machine). Symbol, math and "Display" fonts lack ordinary glyphs and are left out.
_FONT_SKIP = ("Sym", "cm", "Display", "LastResort", "STIXNonUni", "STIXSize")


@functools.lru_cache(maxsize=None)
def font_paths() -> tuple[str, ...]:
  """Sorted TTF paths usable for Latin text; "" stands for PIL's default font."""
  paths = [""]
  try:
    import matplotlib
    font_dir = pathlib.Path(matplotlib.__file__).parent / "mpl-data" / "fonts" / "ttf"
    paths += sorted(str(p) for p in font_dir.glob("*.ttf") if not any(s in p.name for s in _FONT_SKIP))
  except ImportError:  # matplotlib is optional: PIL's default font alone still works
    pass
  return tuple(paths)


@functools.lru_cache(maxsize=512)
def load_font(path: str, size: int) -> ImageFont.FreeTypeFont:
  return ImageFont.load_default(size) if not path else ImageFont.truetype(path, size)


def rng(seed: int, index: int) -> np.random.Generator:
  """The generator for sample `index` of the set seeded `seed`."""
  return np.random.default_rng([int(seed), int(index)])


def encode_png(img: Image.Image) -> bytes:
  """Deterministic PNG bytes (zlib is deterministic for a fixed level); level 1 for speed."""
  buf = io.BytesIO()
  img.save(buf, format="PNG", compress_level=1)
  return buf.getvalue()


def _resize_field(field: np.ndarray, w: int, h: int) -> np.ndarray:
  """Bicubic resize of a float HxWxC field, channel by channel in PIL's float mode."""
  return np.stack([np.asarray(Image.fromarray(field[..., c].astype(np.float32), "F").resize((w, h), Image.BICUBIC))
                   for c in range(field.shape[-1])], axis=-1)


def noise_texture(r: np.random.Generator, w: int, h: int, base=None, contrast: float = 60.0,
                  grain: float = 4.0) -> np.ndarray:
  """A uint8 HxWx3 texture: multi-octave colour noise around `base` (random if None).

  The octaves are summed on a small grid and upsampled once (cheap at any size). `grain` is the std of
  per-pixel noise; it is what makes PNGs large and slow, so keep it 0 where the texture only needs to be
  non-flat.
  """
  base = r.uniform(40, 230, size=3) if base is None else np.asarray(base, np.float32)
  grid = 17
  low = np.broadcast_to(base.astype(np.float32), (grid, grid, 3)).copy()
  for cells, weight in ((3, 1.0), (7, 0.6), (17, 0.35)):
    field = r.normal(0, weight * contrast, size=(cells, cells, 3))
    low += field if cells == grid else _resize_field(field, grid, grid)
  img = Image.fromarray(np.clip(low, 0, 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
  out = np.asarray(img)
  if grain:  # fine grain, shared by the channels
    out = np.clip(out + r.normal(0, grain, size=(h, w, 1)), 0, 255).astype(np.uint8)
  return out


def luminance(rgb) -> float:
  r, g, b = (float(c) for c in rgb[:3])
  return 0.299 * r + 0.587 * g + 0.114 * b


def clip_box(box, w: int, h: int) -> list[int]:
  """Pixel xyxy box as ints: floor the min corner, ceil the max corner, clip to the image."""
  x1, y1, x2, y2 = box
  return [max(0, int(np.floor(x1))), max(0, int(np.floor(y1))), min(w, int(np.ceil(x2))), min(h, int(np.ceil(y2)))]


def boxes_overlap(a, b, margin: float = 0.0) -> bool:
  return not (a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1])


def region_name(cx: float, cy: float, w: int, h: int) -> str:
  """Which ninth of the image a point lies in: "top left", "top", ..., "center", ..., "bottom right"."""
  col = min(2, int(3 * cx / w))
  row = min(2, int(3 * cy / h))
  vert = ("top", "", "bottom")[row]
  horiz = ("left", "", "right")[col]
  return " ".join(p for p in (vert, horiz) if p) or "center"


_NUMBER_WORDS = "zero one two three four five six seven eight nine ten".split()


def number_word(n: int) -> str:
  return _NUMBER_WORDS[n] if 0 <= n < len(_NUMBER_WORDS) else str(n)


def cpu_count() -> int:
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
