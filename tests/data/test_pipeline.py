"""grain pipeline: identical batches for a seed, exact resume, counted skips, row layout."""

import json

import numpy as np
import pytest

from qwenvl_jax.data import pipeline, synth
from qwenvl_jax.model import pixels
from qwenvl_jax.text.tokenizer import load_tokenizer
from tests.data.helpers import assert_same, take


def cfg(vocab, **kw):
  base = dict(paths=(), tokenizer=vocab, seq_len=1024, batch_size=3, image_size=28, n_image_tokens=4,
              shard_index=0, shard_count=1, seed=1)
  return pipeline.PipelineConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def records():
  return list(synth.generate("shapes", 12, seed=0, size=64)) + list(synth.generate("text", 4, seed=0, size=96))


def test_same_seed_same_batches(byte_vocab, records):
  a = take(iter(pipeline.make_pipeline(cfg(byte_vocab), records)), 4)
  b = take(iter(pipeline.make_pipeline(cfg(byte_vocab), records)), 4)
  c = take(iter(pipeline.make_pipeline(cfg(byte_vocab, seed=2), records)), 4)
  assert_same(a, b)
  # The batches do not depend on the number of worker processes either.
  assert_same(a, take(iter(pipeline.make_pipeline(cfg(byte_vocab, num_workers=2), records)), 4))
  assert any(not np.array_equal(x["tokens"], y["tokens"]) for x, y in zip(a, c))


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_continues_with_the_next_batch(byte_vocab, records, workers):
  p = pipeline.make_pipeline(cfg(byte_vocab, num_workers=workers), records)
  it = iter(p)
  take(it, 5)  # crosses an epoch boundary (16 records, batch 3)
  state = it.get_state()
  json.dumps(state)  # storable next to a checkpoint
  want = take(it, 3)
  it2 = iter(pipeline.make_pipeline(cfg(byte_vocab, num_workers=workers), records))
  it2.set_state(state)
  assert_same(take(it2, 3), want)
  # (grain's iterator state records the worker layout: resume with the same num_workers.)


def test_row_layout(byte_vocab, records):
  tok = load_tokenizer(byte_vocab)
  b = next(iter(pipeline.make_pipeline(cfg(byte_vocab, shuffle=False, tasks=("caption",)), records)))
  assert b["tokens"].shape == (3, 1024) and b["images"].shape == (3, 1, 28, 28, 3)
  assert (b["num_images"] == 1).all()
  n = int(b["segment_ids"][0].sum())
  ids = b["tokens"][0]
  text = tok.decode(ids[:n])
  assert text == ("<img>" + "<imgpad>" * 4 + "</img>Generate the caption in English: " + records[0]["caption"]
                  + "<|endoftext|>")
  assert tok.decode(ids[:n][b["loss_mask"][0][:n]]) == " " + records[0]["caption"] + "<|endoftext|>"
  assert (ids[n:] == tok.pad_id).all() and not b["loss_mask"][0][n:].any() and not b["loss_mask"][:, 0].any()
  np.testing.assert_array_equal(b["positions"][0][:n], np.arange(n))


def test_chatml_records(byte_vocab, tmp_path):
  from PIL import Image
  Image.new("RGB", (20, 20), (255, 0, 0)).save(tmp_path / "a.png")
  conv = {"id": "c", "conversations": [{"from": "user", "value": "Picture 1: <img>a.png</img>\nColour?"},
                                       {"from": "assistant", "value": "Red."}]}
  (tmp_path / "c.jsonl").write_text(json.dumps(conv) + "\n")
  tok = load_tokenizer(byte_vocab)
  c = cfg(byte_vocab, paths=(str(tmp_path / "c.jsonl"),), batch_size=1, num_epochs=1)
  (b,) = list(pipeline.make_pipeline(c))
  n = int(b["segment_ids"][0].sum())
  # The reference label rule; the leading <|im_start|> is dropped (nothing predicts the first token).
  trained = tok.decode(b["tokens"][0][:n][b["loss_mask"][0][:n]])
  assert trained == "<|im_end|>\n<|im_start|><|im_end|>\n<|im_start|>Red.<|im_end|>\n"
  # uint8 pixels, resized, not normalised (the model normalises them on the device)
  assert b["images"].dtype == np.uint8
  np.testing.assert_array_equal(b["images"][0, 0, 5, 5], [255, 0, 0])
  red = (np.array([1.0, 0, 0]) - np.array([0.48145466, 0.4578275, 0.40821073])) / np.array(
      [0.26862954, 0.26130258, 0.27577711])
  np.testing.assert_allclose(pixels.normalize_host(b["images"][0, 0, 5, 5]), red, atol=1e-5)


def test_corrupt_images_counted_through_the_pipeline(byte_vocab, tmp_path):
  """100 records, 3 broken images: one epoch yields 97 rows and reports 3, with 0 and 2 workers."""
  recs = list(synth.generate("shapes", 100, seed=4, size=32))
  recs[7]["image"] = recs[7]["image"][:100]  # truncated
  recs[50]["image"] = b"garbage"
  recs[93]["image"] = str(tmp_path / "missing.png")
  for workers in (0, 2):
    p = pipeline.make_pipeline(cfg(byte_vocab, num_epochs=1, batch_size=10, drop_remainder=False,
                                   num_workers=workers, image_size=14), recs)
    rows = sum(b["tokens"].shape[0] for b in p)
    assert rows == 97, workers
    assert p.skips.counts == {"corrupt_image": 3}, p.skips.as_dict()


def test_too_long_and_no_task_are_counted(byte_vocab, records):
  p = pipeline.make_pipeline(cfg(byte_vocab, seq_len=40, num_epochs=1, batch_size=1, drop_remainder=False,
                                 tasks=("ocr",)), records)
  rows = list(p)
  assert rows == []  # shapes records have no words; text records' OCR targets exceed 40 tokens
  assert p.skips.counts == {"no_task": 12, "too_long": 4}


def packed(vocab, **kw):
  return cfg(vocab, layout="packed", seq_len=512, max_images=4, pack_window=8, batch_size=2, **kw)


def test_packed_rows_hold_every_sample_once(byte_vocab, records):
  p = pipeline.make_pipeline(packed(byte_vocab, num_epochs=1, drop_remainder=False, shuffle=False,
                                    tasks=("caption", "vqa")), records)
  batches = list(p)
  n_segments = sum(int(s.max()) for b in batches for s in b["segment_ids"])
  n_images = sum(int(b["num_images"].sum()) for b in batches)
  assert n_segments == len(records) == n_images and p.skips.total == 0
  seg = np.concatenate([b["segment_ids"] for b in batches])
  pos = np.concatenate([b["positions"] for b in batches])
  mask = np.concatenate([b["loss_mask"] for b in batches])
  assert (seg.max(axis=1) > 1).any()  # several samples share rows
  starts = (pos == 0) & (seg > 0)
  assert not mask[starts].any() and not mask[seg == 0].any()
  unpacked = list(pipeline.make_pipeline(cfg(byte_vocab, seq_len=512, num_epochs=1, drop_remainder=False,
                                             shuffle=False, tasks=("caption", "vqa")), records))
  eff = lambda bs: np.mean(np.concatenate([b["segment_ids"] for b in bs]) > 0)
  assert eff(batches) > 2 * eff(unpacked)


def test_packed_resume_mid_window(byte_vocab, records):
  it = iter(pipeline.make_pipeline(packed(byte_vocab), records))
  for n in range(1, 6):
    next(it)
    state = it.get_state()
    want = take(it, 2)
    it2 = iter(pipeline.make_pipeline(packed(byte_vocab), records))
    it2.set_state(state)
    assert_same(take(it2, 2), want)
  assert_same(take(iter(pipeline.make_pipeline(packed(byte_vocab), records)), 3),
              take(iter(pipeline.make_pipeline(packed(byte_vocab, num_workers=2), records)), 3))
