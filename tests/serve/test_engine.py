"""The batching engine's decode: greedy tokens of concurrent requests equal each request decoded
alone (`Generator`, no engine), over ring wrap-around and slot reuse, for the per-layer and the
stacked KV layout; the decode step writes the cache in place (no cache-sized copy or transpose per
step: the cause of batched steps costing as much per row as single ones) and its weight products
are XLA's dots, not YNNPACK fusions; a new ring is committed; the single-query attention equals the
general one."""

import re
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qwenvl_jax.infer.generate import (Generator, SamplingConfig, decode_compiler_options,
                                       prompt_bucket)
from qwenvl_jax.model import layers
from qwenvl_jax.model.llm import init_cache, per_layer_cache
from qwenvl_jax.model.masks import attention_mask
from qwenvl_jax.serve.engine import BatchEngine, Request, decode_chunk_fn
from tests.serve.helpers import alone, burst


def _gen(model, tok, **kw):
  return Generator(model, pad_id=tok.pad_id, stop_ids=[tok.im_end_id, tok.eod_id],
                   valid_vocab=tok.vocab_size, **kw)


def _engine_tokens(gen, prompts, max_tokens, slots=4, chunk=3):
  """All prompts submitted at once (more than the slots: later ones join as rows finish)."""
  engine = BatchEngine(gen, slots=slots, chunk=chunk)
  outs = [[] for _ in prompts]
  done = [threading.Event() for _ in prompts]
  try:
    for k, (ids, n) in enumerate(zip(prompts, max_tokens)):

      def emit(new, reason, k=k):
        outs[k].extend(new)
        if reason:
          done[k].set()

      engine.submit(Request(ids, (), n, emit))
    assert all(e.wait(300) for e in done)
    return outs, engine.stats
  finally:
    engine.close()


@pytest.mark.parametrize("per_layer", [True, False])
def test_concurrent_greedy_tokens_equal_each_request_alone(model, tok, per_layer):
  # No stop ids: every row runs to its max_tokens, so the ring surely wraps.
  gen = Generator(model, pad_id=tok.pad_id, stop_ids=[], valid_vocab=tok.vocab_size,
                  unstack_layers=per_layer)
  assert gen.per_layer == per_layer
  rng = np.random.default_rng(0)
  prompts = [rng.integers(3, 200, n).tolist() for n in (5, 30, 12, 21, 9, 17, 3)]
  # 7 requests on 2 slots, 50-62 tokens each: rows join as others end, the 128-column ring wraps.
  max_tokens = [50 + 2 * i for i in range(len(prompts))]
  got, stats = _engine_tokens(gen, prompts, max_tokens, slots=2)
  alone = [gen.generate_ids([p], sampling=SamplingConfig(temperature=0, max_new_tokens=n))[0]
           for p, n in zip(prompts, max_tokens)]
  assert got == alone
  assert [len(g) for g in got] == max_tokens
  assert stats.max_busy == 2 and stats.admitted == len(prompts)
  assert stats.steps * 3 > 128  # the write index went around the 128-column ring


def _lengths_mixed(model, tok, per_layer, prompts, max_tokens):
  """A burst of requests with their own max_tokens on 4 slots, chunks of 3 steps, no stop ids ->
  (their tokens, the engine's counters once it closed, each request decoded alone)."""
  gen = Generator(model, pad_id=tok.pad_id, stop_ids=[], valid_vocab=tok.vocab_size,
                  unstack_layers=per_layer)
  engine = BatchEngine(gen, slots=4, chunk=3)
  try:
    got = burst(engine, prompts, max_tokens=max_tokens)
  finally:
    engine.close()
  return got, engine.stats, alone(gen, prompts, max_tokens=max_tokens)


@pytest.mark.parametrize("per_layer", [True, False])
def test_the_ring_shrinks_when_the_request_that_grew_it_ends(model, tok, per_layer):
  """A 100-token prompt (bucket 128, + 6 tokens) grows the ring to 256 columns; when it ends, the
  short requests still decoding (bucket 64 + 40 tokens) move to a 128-column ring, and every
  answer equals its request decoded alone."""
  rng = np.random.default_rng(7)
  prompts = [rng.integers(3, 200, n).tolist() for n in (100, 9, 20, 30)]
  got, stats, want = _lengths_mixed(model, tok, per_layer, prompts, [6, 40, 40, 40])
  assert stats.ring_shrinks == 1
  assert got == want


@pytest.mark.parametrize("per_layer", [True, False])
def test_a_long_answer_left_in_a_high_slot_moves_down(model, tok, per_layer):
  """Four requests fill slots 0-3; when the three short ones end, the long one in slot 3 moves to
  slot 0 and the chunks compute one row instead of four; its answer equals it decoded alone."""
  rng = np.random.default_rng(8)
  prompts = [rng.integers(3, 200, n).tolist() for n in (7, 12, 20, 15)]
  got, stats, want = _lengths_mixed(model, tok, per_layer, prompts, [6, 6, 6, 30])
  assert stats.rows_moved == 1
  # 2 chunks of 4 rows until the short ones end (6 tokens: 1 from the prefill + 2 x 3), then
  # 8 chunks of 1 row for the long one's other 24 tokens.
  assert (stats.steps, stats.row_steps) == (10, 3 * (2 * 4 + 8 * 1))
  assert got == want


@pytest.mark.slow  # ~5 min on the loaded 2-core machine: many pictured/text shapes compile
def test_joining_requests_share_prefills_and_equal_each_alone(predictor, picture_paths):
  """Requests that join together are prefilled in one call per (prompt bucket, pictures per row):
  text and pictured prompts of the 64 and the 128 bucket -> 4 prefills for 9 requests, and every answer's greedy tokens equal the request prefilled and decoded alone."""
  gen = predictor.generator
  rng = np.random.default_rng(3)
  prompts = [rng.integers(3, 200, n).tolist() for n in (7, 40, 63, 22, 70, 100)]
  images = [[] for _ in prompts]
  for k, question in enumerate(["What is it?", "Describe the picture in detail.", "Colors?"]):
    ids, srcs = predictor.chat_prompt([], [{"image": picture_paths[k]}, {"text": question}])
    prompts.append(ids)
    images.append([predictor.image_array(s) for s in srcs])
  keys = {(prompt_bucket(len(p)), len(i)) for p, i in zip(prompts, images)}
  assert keys == {(64, 0), (128, 0), (64, 1), (128, 1)}
  engine = BatchEngine(gen, slots=16, chunk=4)
  try:
    got = burst(engine, prompts, images, 12)
    assert engine.stats.prefills == 4 and engine.stats.admitted == len(prompts)
  finally:
    engine.close()
  each = alone(gen, prompts, images, 12)
  text = [k for k, i in enumerate(images) if not i]
  assert [got[k] for k in text] == [each[k] for k in text]
  assert all(got[k][:4] == each[k][:4] for k in range(len(prompts)) if k not in text)
  assert len({tuple(g) for g in got}) > 3


def test_warm_up_compiles_every_shape_traffic_meets(predictor):
  """After `warm_up` for a prompt bucket and answer length, bursts of every size (prefill batch
  buckets, decode row counts, both lengths of a reused cached prefix, finished answers stored in
  the prefix cache) compile nothing, and the answers still equal each request alone."""
  gen = predictor.generator
  engine = BatchEngine(gen, slots=4, chunk=2)
  rng = np.random.default_rng(4)
  system = rng.integers(3, 200, 40).tolist()
  again = system + rng.integers(3, 200, 15).tolist()  # 48 tokens cached once seen
  try:
    assert engine.warm_up([30], max_tokens=8) > 0
    warm = engine.compiled_count()
    assert engine.stats.admitted == 0  # the warm-up's dummy rows are not traffic
    for n in (1, 3, 2, 4, 1, 4):
      prompts = [rng.integers(3, 200, int(rng.integers(5, 60))).tolist() for _ in range(n)]
      prompts[1::2] = [system + p[:20] for p in prompts[1::2]]
      prompts[2::4] = [again for _ in prompts[2::4]]
      images = [[] for _ in prompts]
      got = burst(engine, prompts, images, 8)
      assert got == alone(gen, prompts, images, 8)
    assert engine.compiled_count() == warm
    assert engine.stats.prefix_hits >= 4
    assert engine.stats.answer_blocks > 0  # their copies into the prefix cache were warmed too
  finally:
    engine.close()


def picture_chats(predictor, picture_paths, n):
  """n one-turn chats, each about one of the test pictures: (prompt ids, [uint8 picture])."""
  out = []
  for k in range(n):
    ids, srcs = predictor.chat_prompt([], [{"image": picture_paths[k % len(picture_paths)]},
                                           {"text": f"What is in picture {k}?"}])
    out.append((ids, [predictor.image_array(s) for s in srcs]))
  return out


def test_the_engine_hands_pictures_to_the_model_as_the_generator_does(predictor, picture_paths):
  """The engine's prefill batch holds the same pixels, in the same (uint8, normalised on the
  device) form, as `Generator.prepare` makes for the request alone. A float32 copy of uint8
  pixels would be taken as already normalised."""
  gen = predictor.generator
  (ids, imgs), = picture_chats(predictor, picture_paths, 1)
  assert imgs[0].dtype == np.uint8
  seen = []
  prepare = gen.prepare
  engine = BatchEngine(gen, slots=2, chunk=2, prefix_cache_tokens=0)
  try:
    gen.prepare = lambda *a, **kw: seen.append(prepare(*a, **kw)) or seen[-1]
    burst(engine, [ids], [imgs], 2)
  finally:
    del gen.prepare
    engine.close()
  want = gen.prepare([ids], [imgs], prompt_len=seen[0].ids.shape[1])
  assert seen[0].images.dtype == want.images.dtype == np.uint8
  np.testing.assert_array_equal(seen[0].images[:1], want.images[:1])


def test_warm_up_with_pictures_compiles_a_picture_chats_first_turns(predictor, picture_paths):
  """`warm_up(..., pictures=True)`: bursts of 1-4 one-picture prompts in the warmed bucket compile
  nothing, and their answers equal each request alone."""
  gen = predictor.generator
  chats = picture_chats(predictor, picture_paths, 4)
  engine = BatchEngine(gen, slots=4, chunk=2)
  try:
    assert engine.warm_up([len(chats[0][0])], max_tokens=6, pictures=True) > 0
    warm = engine.compiled_count()
    for n in (1, 3, 2, 4):
      prompts, images = [c[0] for c in chats[:n]], [c[1] for c in chats[:n]]
      assert burst(engine, prompts, images, 6) == alone(gen, prompts, images, 6)
      engine._index.clear()  # the next burst's pictures are prefilled again, not reused
    assert engine.compiled_count() == warm
  finally:
    engine.close()


def _cache_sized_moves(hlo: str, elems: int) -> list[str]:
  """copy / transpose instructions (or fusions) whose result holds >= `elems` elements."""
  out = []
  for m in re.finditer(r"%(\S+) = f32\[([\d,]+)\]\S* (\w[\w-]*)\(", hlo):
    name, dims, op = m.groups()
    moves = op in ("copy", "transpose") or (op == "fusion" and ("copy" in name or "transpose" in name))
    if moves and np.prod([int(d) for d in dims.split(",")]) >= elems:
      out.append(f"{name} {dims} {op}")
  return out


def test_clients_served_together_are_admitted_together(model, tok):
  """When requests end together and the engine goes idle, their clients' next requests, arriving
  one after another within `gather_s`, share one prefill (admitting the first alone costs a 1-row
  prefill and chunk before the others join), also when some were queued already (the early
  returners of a staggered wave); a lone client's next request does not wait."""
  gen = Generator(model, pad_id=tok.pad_id, stop_ids=[], valid_vocab=tok.vocab_size)
  engine = BatchEngine(gen, slots=4, chunk=2, gather_s=30.0)
  rng = np.random.default_rng(5)
  prompts = [rng.integers(3, 200, 9).tolist() for _ in range(4)]

  def submit(ids):
    done = threading.Event()
    engine.submit(Request(ids, (), 2, lambda new, reason: reason and done.set()))
    return done

  try:
    assert submit(prompts[0]).wait(300)  # one request ended: the same client comes back
    assert submit(prompts[1]).wait(20.0)  # admitted at once, not after gather_s (30 s)
    # two requests end; two others are queued as they end (from their last token's callback)
    early = []
    engine.submit_all([Request(p, (), 2, lambda new, reason, p=p: reason and early.append(
        submit(p))) for p in prompts[:2]])
    while len(early) < 2:
      threading.Event().wait(0.01)
    before = engine.stats.prefills
    assert not early[0].wait(1.0)  # the queued two wait for the two that ended to come back
    late = [submit(p) for p in prompts[2:]]
    assert all(e.wait(300) for e in early + late)
    assert engine.stats.prefills == before + 1
    # four ended together; their next requests arrive one after another
    before = engine.stats.prefills
    first = submit(prompts[0])
    assert not first.wait(1.0)  # waits for the other three
    rest = [submit(p) for p in prompts[1:]]
    assert all(e.wait(300) for e in [first, *rest])
    assert engine.stats.prefills == before + 1 and engine.stats.admitted == 12
  finally:
    engine.close()


def test_decode_step_writes_the_cache_in_place(model, tok):
  """The compiled engine chunk over a full batch moves no cache-sized array: before per-layer
  heads-first caches, each layer and step copied the whole cache (and transposed k and v)."""
  gen = _gen(model, tok)
  cfg = model.cfg.llm
  rows, cols = 4, 128
  ring = per_layer_cache(init_cache(cfg, rows, cols, jnp.float32))
  b = np.ones(rows, np.int32)
  args = (b, b, np.ones(rows, np.float32), np.zeros(rows, np.uint32), b * 0,
          np.zeros(rows, np.float32), b * 0, np.ones(rows, np.float32))
  hlo = decode_chunk_fn(gen, 4).lower(gen.state, ring, *args).compile().as_text()
  one_layer = rows * cols * cfg.heads * cfg.head_dim
  assert _cache_sized_moves(hlo, one_layer) == []
  # The check can fail: the stacked layout (what the engine used before) does move the cache.
  stacked = init_cache(cfg, rows, cols, jnp.float32)
  hlo = decode_chunk_fn(gen, 4).lower(gen.state, stacked, *args).compile().as_text()
  assert _cache_sized_moves(hlo, one_layer)


def test_decode_weight_products_are_not_ynnpack_fusions(model, tok):
  """On CPU the engine's chunk (and `Generator`'s decode) compile with `decode_compiler_options`:
  the weight products of a 4-row step are XLA's own dots, not the YNNPACK fusions XLA makes by
  default, which ran them at half the FLOP/s on this CPU (docs/serving.md). The default does make
  them, so the check can fail."""
  gen = _gen(model, tok)
  rows = 4
  ring = per_layer_cache(init_cache(model.cfg.llm, rows, 128, jnp.float32))
  b = np.ones(rows, np.int32)
  args = (b, b, np.ones(rows, np.float32), np.zeros(rows, np.uint32), b * 0,
          np.zeros(rows, np.float32), b * 0, np.ones(rows, np.float32))
  hlo = lambda **kw: decode_chunk_fn(gen, 2, **kw).lower(gen.state, ring, *args).compile().as_text()
  assert decode_compiler_options() and "ynn_fusion" not in hlo()
  assert "ynn_fusion" in hlo(compiler_options={})
  cache = per_layer_cache(init_cache(model.cfg.llm, rows, 128, jnp.float32))
  step = gen._step.lower(gen.state, cache, jnp.ones(rows, jnp.int32), jnp.ones(rows, jnp.int32),
                         jnp.float32(1))
  assert "ynn_fusion" not in step.compile().as_text()


def test_new_ring_is_committed(model, tok):
  """The ring's jit places it on the device (an inputs-free jit's output is otherwise uncommitted,
  and `_insert` compiled a second variant of every shape for such a ring)."""
  engine = BatchEngine(_gen(model, tok), slots=2, chunk=2)
  try:
    assert all(x.committed for x in jax.tree.leaves(engine._new_ring(2, 128)))
  finally:
    engine.close()


def test_single_query_attention_equals_dot_product_attention():
  rng = np.random.default_rng(1)
  b, s, h, d = 3, 20, 4, 8
  q = jnp.asarray(rng.normal(size=(b, 1, h, d)), jnp.float32)
  k, v = (jnp.asarray(rng.normal(size=(b, s, h, d)), jnp.float32) for _ in range(2))
  kv_seg = jnp.asarray(rng.integers(0, 3, (b, s)), jnp.int32).at[:, -1].set(1)
  kv_pos = jnp.asarray(rng.integers(0, 30, (b, s)), jnp.int32)
  mask = attention_mask(jnp.ones((b, 1), jnp.int32), kv_seg, jnp.full((b, 1), 25), kv_pos)
  want = layers.dot_product_attention(q, k, v, mask, 0.3)
  got = layers.single_query_attention(q, jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2), mask, 0.3)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
  assert not jax.numpy.isnan(got).any()
