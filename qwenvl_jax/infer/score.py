"""Mean cross-entropy of candidate continuations (multiple-choice evaluation).

As the reference multiple-choice eval does: each option is tokenised on its own and appended to the
prompt tokens; the score is the mean CE over the option's tokens (lower is better). All options of
one prompt run as rows of one forward, right-padded to buckets so nothing recompiles per question.
Only the hidden states that predict option tokens go through the LM head (the vocabulary is big).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from qwenvl_jax.infer.generate import ContextLengthError, batch_bucket, next_pow2, prompt_bucket
from qwenvl_jax.model import layers, pixels
from qwenvl_jax.model.qwenvl import check_image_spans


class Scorer:

  def __init__(self, model, *, pad_id: int, max_window: int | None = None, mesh=None):
    self.cfg = model.cfg
    self.graphdef, self.state = nnx.split(model)
    self.pad_id = int(pad_id)
    self.max_window = int(max_window or 3 * self.cfg.llm.seq_length)
    self.mesh = mesh
    self._score = jax.jit(functools.partial(_score, self.graphdef, bool(self.cfg.llm.use_logn_attn)))

  def score(self, prompt: Sequence[int], options: Sequence[Sequence[int]],
            images: Sequence[np.ndarray] = ()) -> list[float]:
    """Mean CE of each option's tokens after `prompt` (all rows share the prompt's images)."""
    if not options or any(len(o) == 0 for o in options):
      raise ValueError("every option needs at least one token")
    n = len(options)
    rows = [list(prompt) + list(o) for o in options]
    longest = max(len(r) for r in rows)
    if longest > self.max_window:
      raise ContextLengthError(f"prompt + option of {longest} tokens is longer than the context "
                               f"window ({self.max_window} tokens)")
    b, t = batch_bucket(n), prompt_bucket(longest)
    k = max(8, next_pow2(max(len(o) for o in options)))
    ids = np.full((b, t), self.pad_id, np.int32)
    seg = np.zeros((b, t), np.int32)
    pos = np.zeros((b, t), np.int32)
    src = np.zeros((b, k), np.int32)  # hidden-state index predicting each option token
    tgt = np.zeros((b, k), np.int32)
    msk = np.zeros((b, k), np.float32)
    for i, (row, opt) in enumerate(zip(rows, options)):
      ids[i, :len(row)], seg[i, :len(row)], pos[i, :len(row)] = row, 1, np.arange(len(row))
      start = len(prompt)
      src[i, :len(opt)] = np.arange(start - 1, start - 1 + len(opt))
      tgt[i, :len(opt)], msk[i, :len(opt)] = opt, 1
    seg[n:, 0] = 1  # padding rows: one real token
    image_arr, counts = None, np.zeros(b, np.int32)
    if len(images):
      m = next_pow2(len(images))
      image_arr = pixels.stack_rows([list(images)] * n, b, np.shape(images[0])[0], m)
      counts[:n] = len(images)
    check_image_spans(ids, counts, self.cfg.tokens_per_image, self.cfg.image_start_id,
                      self.cfg.image_end_id)
    alpha = 1.0
    if self.cfg.llm.use_dynamic_ntk:
      alpha = float(layers.ntk_alpha(longest, self.cfg.llm.seq_length))
    ctx = jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()
    with ctx:
      ce = self._score(self.state, ids, seg, pos, image_arr, counts, src, tgt, msk,
                       jnp.float32(alpha))
    return np.asarray(ce)[:n].tolist()


def _score(graphdef, logn, state, ids, seg, pos, images, num_images, src, tgt, msk, alpha):
  model = nnx.merge(graphdef, state)
  x = model.embed(ids, images, num_images if images is not None else None)
  hidden, _ = model.llm(x, pos, seg, rope_alpha=alpha, logn=logn)
  picked = jnp.take_along_axis(hidden, src[..., None], axis=1)  # [B, K, D]
  logp = jax.nn.log_softmax(model.llm.logits(picked).astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, tgt[..., None], axis=-1)[..., 0]
  return (nll * msk).sum(-1) / jnp.maximum(msk.sum(-1), 1)
