"""Logit parity: the JAX model (loaded from a converted checkpoint) vs the independent PyTorch
forward in `testing/torch_reference.py` (loaded from the HF files), fp32, on long prompts.

The LLM half alone is also checked against transformers' Qwen2 in tests/model.
"""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from qwenvl_jax.ckpt.orbax_io import load_checkpoint
from qwenvl_jax.testing.torch_reference import TorchQwenVL
from qwenvl_jax.model.layers import ntk_alpha

TOL = 1e-4


@nnx.jit(static_argnames=("logn",))
def _logits(model, ids, images=None, rope_alpha=1.0, logn=False):
  return model(ids, images, rope_alpha=rope_alpha, logn=logn)


@nnx.jit
def _encode(model, images):
  return model.encode_images(images)


@pytest.fixture(scope="module")
def models(orbax_fp32, hf_fp32):
  model, cfg, _ = load_checkpoint(orbax_fp32)
  return model, TorchQwenVL.from_hf_dir(hf_fp32, cfg), cfg


def _image_rows(cfg, rng, length=300):
  """Two rows with two image spans each at different offsets, `length` tokens in all."""
  span = cfg.image_span
  rows = []
  for first, second in ((3, 150), (40, 251)):
    text = list(rng.integers(0, cfg.image_start_id, size=length - 2 * len(span)))
    row = text[:first] + span + text[first:second] + span + text[second:]
    rows.append(row)
  return np.asarray(rows, np.int32)


def test_text_only_long_prompt(models):
  model, tm, cfg = models
  ids = np.random.default_rng(0).integers(0, cfg.image_start_id, size=(2, 320))
  ours = np.asarray(_logits(model, jnp.asarray(ids)))
  ref = tm(ids).numpy()
  assert np.abs(ref).max() > 1.0  # not a degenerate comparison
  assert np.abs(ours - ref).max() < TOL


def test_image_and_text_long_prompt(models):
  model, tm, cfg = models
  rng = np.random.default_rng(1)
  ids = _image_rows(cfg, rng)
  images = rng.standard_normal((2, 2, 56, 56, 3)).astype(np.float32)
  ours = np.asarray(_logits(model, jnp.asarray(ids), jnp.asarray(images)))
  ref = tm(ids, images).numpy()
  assert np.abs(ours - ref).max() < TOL
  # The images matter: other images change the logits after the first span.
  other = np.asarray(_logits(model, jnp.asarray(ids), jnp.asarray(images[:, ::-1].copy())))
  assert np.abs(other - ours).max() > 1e-2


@pytest.mark.parametrize("size", [56, 84])  # 84 px: a 6x6 patch grid, both tables resized
def test_vision_tower_and_adapter(models, size):
  model, tm, cfg = models
  images = np.random.default_rng(2).standard_normal((3, 1, size, size, 3)).astype(np.float32)
  ours = np.asarray(_encode(model, jnp.asarray(images)))[:, 0]
  ref = tm.encode_images(images[:, 0]).detach().numpy()
  assert ours.shape == ref.shape == (3, cfg.adapter.n_queries, cfg.llm.hidden)
  assert np.abs(ours - ref).max() < TOL


def test_dynamic_ntk_and_logn_past_the_training_length(models):
  """Inference-only options at 300 tokens (tiny seq_length is 64): NTK alpha 7, log-n scaling."""
  model, tm, cfg = models
  ids = np.random.default_rng(3).integers(0, cfg.image_start_id, size=(1, 300))
  alpha = ntk_alpha(300, cfg.llm.seq_length)
  assert alpha == tm.ntk_alpha(300) > 1
  ours = np.asarray(_logits(model, jnp.asarray(ids), rope_alpha=alpha, logn=True))
  ref = tm(ids, rope_alpha=alpha, logn=True).numpy()
  assert np.abs(ours - ref).max() < TOL


def test_torch_greedy_cache_matches_recompute(models):
  """The oracle's KV-cache decoding equals re-running the full forward each step."""
  _, tm, cfg = models
  ids = torch.as_tensor(np.random.default_rng(4).integers(0, cfg.image_start_id, size=(2, 70)))
  out = tm.greedy(ids, max_new_tokens=5)
  alpha = tm.ntk_alpha(ids.shape[1])
  seq = ids
  for _ in range(5):
    nxt = tm(seq, rope_alpha=alpha, logn=cfg.llm.use_logn_attn)[:, -1].argmax(-1)
    seq = torch.cat([seq, nxt[:, None]], dim=1)
  assert torch.equal(out, seq)
