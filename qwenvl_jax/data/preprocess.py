"""Image loading and the reference preprocessing (RGB, PIL bicubic resize to S x S, /255, CLIP mean/std).

The converted checkpoint must see exactly the pixels the released model saw, so this follows the released
`visual.py` step by step and uses PIL (not jax.image) for the resize: PIL's bicubic differs from the others.
Decoding is forced with `Image.load()` here, at load time, so a corrupt or truncated file fails with a
`CorruptImageError` naming it instead of surfacing later inside a worker as an anonymous PIL error.
"""

from __future__ import annotations

import io
import os
import pathlib
from typing import Union

import numpy as np
from PIL import Image

# OpenAI CLIP normalisation constants, as in the released Qwen-VL `visual.py` (one home: the model
# normalises uint8 pixels on the device with the same numbers, model/pixels.py).
from qwenvl_jax.model.pixels import CLIP_MEAN, CLIP_STD  # noqa: E402

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview]


class CorruptImageError(ValueError):
  """An image is missing, unreadable, corrupt or truncated; `name` says which one."""

  def __init__(self, name: str, reason: str):
    what = "missing image" if reason == "file not found" else "corrupt image"
    super().__init__(f"{what} {name}: {reason}")
    self.name = name
    self.reason = reason


def load_image(src: ImageSource, name: str | None = None) -> Image.Image:
  """Opens and fully decodes an image from a path or encoded bytes; returns it in RGB.

  `name` labels byte inputs in error messages (a record id, an archive member); paths label themselves.
  """
  if isinstance(src, (bytes, bytearray, memoryview)):
    label = name or "<bytes>"
    fp = io.BytesIO(bytes(src))
  else:
    label = name or os.fspath(src)
    if not pathlib.Path(src).is_file():
      raise CorruptImageError(label, "file not found")
    fp = src
  try:
    with Image.open(fp) as img:
      img.load()  # Image.open is lazy: force the decode so truncation is caught here.
      return img.convert("RGB")
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise CorruptImageError(label, f"{type(e).__name__}: {e}") from None


def resize(img: Image.Image, size: int) -> Image.Image:
  """The reference resize: square, no aspect preservation, PIL bicubic."""
  return img.convert("RGB").resize((size, size), resample=Image.BICUBIC)


_MEAN32 = np.asarray(CLIP_MEAN, np.float32)
_STD32 = np.asarray(CLIP_STD, np.float32)


def normalize(pixels_uint8: np.ndarray) -> np.ndarray:
  """uint8 HWC -> float32 HWC, /255 then CLIP mean/std per channel.

  The reference's float32 operations in the reference's order, but in place: one 2.4 MB buffer per 448px
  image instead of four, which matters in worker processes where each fresh buffer costs page faults.
  """
  x = pixels_uint8.astype(np.float32)
  x /= np.float32(255.0)
  x -= _MEAN32
  x /= _STD32
  return x


def preprocess(img: Image.Image, size: int = 448) -> np.ndarray:
  """A PIL image -> the model's float32 [size, size, 3] input (normalised on the host)."""
  return normalize(pixels(img, size))


def pixels(img: Image.Image, size: int = 448) -> np.ndarray:
  """A PIL image -> uint8 [size, size, 3], resized but not normalised: what travels to the device
  (the model normalises it there, bit-identically to `normalize`: model/pixels.py)."""
  return np.asarray(resize(img, size))


def load_pixels(src: ImageSource, size: int = 448, name: str | None = None) -> np.ndarray:
  """`load_image` + `pixels`; raises `CorruptImageError` for a bad image."""
  return pixels(load_image(src, name=name), size)


def load_and_preprocess(src: ImageSource, size: int = 448, name: str | None = None) -> np.ndarray:
  """`load_image` + `preprocess`; raises `CorruptImageError` for a bad image."""
  return preprocess(load_image(src, name=name), size)
