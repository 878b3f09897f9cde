"""KV-cache generation: incremental logits equal a full forward, sampling filters, stops, buckets, mesh."""

import numpy as np
import jax
import jax.numpy as jnp
import pytest
import torch

from qwenvl_jax.config import MeshConfig
from qwenvl_jax.infer.generate import (GREEDY, CompileCounter, ContextLengthError, Generator,
                                       SamplingConfig, filter_logits, prompt_bucket, sample_logits)
from qwenvl_jax.model.layers import ntk_alpha
from qwenvl_jax.sharding import create_mesh, shard_model
from tests.model.helpers import image_row


def _gen(model, tok, **kw):
  return Generator(model, pad_id=tok.pad_id, stop_ids=[tok.im_end_id, tok.eod_id],
                   valid_vocab=tok.vocab_size, **kw)


def _rows(cfg, kind, rng):
  """Three prompts of different lengths (+ images per row) and their picture arrays."""
  text = lambda n: rng.integers(0, 200, n).tolist()
  size = cfg.vision.image_size
  pic = lambda: rng.normal(size=(size, size, 3)).astype(np.float32)
  if kind == "text":
    return [text(5), text(17), text(30)], [[], [], []]
  if kind == "images":
    rows = [image_row(cfg, text(3) + ["IMG"] + text(4)), image_row(cfg, ["IMG"] + text(9) + ["IMG"]),
            np.asarray(text(12))]
    return [r.tolist() for r in rows], [[pic()], [pic(), pic()], []]
  # "long": one row past the training length (64): dynamic NTK alpha 3 and log-n scaling kick in.
  return [text(100), text(7), text(40)], [[], [], []]


# images / long take minutes each on 2 cores (CI budget): slow target; text stays in the default run
@pytest.mark.parametrize("kind", ["text", pytest.param("images", marks=pytest.mark.slow),
                                  pytest.param("long", marks=pytest.mark.slow)])
def test_incremental_decoding_matches_full_forward(model, tok, kind):
  cfg = model.cfg
  rng = np.random.default_rng(0)
  prompts, images = _rows(cfg, kind, rng)
  gen = _gen(model, tok)
  batch = gen.prepare(prompts, images)
  assert batch.ids.shape[0] == 4 and batch.n_rows == 3  # batch bucket pads a row
  logits, cache, _, alpha = gen.prefill(batch, max_new_tokens=8)
  want_alpha = ntk_alpha(max(map(len, prompts)), cfg.llm.seq_length)
  assert float(alpha) == want_alpha == (3 if kind == "long" else 1)
  n_steps = 6
  cont = rng.integers(0, 200, (batch.ids.shape[0], n_steps))
  got = [np.asarray(logits)]
  for j in range(n_steps):
    logits, cache = gen.step(cache, cont[:, j], batch.lengths + j, alpha)
    got.append(np.asarray(logits))
  got = np.stack(got, 1)  # [B, 1 + n_steps, V]

  for i, (p, imgs) in enumerate(zip(prompts, images)):
    seq = np.asarray(p + cont[i].tolist(), np.int32)[None]
    pics = jnp.asarray(np.stack(imgs)[None]) if imgs else None
    full = np.asarray(model(jnp.asarray(seq), pics, rope_alpha=float(alpha), logn=True))[0]
    want = full[len(p) - 1:len(p) + n_steps]
    assert np.abs(got[i] - want).max() < 1e-4, (kind, i, np.abs(got[i] - want).max())


def test_filters_match_transformers_warpers():
  lp = pytest.importorskip("transformers.generation.logits_process")
  logits = np.random.default_rng(0).normal(size=(4, 60)).astype(np.float32) * 3
  for top_k, top_p in [(5, 1.0), (0, 0.3), (0, 0.9), (10, 0.5), (1, 1.0)]:
    ours = np.asarray(filter_logits(jnp.asarray(logits), jnp.int32(top_k), jnp.float32(top_p)))
    ref = torch.from_numpy(logits.copy())
    if top_k:
      ref = lp.TopKLogitsWarper(top_k)(None, ref)
    if top_p < 1:
      ref = lp.TopPLogitsWarper(top_p)(None, ref)
    np.testing.assert_array_equal(ours > -1e30, np.isfinite(ref.numpy()), err_msg=f"{top_k} {top_p}")


def test_top_p_excludes_the_token_at_exactly_the_threshold():
  """Probabilities [0.5, 0.25, 0.25] and top_p 0.5: the top token alone reaches 0.5, so only it is
  kept (transformers' TopPLogitsWarper removes tokens whose ascending cumulative mass <= 1 - top_p)."""
  lp = pytest.importorskip("transformers.generation.logits_process")
  logits = np.log(np.asarray([[0.25, 0.5, 0.25]], np.float32))
  ours = np.asarray(filter_logits(jnp.asarray(logits), jnp.int32(0), jnp.float32(0.5)))
  ref = lp.TopPLogitsWarper(0.5)(None, torch.from_numpy(logits.copy())).numpy()
  np.testing.assert_array_equal(np.isfinite(ref), [[False, True, False]])
  np.testing.assert_array_equal(ours > -1e30, np.isfinite(ref))


def test_sampling_respects_filters_and_greedy():
  sample = jax.jit(sample_logits)
  logits = jnp.asarray(np.random.default_rng(1).normal(size=(8, 50)).astype(np.float32))
  best = np.asarray(jnp.argmax(logits, -1))
  key = jax.random.key(0)
  args = lambda t, k, p: (jnp.float32(t), jnp.int32(k), jnp.float32(p))
  np.testing.assert_array_equal(sample(logits, key, *args(0, 0, 1.0)), best)
  np.testing.assert_array_equal(sample(logits, key, *args(1.0, 1, 1.0)), best)
  np.testing.assert_array_equal(sample(logits, key, *args(1.0, 0, 1e-6)), best)
  top3 = np.argsort(-np.asarray(logits), -1)[:, :3]
  for s in range(20):
    tok = np.asarray(sample(logits, jax.random.key(s), *args(2.0, 3, 1.0)))
    assert all(t in row for t, row in zip(tok, top3))


def test_stops_min_and_max_new_tokens(model, tok):
  gen = _gen(model, tok)
  prompt = [list(range(3, 20))]
  unused = [tok.special("<|extra_7|>")]
  free = gen.generate_ids(prompt, sampling=SamplingConfig(temperature=0, max_new_tokens=12),
                          stop_ids=unused)[0]
  assert len(free) == 12
  k = next(i for i in range(1, 12) if free[i] not in free[:i])
  cut = gen.generate_ids(prompt, sampling=SamplingConfig(temperature=0, max_new_tokens=12),
                         stop_ids=[free[k]])[0]
  assert cut == free[:k]  # stops before the stop token
  held = gen.generate_ids(prompt, sampling=SamplingConfig(temperature=0, max_new_tokens=12,
                                                          min_new_tokens=4), stop_ids=[free[0]])[0]
  assert len(held) >= 4 and held[0] != free[0]  # the stop id is suppressed for 4 steps
  assert len(gen.generate_ids(prompt, sampling=SamplingConfig(temperature=0, max_new_tokens=5),
                              stop_ids=unused)[0]) == 5


def test_padded_vocab_rows_are_never_generated(model, tok):
  """The model's vocabulary padded past the tokenizer's (as the released 151936 > 151860): padded
  lm_head columns copy 3x the column of the token greedy decoding picks at each step, so they would
  win every step if they were not masked; the first padded id (== valid_vocab) included."""
  import dataclasses
  from flax import nnx
  from qwenvl_jax.model.qwenvl import QwenVL
  prompt = [list(range(3, 20))]
  sampling = SamplingConfig(temperature=0, max_new_tokens=6)
  unused = [tok.special("<|extra_7|>")]
  want = _gen(model, tok).generate_ids(prompt, sampling=sampling, stop_ids=unused)[0]
  assert len(want) == 6
  v, pad = tok.vocab_size, 8
  cfg = dataclasses.replace(model.cfg, llm=dataclasses.replace(model.cfg.llm, vocab_size=v + pad))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  p = jax.tree.map(np.asarray, params.to_pure_dict())
  w = p["llm"]["lm_head"]
  logits0 = np.asarray(model(jnp.asarray(prompt, jnp.int32)))[0, -1]
  assert logits0[want[0]] > 0  # so 3x its column scores higher than the token itself
  p["llm"]["lm_head"] = np.concatenate([w, 3 * w[:, [want[min(i, 5)] for i in range(pad)]]], 1)
  p["llm"]["embed"] = np.concatenate([p["llm"]["embed"], np.zeros((pad, w.shape[0]), w.dtype)])
  padded = nnx.merge(nnx.graphdef(nnx.eval_shape(lambda: QwenVL(cfg, rngs=nnx.Rngs(0)))), p,
                     rest.to_pure_dict())
  got = _gen(padded, tok).generate_ids(prompt, sampling=sampling, stop_ids=unused)[0]
  assert got == want


def test_batched_rows_equal_single_rows(model, tok):
  """Left padding with per-row positions: a row's output does not depend on its batch mates."""
  gen = _gen(model, tok)
  rng = np.random.default_rng(3)
  prompts = [rng.integers(0, 200, n).tolist() for n in (4, 25, 11)]
  sampling = SamplingConfig(temperature=0, max_new_tokens=10)
  together = gen.generate_ids(prompts, sampling=sampling, stop_ids=[tok.im_end_id])
  alone = [gen.generate_ids([p], sampling=sampling, stop_ids=[tok.im_end_id])[0] for p in prompts]
  assert together == alone


def test_no_recompilation_within_a_bucket(model, tok):
  gen = _gen(model, tok)
  rng = np.random.default_rng(4)
  run = lambda n, s: gen.generate_ids([rng.integers(0, 200, n).tolist(), [5, 6, 7]], sampling=s)
  run(40, SamplingConfig(temperature=0, max_new_tokens=9))
  before = gen.compiled_count()
  with CompileCounter() as counter:
    for i, n in enumerate([33, 64, 50, 41, 60, 35]):
      run(n, SamplingConfig(temperature=0.5 * (i % 3), top_k=i % 4, top_p=1 - 0.1 * i,
                            max_new_tokens=3 + i, min_new_tokens=i % 2, seed=i))
  assert counter.count == 0 and gen.compiled_count() == before
  assert prompt_bucket(33) == prompt_bucket(64) == 64 and prompt_bucket(65) == 128
  assert prompt_bucket(1500) == 1536


def test_context_window_error(model, tok):
  gen = _gen(model, tok, max_window=50)
  with pytest.raises(ContextLengthError, match="60 tokens is longer than the context window .50"):
    gen.generate_ids([list(range(60))], sampling=GREEDY)


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")
def test_sharded_generation_matches_single_device(model, tok):
  rng = np.random.default_rng(5)
  prompts = [rng.integers(0, 200, n).tolist() for n in (9, 30)]
  sampling = SamplingConfig(temperature=0, max_new_tokens=8)
  want = _gen(model, tok).generate_ids(prompts, sampling=sampling, stop_ids=[tok.im_end_id])
  mesh = create_mesh(MeshConfig(data=2, fsdp=1, tensor=4))
  with jax.set_mesh(mesh):
    sharded = shard_model(model, mesh)
  gen = _gen(sharded, tok, mesh=mesh)
  assert gen.generate_ids(prompts, sampling=sampling, stop_ids=[tok.im_end_id]) == want
  _, cache, _, _ = gen.prefill(gen.prepare(prompts), 8)
  assert gen.per_layer  # CPU: per-layer blocks decode over per-layer heads-first [B, H, S, D] k/v
  spec = tuple(cache.k[0].sharding.spec)
  assert spec[0] == "data" and spec[1] == "tensor", spec  # batch over data, heads over tensor


def test_bfloat16_inference_copy(model, tok):
  from qwenvl_jax.infer.api import set_compute_dtype

  bf16 = set_compute_dtype(model, "bfloat16")
  assert model.llm.dtype == jnp.float32 and model.llm.embed[...].dtype == jnp.float32  # untouched
  assert bf16.llm.blocks.attn.qkv.kernel[...].dtype == jnp.bfloat16 and bf16.cfg.dtype == "bfloat16"
  gen = _gen(bf16, tok)
  logits, cache, _, _ = gen.prefill(gen.prepare([list(range(3, 40))]), 8)
  assert cache.k[0].dtype == jnp.bfloat16 and logits.dtype == jnp.float32  # per-layer k (CPU)
  out = gen.generate_ids([list(range(3, 40))], sampling=SamplingConfig(temperature=0, max_new_tokens=8),
                         stop_ids=[])
  assert len(out[0]) == 8
