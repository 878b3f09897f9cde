"""Per-layer LLM weights for inference (`QwenLM.unstack_layers`): same results as the stacked scan."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from qwenvl_jax.infer.generate import Generator, SamplingConfig
from qwenvl_jax.model.llm import is_per_layer, stacked_cache


def _gen(model, tok, unstack):
  return Generator(model, pad_id=tok.pad_id, stop_ids=[tok.im_end_id], valid_vocab=tok.vocab_size,
                   unstack_layers=unstack)


def test_generation_matches_stacked_layers(model, tok):
  rng = np.random.default_rng(5)
  prompts = [rng.integers(0, 200, n).tolist() for n in (6, 19)]
  stacked, per_layer = _gen(model, tok, False), _gen(model, tok, True)
  # The caller's model keeps its stacked layout; only the generator's snapshot is per layer.
  assert not isinstance(model.llm.blocks, nnx.List)
  assert isinstance(nnx.merge(per_layer.graphdef, per_layer.state).llm.blocks, nnx.List)

  batch = stacked.prepare(prompts)
  want_logits, want_cache, _, _ = stacked.prefill(batch, max_new_tokens=8)
  got_logits, got_cache, _, _ = per_layer.prefill(batch, max_new_tokens=8)
  np.testing.assert_allclose(got_logits, want_logits, atol=1e-5)
  # Per-layer generators keep the heads-first decode layout (llm.per_layer_cache): compare stacked.
  assert is_per_layer(got_cache) and not is_per_layer(want_cache)
  got_cache = stacked_cache(got_cache)
  np.testing.assert_allclose(got_cache.k, want_cache.k, rtol=1e-5, atol=1e-5)  # values up to ~20: fp32 rounding
  np.testing.assert_allclose(got_cache.v, want_cache.v, rtol=1e-5, atol=1e-5)

  sampling = SamplingConfig(temperature=0, max_new_tokens=12)
  assert (per_layer.generate_ids(prompts, sampling=sampling, stop_ids=())
          == stacked.generate_ids(prompts, sampling=sampling, stop_ids=()))


def test_uncached_forward_matches_scan(model):
  view = nnx.merge(*nnx.split(model))  # shares the arrays
  view.llm.unstack_layers()
  cfg = model.cfg.llm
  x = jax.random.normal(jax.random.key(0), (2, 9, cfg.hidden))
  pos = jnp.broadcast_to(jnp.arange(9), (2, 9))
  seg = jnp.ones((2, 9), jnp.int32).at[0, :3].set(0)
  want, _ = model.llm(x, pos, seg)
  got, _ = view.llm(x, pos, seg)
  np.testing.assert_allclose(got, want, atol=1e-4)  # fp32 rounding: eager vs scan
