"""The serving engine's prefix cache: prompts that begin like earlier ones reuse their cached blocks
and prefill only the rest, and every answer's greedy tokens still equal the request prefilled in
full and decoded alone (`Generator`, no engine) - in the 64 and 128 buckets with several reused
lengths in one prefill call, under evictions from a pool too small for the traffic, and with
pictures inside the prefix (a different picture behind the same tokens is never reused); and a
chat's next turn reuses the previous answer, stored from the decode ring when its row ended."""

import numpy as np
import pytest

from qwenvl_jax.infer.generate import Generator, prompt_bucket
from qwenvl_jax.serve import prefix
from qwenvl_jax.serve.engine import BatchEngine
from tests.serve.helpers import alone, burst


@pytest.fixture(scope="module")
def gen(model, tok):
  return Generator(model, pad_id=tok.pad_id, stop_ids=[], valid_vocab=tok.vocab_size)


def test_prompts_that_share_a_prefix_reuse_it_and_equal_each_alone(gen):
  rng = np.random.default_rng(0)
  words = lambda n: rng.integers(3, 200, n).tolist()
  system, history = words(40), words(80)
  repeated = system + words(20)
  first = [system + words(7), history + words(6), repeated]
  # 64 bucket: 32 cached tokens of `system` -> reuse 32, prefill 13 / 22 / 31 tokens in 16 / 32 /
  # 32 columns; `repeated` again -> 48 cached -> reuse 48, 12 tokens in 16 columns (one call with
  # `system` + 5). 128 bucket: 80 cached of `history` -> reuse 80, 25 tokens in 32 columns.
  then = [system + words(n) for n in (5, 14, 23)] + [repeated, history + words(25)]
  engine = BatchEngine(gen, slots=8, chunk=3, prefix_cache_tokens=512)
  try:
    got_first = burst(engine, first)
    assert engine.stats.prefix_hits == 0
    got_then = burst(engine, then)
    assert engine.stats.prefix_hits == len(then)
    assert engine.stats.prefix_tokens == 3 * 32 + 48 + 80
    assert {prompt_bucket(len(p)) for p in then} == {64, 128}
    assert engine.stats.prefills == 2 + 3  # (64, 16 columns), (64, 32), (128, 32)
  finally:
    engine.close()
  assert got_first + got_then == alone(gen, first + then)


def test_answers_stay_right_when_the_pool_evicts(gen):
  """A 5-block pool for three 32-token (2-block) prefixes, two at a time in turn: blocks are
  evicted and their slots rewritten between requests that read others; hits still give the full
  prefill's tokens."""
  rng = np.random.default_rng(1)
  systems = [rng.integers(3, 200, 32).tolist() for _ in range(3)]
  engine = BatchEngine(gen, slots=4, chunk=3, prefix_cache_tokens=5 * prefix.BLOCK)
  prompts, got = [], []
  try:
    for turn in range(6):
      batch = [systems[(turn + k) % 3] + rng.integers(3, 200, 9 + k).tolist() for k in range(2)]
      prompts += batch
      got += burst(engine, batch)
      assert len(engine._index) <= 5
    assert 0 < engine.stats.prefix_hits < len(prompts) - 2
  finally:
    engine.close()
  assert got == alone(gen, prompts)


def test_a_chats_next_turn_reuses_the_previous_answer(gen):
  """(Turns stay within the tiny model's 64-token seq_length: a longer prompt gets another
  dynamic-NTK alpha, whose keys/values differ, so nothing before it is reused.)"""
  rng = np.random.default_rng(2)
  first, question = rng.integers(3, 200, 20).tolist(), rng.integers(3, 200, 10).tolist()
  engine = BatchEngine(gen, slots=4, chunk=3, prefix_cache_tokens=512)
  try:
    answer = burst(engine, [first], max_tokens=24)[0]
    second = first + answer + question
    got = burst(engine, [second])  # (admitted after the chunk that ended `first` stored it)
  finally:
    engine.close()  # (after the last chunk's blocks are stored)
  # 20 prompt + 24 answer tokens; the row ran 8 chunks of 3 steps, so the ring held all 44:
  # blocks 0 (the prefill stored it) and 1 (prompt and answer); the second turn's 54 + 6 tokens
  # complete no block its prefill did not store
  assert engine.stats.answer_blocks == 1
  assert engine.stats.prefix_tokens == 32  # the prompt's block alone: 16, too few to reuse here
  assert got == alone(gen, [second])


def test_an_answer_that_ends_with_a_stop_token_is_stored_with_it(model, tok):
  """The next turn resends the stop token (ChatML's <|im_end|>): a 12-token prompt whose answer
  stops at its 20th token fills 2 blocks only with the stop token in them."""
  plain = Generator(model, pad_id=tok.pad_id, stop_ids=[], valid_vocab=tok.vocab_size)
  for seed in range(20):
    first = np.random.default_rng(seed).integers(3, 200, 12).tolist()
    tokens = alone(plain, [first], max_tokens=20)[0]
    if tokens[19] not in tokens[:19]:
      break
  else:
    pytest.fail("no prompt whose 20th answer token is a new one")
  gen = Generator(model, pad_id=tok.pad_id, stop_ids=[tokens[19]], valid_vocab=tok.vocab_size)
  engine = BatchEngine(gen, slots=4, chunk=3, prefix_cache_tokens=512)
  try:
    answer = burst(engine, [first], max_tokens=30)[0]
    second = first + answer + tokens[19:20] + [5] * 10
    got = burst(engine, [second])
  finally:
    engine.close()
  assert answer == tokens[:19]
  # the second turn reuses blocks 0 and 1 (without the stop token stored, block 0 alone); its own
  # answer may complete block 2
  assert engine.stats.prefix_tokens == 32 and engine.stats.answer_blocks in (2, 3)
  assert got == alone(gen, [second])


def test_a_prefix_with_a_picture_is_reused_only_with_that_picture(predictor, picture_paths):
  gen = predictor.generator
  cfg = gen.cfg

  def chat(picture):
    history = [([{"image": picture}, {"text": "What is in this picture?"}],
                [{"text": "A square of many colours, small and bright."}])]
    ids, srcs = predictor.chat_prompt(history, [{"text": "Where is it?"}])
    return ids, [predictor.image_array(s) for s in srcs]

  (a, img_a), (b, img_b) = chat(picture_paths[0]), chat(picture_paths[1])
  assert a == b and not np.array_equal(img_a[0], img_b[0])  # same tokens, other pixels
  start, end = prefix.image_spans(a, cfg.image_start_id, cfg.image_end_id)[0]
  engine = BatchEngine(gen, slots=4, chunk=3, prefix_cache_tokens=1024)
  try:
    got = burst(engine, [a], [img_a])
    got += burst(engine, [a], [img_a])  # same picture: reuses past the picture
    reused_same = engine.stats.prefix_tokens
    got += burst(engine, [b], [img_b])  # other picture: at most what precedes it
    reused_other = engine.stats.prefix_tokens - reused_same
  finally:
    engine.close()
  assert reused_same == (len(a) - 1) // prefix.BLOCK * prefix.BLOCK > end
  assert reused_other <= start  # (0 here: a 16-token prefix leaves too much for its bucket)
  assert got == alone(gen, [a, a, b], [img_a, img_a, img_b])


def test_block_keys_name_the_whole_prefix_and_its_pictures():
  ids = list(range(100, 140))
  pic, other = np.zeros((4, 4, 3), np.uint8), np.ones((4, 4, 3), np.uint8)
  keys = prefix.block_keys(ids, [], image_start_id=7)
  assert len(keys) == 40 // prefix.BLOCK
  changed = prefix.block_keys(ids[:5] + [0] + ids[6:], [], image_start_id=7)
  assert changed[0] != keys[0] and changed[1] != keys[1]  # a block's key covers all before it
  with_pic = ids[:20] + [7] + ids[21:]
  k_pic = prefix.block_keys(with_pic, [pic], image_start_id=7)
  k_other = prefix.block_keys(with_pic, [other], image_start_id=7)
  assert k_pic[0] == k_other[0] and k_pic[1] != k_other[1]  # the picture starts in block 1
  assert prefix.block_keys(with_pic, [pic], 7, known=k_pic[:1]) == k_pic  # the chain continued
  assert prefix.block_keys(ids, [], 7, salt=b"alpha2")[0] != keys[0]


def test_reuse_length_keeps_a_token_to_prefill_and_never_cuts_a_picture():
  assert prefix.suffix_widths(64) == [16, 32] and prefix.suffix_widths(128) == [16, 32, 64]
  assert [prefix.suffix_width(n) for n in (1, 16, 17, 33, 100)] == [16, 16, 32, 64, 128]
  assert prefix.reuse_length(60, 64, cached=48, spans=[]) == 48
  assert prefix.reuse_length(60, 64, cached=47, spans=[]) == 32
  assert prefix.reuse_length(49, 64, cached=64, spans=[]) == 48
  assert prefix.reuse_length(48, 64, cached=48, spans=[]) == 32  # token 47 must be prefilled
  assert prefix.reuse_length(60, 64, cached=48, spans=[(40, 50)]) == 32
  assert prefix.reuse_length(60, 64, cached=48, spans=[(20, 40)]) == 48
  assert prefix.reuse_length(60, 64, cached=47, spans=[(20, 40)]) == 0  # 32 cuts it, 16: see below
  assert prefix.reuse_length(40, 64, cached=47, spans=[(20, 35)]) == 16
  # 44 tokens after 16 need 64 columns: 16 + 64 > 64, so no reuse
  assert prefix.reuse_length(60, 64, cached=16, spans=[]) == 0
  assert prefix.reuse_length(370, 512, cached=288, spans=[(14, 271)]) == 288


def test_ring_blocks_are_the_full_blocks_the_ring_still_holds():
  assert prefix.ring_blocks(40, fed=30, sampled=30, n_cols=128) == range(0, 4)
  assert prefix.ring_blocks(40, fed=33, sampled=30, n_cols=128) == range(0, 4)  # ran past its end
  assert prefix.ring_blocks(40, fed=21, sampled=30, n_cols=128) == range(0, 3)  # 61 written
  # 60 + 72 columns in a ring of 128: the row's last steps overwrote its first 4 tokens
  assert prefix.ring_blocks(60, fed=72, sampled=66, n_cols=128) == range(1, 7)
  assert prefix.ring_blocks(10, fed=0, sampled=1, n_cols=128) == range(0, 0)
