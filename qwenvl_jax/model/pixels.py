"""Image normalisation on the device: images travel as uint8 (resized, not normalised) and become the
ViT's float32 input here, with the released pipeline's operations in its order (/255, - mean, / std, each
rounded to float32), so the result is bit-identical to `data.preprocess.normalize` on the host.

uint8 is 4x smaller than float32 on the host -> device link and in the step's batch argument (at the
paper's stage-2 batch the float32 pixels were 43% of the per-chip arguments). float32 input is taken as
already normalised and passes through unchanged.
"""

from __future__ import annotations

import numpy as np

# OpenAI CLIP's per-channel statistics, as the released Qwen-VL preprocessing uses them.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def normalize_on_device(images):
  """uint8 [..., 3] -> float32 normalised; any float input is returned unchanged (already normalised).

  A lookup in the 256 x 3 table of the host's results rather than the arithmetic: XLA may rewrite
  `x / c` as `x * (1 / c)` (1 ulp off for ~4% of the values), a table is exact by construction."""
  import jax.numpy as jnp

  if images.dtype != jnp.uint8:
    return images
  table = jnp.asarray(_TABLE)
  return table[images.astype(jnp.int32), jnp.arange(3)]


def normalize_host(pixels: np.ndarray) -> np.ndarray:
  """The same normalisation in numpy (uint8 -> float32); float input is returned as float32."""
  if pixels.dtype != np.uint8:
    return np.asarray(pixels, np.float32)
  x = pixels.astype(np.float32) / np.float32(255.0)
  return (x - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)


def stack_rows(rows, batch: int, size: int, slots: int) -> np.ndarray:
  """Per-row lists of [S, S, 3] images -> [batch, slots, S, S, 3], zeros where unused.

  uint8 when every image is uint8 (the compact form, normalised on the device); otherwise float32
  with the uint8 ones normalised here, so a request may mix both."""
  imgs = [img for row in rows for img in row]
  compact = all(np.asarray(img).dtype == np.uint8 for img in imgs)
  out = np.zeros((batch, slots, size, size, 3), np.uint8 if compact else np.float32)
  for i, row in enumerate(rows):
    for j, img in enumerate(row):
      out[i, j] = img if compact else normalize_host(np.asarray(img))
  return out


LANES = 128  # a TPU vreg's minor dimension


def is_packed(images) -> bool:
  """Whether a batch's images (numpy, jax or abstract array) are in `pack_lanes`'s form. The batch
  contract's images are uint8 or float32 pixels, never uint32: the dtype alone tells them apart
  (the step's batch and each microbatch sliced out of it alike)."""
  return images.dtype == np.uint32


def pack_lanes(images: np.ndarray) -> np.ndarray:
  """Host side: uint8 [..., S, S, 3] -> the same bytes as little-endian uint32 words, shaped
  [..., S*S*3 / 512, 128] (or [..., S, S*3 / 4] where 512 does not divide S*S*3); unchanged when S
  is not a multiple of 4, or the images are not uint8 (float32 pixels, already packed). Why: a
  [B, M, S, S, 3] uint8 array's minor dimension of 3 makes the TPU lay it out with the row dimension
  minor-most, and uint8 tiles differently from the 32-bit values the ViT's input is computed in;
  slicing one microbatch's rows out of either costs a relayout copy of the whole step's pixels
  (1 GiB per chip at the paper's stage-2 batch). 32-bit words in 128-wide rows are tiled alike
  everywhere. A view on the host; `unpack_lanes` inverts it."""
  if images.dtype != np.uint8:
    return images
  *lead, s, s2, c = images.shape
  n = s * s2 * c
  if n % (4 * LANES) and (s2 * c) % 4:
    return images
  words = np.ascontiguousarray(images).reshape(*lead, n // 4, 4).view("<u4")[..., 0]
  return words.reshape(*lead, n // (4 * LANES), LANES) if n % (4 * LANES) == 0 \
      else words.reshape(*lead, s, s2 * c // 4)


def unpack_lanes(words, size: int):
  """Device side (jnp): `pack_lanes`'s output -> uint8 [..., size, size, 3] (bytes by shifts, so
  the result does not depend on the device's byte order)."""
  import jax.numpy as jnp

  lead = words.shape[:-2]
  shifts = jnp.arange(4, dtype=jnp.uint32) * 8
  pixels_ = ((words[..., None] >> shifts) & 0xFF).astype(jnp.uint8)
  return pixels_.reshape(*lead, size, size, 3)


def abstract_packed(shape: tuple) -> tuple:
  """(shape, dtype) `pack_lanes` gives for uint8 images of `shape` (AOT batches)."""
  out = pack_lanes(np.zeros((1, *shape[-3:]), np.uint8))
  return (*shape[:-3], *out.shape[1:]), out.dtype


_TABLE = normalize_host(np.arange(256, dtype=np.uint8)[:, None].repeat(3, axis=1))  # [256, 3]
