"""Fixed-length rows from TokenizedSamples: packed (several samples per row) or one sample per row.

Every layout carries the same fields, so the model and train step never branch on it:
  tokens       int32 [L]  padding = <|endoftext|> (the reference pad id)
  segment_ids  int32 [L]  1, 2, .. per sample in the row; 0 = padding
  positions    int32 [L]  restart at 0 in every segment (RoPE positions; padding = 0)
  loss_mask    bool  [L]  mask[t] = "token t is a training target"
  images       list       the row's images in order of appearance, one per <img> span

Loss-mask convention: the train step predicts tokens[t+1] from position t and weights that loss by
mask[t+1]. The first token of every segment is therefore never a target (nothing of its own segment
precedes it), so its mask is cleared here; that also keeps a loss from crossing segment boundaries.
Attention isolation comes from `qwenvl_jax.model.masks.attention_mask(segment_ids, positions)`.

Samples are never split: a row holds whole samples (first-fit, in input order). An overlong sample
(len > seq_len) follows an explicit policy: "drop" (counted, logged as one warning), "truncate" (cut
text only, at the last point not inside an <img>/<box>/<ref>/<quad> span; images after the cut are
dropped with their spans), or "error" (ValueError). A sample whose image list disagrees with its
<img> spans is a ValueError, never a shape error later.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Iterable, Sequence

import numpy as np

from qwenvl_jax.text import interface
from qwenvl_jax.text.conversation import TokenizedSample
from qwenvl_jax.text.tokenizer import Tokenizer

log = logging.getLogger(__name__)

OVERLONG_POLICIES = ("drop", "truncate", "error")


@dataclasses.dataclass
class PackedRow:
  tokens: np.ndarray
  segment_ids: np.ndarray
  positions: np.ndarray
  loss_mask: np.ndarray
  images: list

  @property
  def n_tokens(self) -> int:
    return int((self.segment_ids != 0).sum())

  @property
  def n_segments(self) -> int:
    return int(self.segment_ids.max(initial=0))


@dataclasses.dataclass
class PackedBatch:
  tokens: np.ndarray  # [B, L]
  segment_ids: np.ndarray
  positions: np.ndarray
  loss_mask: np.ndarray
  images: list[list]  # per row

  @property
  def flat_images(self) -> list:
    """All images batch-major, the order in which the model fills the <img> spans."""
    return [im for row in self.images for im in row]

  @property
  def efficiency(self) -> float:
    return float((self.segment_ids != 0).mean()) if self.segment_ids.size else 0.0


@dataclasses.dataclass
class PackingStats:
  samples_in: int = 0
  samples_packed: int = 0
  dropped: int = 0  # overlong under "drop", or nothing trainable left after truncation
  truncated: int = 0
  tokens_in: int = 0  # tokens of all input samples
  tokens_packed: int = 0  # non-padding tokens in the rows
  rows: int = 0
  seq_len: int = 0

  @property
  def efficiency(self) -> float:
    """Fraction of row slots holding real tokens."""
    return self.tokens_packed / (self.rows * self.seq_len) if self.rows else 0.0


def _check_images(sample: TokenizedSample, tok: Tokenizer):
  n_spans = int((sample.ids == tok.img_start_id).sum())
  if n_spans != len(sample.images):
    raise ValueError(f"sample has {n_spans} <img> spans but {len(sample.images)} images")


def fit_sample(sample: TokenizedSample, seq_len: int, tok: Tokenizer, overlong: str,
               stats: PackingStats) -> TokenizedSample | None:
  """Applies the overlong policy; None means the sample is dropped (counted in `stats`)."""
  if overlong not in OVERLONG_POLICIES:
    raise ValueError(f"overlong policy must be one of {OVERLONG_POLICIES}, got {overlong!r}")
  _check_images(sample, tok)
  n = len(sample)
  if n <= seq_len:
    return sample
  if overlong == "error":
    raise ValueError(f"sample of {n} tokens exceeds seq_len {seq_len} (overlong='error')")
  if overlong == "drop":
    stats.dropped += 1
    return None
  cut = seq_len  # keep ids[:cut]; move the cut back to the start of any span it falls inside
  for start, end in interface.atomic_spans(sample.ids, interface.atomic_span_pairs(tok)):
    if start < cut < end:
      cut = start
  ids, mask = sample.ids[:cut], sample.loss_mask[:cut].copy()
  if cut == 0 or not mask[1:].any():
    stats.dropped += 1
    return None
  stats.truncated += 1
  n_images = int((ids == tok.img_start_id).sum())
  return TokenizedSample(ids, mask, sample.images[:n_images])


class _Row:
  def __init__(self, seq_len: int):
    self.seq_len, self.samples, self.used, self.n_images = seq_len, [], 0, 0

  def fits(self, sample, max_segments, max_images) -> bool:
    return (self.used + len(sample) <= self.seq_len
            and (max_segments is None or len(self.samples) < max_segments)
            and (max_images is None or self.n_images + len(sample.images) <= max_images))

  def add(self, sample):
    self.samples.append(sample)
    self.used += len(sample)
    self.n_images += len(sample.images)

  def build(self, pad_id: int) -> PackedRow:
    L = self.seq_len
    tokens = np.full(L, pad_id, np.int32)
    seg = np.zeros(L, np.int32)
    pos = np.zeros(L, np.int32)
    mask = np.zeros(L, bool)
    images, t = [], 0
    for k, s in enumerate(self.samples, 1):
      n = len(s)
      tokens[t:t + n], seg[t:t + n], pos[t:t + n] = s.ids, k, np.arange(n)
      mask[t:t + n] = s.loss_mask
      mask[t] = False  # nothing in this segment predicts its first token
      images.extend(s.images)
      t += n
    return PackedRow(tokens, seg, pos, mask, images)


def _layout(samples, seq_len, tok, overlong, capacity_rule):
  if seq_len < 1:
    raise ValueError(f"seq_len must be >= 1, got {seq_len}")
  stats = PackingStats(seq_len=seq_len)
  rows: list[_Row] = []
  for sample in samples:
    stats.samples_in += 1
    stats.tokens_in += len(sample)
    sample = fit_sample(sample, seq_len, tok, overlong, stats)
    if sample is None:
      continue
    row = capacity_rule(rows, sample)
    if row is None:
      row = _Row(seq_len)
      rows.append(row)
    row.add(sample)
    stats.samples_packed += 1
    stats.tokens_packed += len(sample)
  stats.rows = len(rows)
  if stats.dropped:
    log.warning("packing: dropped %d of %d samples (overlong=%r, seq_len=%d)", stats.dropped,
                stats.samples_in, overlong, seq_len)
  return [r.build(tok.pad_id) for r in rows], stats


def pack_samples(samples: Iterable[TokenizedSample], seq_len: int, *, tokenizer: Tokenizer,
                 overlong: str = "drop", max_segments_per_row: int | None = None,
                 max_images_per_row: int | None = None) -> tuple[list[PackedRow], PackingStats]:
  """First-fit packing in input order. `max_images_per_row` bounds the per-row image count (for
  static image-batch shapes); a sample with more images than that is a ValueError."""
  def first_fit(rows, sample):
    if max_images_per_row is not None and len(sample.images) > max_images_per_row:
      raise ValueError(f"sample has {len(sample.images)} images > max_images_per_row "
                       f"{max_images_per_row}")
    return next((r for r in rows if r.fits(sample, max_segments_per_row, max_images_per_row)), None)

  return _layout(samples, seq_len, tokenizer, overlong, first_fit)


def pad_samples(samples: Iterable[TokenizedSample], seq_len: int, *, tokenizer: Tokenizer,
                overlong: str = "drop") -> tuple[list[PackedRow], PackingStats]:
  """The unpacked layout: one sample per row, right-padded; same fields as packed rows."""
  return _layout(samples, seq_len, tokenizer, overlong, lambda rows, sample: None)


def stack_rows(rows: Sequence[PackedRow], batch_size: int | None = None, *,
               pad_id: int | None = None, seq_len: int | None = None) -> PackedBatch:
  """Rows -> [B, L] arrays. With `batch_size`, missing rows are all padding (`pad_id` required, and
  `seq_len` when `rows` is empty); more rows than `batch_size` is a ValueError."""
  rows = list(rows)
  if batch_size is not None and len(rows) != batch_size:
    if len(rows) > batch_size:
      raise ValueError(f"{len(rows)} rows do not fit a batch of {batch_size}")
    seq_len = len(rows[0].tokens) if rows else seq_len
    if pad_id is None or seq_len is None:
      raise ValueError("padding a batch with empty rows needs pad_id (and seq_len if no rows)")
    zeros = lambda dtype: np.zeros(seq_len, dtype)
    rows += [PackedRow(np.full(seq_len, pad_id, np.int32), zeros(np.int32), zeros(np.int32),
                       zeros(bool), []) for _ in range(batch_size - len(rows))]
  if not rows:
    raise ValueError("no rows to stack")
  lengths = {len(r.tokens) for r in rows}
  if len(lengths) != 1:
    raise ValueError(f"rows have different lengths {sorted(lengths)}")
  return PackedBatch(*(np.stack([getattr(r, f) for r in rows])
                       for f in ("tokens", "segment_ids", "positions", "loss_mask")),
                     [list(r.images) for r in rows])
