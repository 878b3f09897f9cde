"""The training batch contract (the one definition) and a synthetic batch source for tests/benchmarks.

A batch is a dict of numpy arrays holding this host's rows of one optimizer step (all microbatches):

  tokens       int32   [B, T]  token ids (image spans as `<img> <imgpad>*Q </img>`)
  loss_mask    bool    [B, T]  token t is a training target. The step predicts tokens[:, 1:] from
                               logits[:, :-1], weighted by loss_mask[:, 1:], and only where
                               segment_ids[:, 1:] == segment_ids[:, :-1] != 0 (never across a
                               packing boundary or into padding)
  segment_ids  int32   [B, T]  0 = padding, 1, 2, ... = packed samples of the row
  positions    int32   [B, T]  restart at 0 in every segment
  images       uint8   [B, M, S, S, 3]  pixels resized to S x S (PIL bicubic, `data.preprocess.pixels`)
                               but NOT normalised: the model normalises them on the device
                               (`model/pixels.py`, bit-identical to the released pipeline), so the
                               host -> device transfer and the step's batch argument are 4x smaller
                               than float32. M = most images a row may hold (zeros where unused);
                               omitted for text-only batches. float32 is accepted as already
                               normalised pixels (host-side preprocessing, tests).
  num_images   int32   [B]     real images per row; present iff `images` is

B = global batch / process count, T = seq_len, S = the model's image size. The model call is
`model(tokens, images, num_images=..., segment_ids=..., positions=...)`.

Iterators yielding batches must also expose `get_state()` / `set_state(state)` (grain iterators do),
so the data position is saved in the same checkpoint as the model and a resume is exact.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from qwenvl_jax.config import ModelConfig

REQUIRED = {"tokens": np.int32, "loss_mask": np.bool_, "segment_ids": np.int32, "positions": np.int32}
IMAGE_KEYS = {"images": np.uint8, "num_images": np.int32}
IMAGE_DTYPES = (np.uint8, np.float32)  # uint8: the contract; float32: already normalised


class BatchError(ValueError):
  """A batch does not follow the contract above; the message names the field."""


def validate_batch(batch: Mapping[str, Any], rows: int, seq_len: int, model_cfg: ModelConfig | None = None,
                   check_spans: bool = False):
  """Raises BatchError unless `batch` follows the contract (shapes, dtypes, keys)."""
  missing = sorted(set(REQUIRED) - set(batch))
  if missing:
    raise BatchError(f"batch is missing {missing}; got keys {sorted(batch)} (contract: "
                     f"qwenvl_jax/train/batch.py)")
  if ("images" in batch) != ("num_images" in batch):
    raise BatchError("batch must have both 'images' and 'num_images' or neither")
  extra = sorted(set(batch) - set(REQUIRED) - set(IMAGE_KEYS))
  if extra:
    raise BatchError(f"batch has unknown keys {extra}")
  for key, dtype in {**REQUIRED, **IMAGE_KEYS}.items():
    if key not in batch:
      continue
    x = np.asarray(batch[key])
    if key == "images" and x.dtype in IMAGE_DTYPES:
      continue
    if x.dtype != dtype:
      raise BatchError(f"batch['{key}'] has dtype {x.dtype}, expected {np.dtype(dtype)}")
    if key in REQUIRED and x.shape != (rows, seq_len):
      raise BatchError(f"batch['{key}'] has shape {x.shape}, expected {(rows, seq_len)}")
  if "images" in batch:
    images, n = np.asarray(batch["images"]), np.asarray(batch["num_images"])
    if images.ndim != 5 or images.shape[0] != rows or images.shape[2] != images.shape[3] \
        or images.shape[4] != 3:
      raise BatchError(f"batch['images'] has shape {images.shape}, expected [{rows}, M, S, S, 3]")
    if model_cfg is not None and images.shape[2] != model_cfg.vision.image_size:
      raise BatchError(f"batch['images'] are {images.shape[2]}px, the model expects "
                       f"{model_cfg.vision.image_size}px (model.vision.image_size)")
    if n.shape != (rows,) or n.min(initial=0) < 0 or n.max(initial=0) > images.shape[1]:
      raise BatchError(f"batch['num_images'] must be [{rows}] in [0, {images.shape[1]}]")
  if check_spans and model_cfg is not None:
    from qwenvl_jax.model.qwenvl import check_image_spans
    counts = batch["num_images"] if "images" in batch else np.zeros(rows, np.int32)
    check_image_spans(batch["tokens"], counts, model_cfg.tokens_per_image, model_cfg.image_start_id,
                      model_cfg.image_end_id)


# --------------------------------------------------------------------------------------------
# Synthetic data: learnable, image-dependent, deterministic per (seed, step, row).
#
# A sample is `[<img> pad*Q </img>]*k` then text. The image of a sample is a flat colour of one of
# `N_CLASSES` classes plus noise; the first text token names the class (learnable only through the
# vision tower), the rest follow a fixed random bigram permutation (learnable by the LLM). Targets
# are the text tokens; image spans are context only.

N_CLASSES = 8


def _text_vocab(cfg: ModelConfig) -> int:
  return min(cfg.image_start_id, cfg.image_end_id, cfg.image_pad_id)


def _bigram(cfg: ModelConfig) -> np.ndarray:
  return np.random.default_rng(1234).permutation(_text_vocab(cfg)).astype(np.int32)


def _class_colours(seed: int = 99) -> np.ndarray:
  return np.random.default_rng(seed).uniform(-1.5, 1.5, size=(N_CLASSES, 3)).astype(np.float32)


def _to_pixels(normalised: np.ndarray) -> np.ndarray:
  """Normalised values -> the uint8 pixels that normalise to (nearly) them."""
  from qwenvl_jax.model.pixels import CLIP_MEAN, CLIP_STD
  x = (normalised * np.asarray(CLIP_STD) + np.asarray(CLIP_MEAN)) * 255.0
  return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _sample(rng, cfg: ModelConfig, length: int, n_img: int, image_size: int, perm, colours):
  """One sample of exactly `length` tokens with `n_img` images: (tokens, mask, images)."""
  cls = int(rng.integers(N_CLASSES))
  tokens = cfg.image_span * n_img
  n_text = length - len(tokens)
  text = [1 + cls] if n_img else [int(rng.integers(_text_vocab(cfg)))]
  while len(text) < n_text:
    text.append(int(perm[text[-1]]))
  mask = [False] * len(tokens) + [True] * n_text
  mask[0] = False  # the first token of a sample is never a target
  images = [_to_pixels(colours[cls][None, None, :] + 0.1 * rng.standard_normal((image_size, image_size, 3)))
            for _ in range(n_img)]
  return tokens + text[:n_text], mask, images


def make_synthetic_batch(cfg: ModelConfig, rows: int, seq_len: int, max_images: int = 1,
                         image_size: int | None = None, packed: bool = False, seed: int = 0,
                         step: int = 0, row_offset: int = 0) -> dict[str, np.ndarray]:
  """Rows `row_offset .. row_offset + rows` of the global synthetic batch for `step`.

  Every row depends only on (seed, step, global row index), so any split over hosts yields the same
  global batch. `packed=True` fills each row with several samples (segments 1, 2, ...).
  """
  s = image_size or cfg.vision.image_size
  span = cfg.tokens_per_image + 2
  perm, colours = _bigram(cfg), _class_colours()
  out = dict(tokens=np.zeros((rows, seq_len), np.int32), loss_mask=np.zeros((rows, seq_len), bool),
             segment_ids=np.zeros((rows, seq_len), np.int32),
             positions=np.zeros((rows, seq_len), np.int32))
  if max_images:
    out["images"] = np.zeros((rows, max_images, s, s, 3), np.uint8)
    out["num_images"] = np.zeros((rows,), np.int32)
  for r in range(rows):
    rng = np.random.default_rng([seed, step, row_offset + r])
    used, seg, n_img_row = 0, 0, 0
    fill = seq_len if packed else int(rng.integers(seq_len // 2, seq_len + 1))
    while fill - used >= 4:
      room = fill - used
      n_img = 0
      if n_img_row < max_images and room >= span + 4:
        most = min(max_images - n_img_row, (room - 4) // span, 1 if packed else max_images)
        n_img = int(rng.integers(1, most + 1))
      if packed and room > 2 * (span + 8):
        length = int(rng.integers(n_img * span + 4, room - span - 4 + 1))
      else:
        length = room
      tokens, mask, images = _sample(rng, cfg, length, n_img, s, perm, colours)
      seg += 1
      sl = slice(used, used + length)
      out["tokens"][r, sl], out["loss_mask"][r, sl] = tokens, mask
      out["segment_ids"][r, sl], out["positions"][r, sl] = seg, np.arange(length)
      for img in images:
        out["images"][r, n_img_row] = img
        n_img_row += 1
      used += length
      if not packed:
        break
    if max_images:
      out["num_images"][r] = n_img_row
  return out


class SyntheticIterator:
  """An endless iterator over synthetic batches with grain-style get_state / set_state.

  Yields this host's `batch_size // process_count` rows of each global batch. `fixed=True` repeats
  the step-0 batch (for "can it learn one batch" checks).
  """

  def __init__(self, cfg: ModelConfig, batch_size: int, seq_len: int, *, max_images: int = 1,
               image_size: int | None = None, packed: bool = False, seed: int = 0, fixed: bool = False,
               process_index: int = 0, process_count: int = 1):
    if batch_size % process_count:
      raise ValueError(f"global batch {batch_size} is not divisible by {process_count} processes")
    self._kw = dict(cfg=cfg, rows=batch_size // process_count, seq_len=seq_len, max_images=max_images,
                    image_size=image_size, packed=packed, seed=seed,
                    row_offset=process_index * (batch_size // process_count))
    self._fixed = fixed
    self._step = 0
    self._cached = None

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._fixed:
      if self._cached is None:
        self._cached = make_synthetic_batch(step=0, **self._kw)
      batch = {k: v.copy() for k, v in self._cached.items()}
    else:
      batch = make_synthetic_batch(step=self._step, **self._kw)
    self._step += 1
    return batch

  def get_state(self) -> dict:
    return {"step": self._step}

  def set_state(self, state: Mapping[str, Any]):
    self._step = int(state["step"])
