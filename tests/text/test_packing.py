"""Packing: tokens conserved, images per row, no cross-segment attention (through the model's mask),
explicit overlong policies."""

import logging
import random

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from qwenvl_jax.model.masks import attention_mask
from qwenvl_jax.text import conversation as C
from qwenvl_jax.text import packing as P

N_IMG = 8  # image tokens per image, small to keep rows short


def make_samples(tok, n, seed=0):
  rng = random.Random(seed)
  words = "a dog cat red box on the left of picture 狗 猫".split()
  samples = []
  for i in range(n):
    text = lambda k: " ".join(rng.choice(words) for _ in range(k))
    if i % 3 == 0:
      s = C.pretrain_sample(tok, [{"image": f"img{i}.jpg"}, {"text": "Caption:"}],
                            text(rng.randint(1, 30)), n_image_tokens=N_IMG)
    else:
      user = [{"image": f"img{i}_{j}.jpg"} for j in range(rng.randint(0, 2))]
      user.append({"text": text(rng.randint(1, 20))})
      s = C.chatml_sample(tok, [{"role": "user", "content": user},
                                {"role": "assistant", "content": [
                                    {"text": text(rng.randint(1, 10))},
                                    {"ref": "dog", "box": (1, 2, 30, 40)}]}],
                          n_image_tokens=N_IMG)
    samples.append(s)
  return samples


def check_rows(tok, rows, samples, seq_len):
  """Every sample appears intact in exactly one segment, in order; fields are consistent."""
  seen = []
  for row in rows:
    assert row.tokens.shape == row.segment_ids.shape == row.positions.shape == row.loss_mask.shape
    assert row.tokens.shape == (seq_len,)
    for k in range(1, row.n_segments + 1):
      where = np.flatnonzero(row.segment_ids == k)
      assert len(where) and (np.diff(where) == 1).all()  # contiguous
      assert row.positions[where].tolist() == list(range(len(where)))
      seen.append((row.tokens[where].tolist(), row.loss_mask[where].tolist()))
    pad = row.segment_ids == 0
    assert (row.tokens[pad] == tok.pad_id).all() and not row.loss_mask[pad].any()
    assert (row.positions[pad] == 0).all()
    # Images: one per <img> span, in order.
    assert len(row.images) == (row.tokens == tok.img_start_id).sum()
    assert (row.tokens == tok.img_pad_id).sum() == N_IMG * len(row.images)
  by_ids = {tuple(s.ids.tolist()): s for s in samples}
  assert len(seen) == len(samples)
  for ids, mask in seen:
    s = by_ids[tuple(ids)]
    assert mask == [False] + s.loss_mask[1:].tolist()  # first token of a segment is never a target


def brute_force_mask(seg, pos):
  B, L = seg.shape
  out = np.zeros((B, 1, L, L), bool)
  for b in range(B):
    for q in range(L):
      for k in range(L):
        out[b, 0, q, k] = seg[b, k] != 0 and seg[b, q] == seg[b, k] and k <= q
  return out


def test_pack_conserves_tokens_and_images(tiny_tok):
  samples = make_samples(tiny_tok, 60)
  seq_len = max(len(s) for s in samples) + 20
  rows, stats = P.pack_samples(samples, seq_len, tokenizer=tiny_tok)
  assert stats.samples_packed == len(samples) and stats.dropped == stats.truncated == 0
  assert stats.tokens_in == stats.tokens_packed == sum(len(s) for s in samples)
  assert sum(r.n_tokens for r in rows) == stats.tokens_packed
  assert sorted(im for r in rows for im in r.images) == sorted(im for s in samples for im in s.images)
  check_rows(tiny_tok, rows, samples, seq_len)
  batch = P.stack_rows(rows)
  assert stats.efficiency == pytest.approx(batch.efficiency)
  # Packing beats one sample per row.
  padded, pstats = P.pad_samples(samples, seq_len, tokenizer=tiny_tok)
  assert len(padded) == len(samples) and pstats.efficiency < stats.efficiency
  check_rows(tiny_tok, padded, samples, seq_len)


def test_no_cross_segment_attention(tiny_tok):
  samples = make_samples(tiny_tok, 12, seed=1)
  rows, _ = P.pack_samples(samples, 160, tokenizer=tiny_tok)
  batch = P.stack_rows(rows)
  assert (batch.segment_ids.max(axis=1) > 1).any()  # really packed
  seg, pos = jnp.asarray(batch.segment_ids), jnp.asarray(batch.positions)
  mask = np.asarray(attention_mask(seg, seg, pos, pos))
  assert (mask == brute_force_mask(batch.segment_ids, batch.positions)).all()
  # Directly: no query ever sees a key of another segment or padding.
  same = batch.segment_ids[:, :, None] == batch.segment_ids[:, None, :]
  assert not (mask[:, 0] & ~same).any()
  assert not mask[:, 0][np.broadcast_to(batch.segment_ids[:, None, :] == 0, mask[:, 0].shape)].any()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=30), st.integers(40, 90),
       st.one_of(st.none(), st.integers(1, 3)))
def test_pack_properties(tiny_tok, lengths, seq_len, max_images):
  samples = []
  for i, n in enumerate(lengths):
    n_img = i % 2 if n >= 3 + 2 else 0
    ids = [tiny_tok.img_start_id, tiny_tok.img_pad_id, tiny_tok.img_end_id] * n_img
    ids += [10 + (i % 50)] * (n - len(ids))
    samples.append(C.TokenizedSample(ids, [j % 2 == 0 for j in range(n)], [f"i{i}"] * n_img))
  rows, stats = P.pack_samples(samples, seq_len, tokenizer=tiny_tok, max_images_per_row=max_images)
  assert stats.tokens_packed == sum(lengths) == sum(r.n_tokens for r in rows)
  for r in rows:
    assert len(r.images) == (r.tokens == tiny_tok.img_start_id).sum()
    assert max_images is None or len(r.images) <= max_images
  assert sorted(im for r in rows for im in r.images) == sorted(im for s in samples for im in s.images)


def overlong_sample(tok):
  """40 text tokens, an image span at 38..41 (straddles a cut at 40), then text and a box."""
  ids = [7] * 38 + [tok.img_start_id, tok.img_pad_id, tok.img_pad_id, tok.img_end_id] + [8] * 4
  ids += [tok.box_start_id, 9, 9, tok.box_end_id] + [8] * 10
  return C.TokenizedSample(ids, [True] * len(ids), ["only.jpg"])


def test_overlong_drop_counts_and_warns(tiny_tok, caplog):
  short = [C.TokenizedSample([7] * 10, [True] * 10) for _ in range(3)]
  samples = [overlong_sample(tiny_tok)] + short
  with caplog.at_level(logging.WARNING):
    rows, stats = P.pack_samples(samples, 50, tokenizer=tiny_tok, overlong="drop")
  assert stats.dropped == 1 and stats.samples_packed == 3
  assert "dropped 1 of 4" in caplog.text
  assert all("only.jpg" not in r.images for r in rows)


@pytest.mark.parametrize("seq_len,keep", [(40, 38), (41, 38), (42, 42), (47, 46), (50, 50)])
def test_overlong_truncate_never_cuts_spans(tiny_tok, seq_len, keep):
  s = overlong_sample(tiny_tok)
  rows, stats = P.pack_samples([s], seq_len, tokenizer=tiny_tok, overlong="truncate")
  assert stats.truncated == 1 and len(rows) == 1
  row = rows[0]
  assert row.n_tokens == keep
  assert row.tokens[:keep].tolist() == s.ids[:keep].tolist()
  assert row.images == (["only.jpg"] if keep >= 42 else [])
  kept = row.tokens[:keep]
  assert (kept == tiny_tok.box_start_id).sum() == (kept == tiny_tok.box_end_id).sum()


def test_overlong_error_and_bad_samples(tiny_tok):
  with pytest.raises(ValueError, match="exceeds seq_len"):
    P.pack_samples([overlong_sample(tiny_tok)], 20, tokenizer=tiny_tok, overlong="error")
  with pytest.raises(ValueError, match="overlong policy"):
    P.pack_samples([overlong_sample(tiny_tok)], 20, tokenizer=tiny_tok, overlong="silent")
  s = overlong_sample(tiny_tok)
  s.images = []
  with pytest.raises(ValueError, match="1 <img> spans but 0 images"):
    P.pack_samples([s], 100, tokenizer=tiny_tok)
  with pytest.raises(ValueError, match="max_images_per_row"):
    P.pack_samples([overlong_sample(tiny_tok)], 100, tokenizer=tiny_tok, max_images_per_row=0)


def test_truncate_drops_sample_without_targets(tiny_tok):
  s = overlong_sample(tiny_tok)
  s.loss_mask[:] = False
  s.loss_mask[-1] = True
  rows, stats = P.pack_samples([s], 30, tokenizer=tiny_tok, overlong="truncate")
  assert rows == [] and stats.dropped == 1


def test_stack_rows_pads_batch(tiny_tok):
  rows, _ = P.pack_samples(make_samples(tiny_tok, 2), 200, tokenizer=tiny_tok)
  batch = P.stack_rows(rows, batch_size=4, pad_id=tiny_tok.pad_id)
  assert batch.tokens.shape == (4, 200) and batch.images[-1] == []
  assert batch.flat_images == [im for r in rows for im in r.images]
  with pytest.raises(ValueError, match="do not fit"):
    P.stack_rows(rows, batch_size=0)
  with pytest.raises(ValueError, match="pad_id"):
    P.stack_rows(rows, batch_size=5)
