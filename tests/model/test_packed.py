"""Packed rows: each segment's logits equal those of the same sample run alone (its own row)."""

import numpy as np
import jax.numpy as jnp
from flax import nnx

from qwenvl_jax.model.masks import segment_positions
from qwenvl_jax.model.qwenvl import QwenVL
from tests.model.helpers import image_row, tiny_config


def test_packed_segments_equal_separate_forwards():
  cfg = tiny_config()
  model = QwenVL(cfg, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  text = lambda n: [int(t) for t in rng.integers(0, cfg.image_start_id, size=n)]
  # Three samples: image + text, text only, text + image + text; then 5 padding slots.
  samples = [image_row(cfg, text(3) + ["IMG"] + text(6)), np.asarray(text(11), np.int32),
             image_row(cfg, text(2) + ["IMG"] + text(4))]
  images = rng.normal(size=(2, 56, 56, 3)).astype(np.float32)
  pad = 5
  ids = np.concatenate(samples + [np.zeros(pad, np.int32)])[None]
  seg = np.concatenate([np.full(len(s), k + 1) for k, s in enumerate(samples)] + [np.zeros(pad)])
  seg = seg.astype(np.int32)[None]
  pos = np.asarray(segment_positions(jnp.asarray(seg)))
  assert pos[0, len(samples[0])] == 0  # positions restart in every segment
  forward = nnx.jit(lambda m, *a, **kw: m(*a, **kw))
  packed = np.asarray(forward(model, jnp.asarray(ids), jnp.asarray(images[None]),
                              segment_ids=jnp.asarray(seg), positions=jnp.asarray(pos)))

  # Each sample alone in its own row (right-padded: causal, so padding after it changes nothing).
  width = max(len(s) for s in samples)
  rows = np.stack([np.pad(s, (0, width - len(s))) for s in samples])
  alone_seg = np.stack([np.arange(width) < len(s) for s in samples]).astype(np.int32)
  row_images = np.stack([images[0], np.zeros_like(images[0]), images[1]])[:, None]
  alone = np.asarray(forward(model, jnp.asarray(rows), jnp.asarray(row_images),
                             num_images=jnp.asarray([1, 0, 1]), segment_ids=jnp.asarray(alone_seg)))
  start = 0
  for k, s in enumerate(samples):
    np.testing.assert_allclose(packed[0, start:start + len(s)], alone[k, :len(s)], atol=1e-5,
                               err_msg=f"segment {k + 1}")
    start += len(s)
  # Sanity: without segment ids the later samples see the earlier ones, so their logits change.
  leaky = np.asarray(forward(model, jnp.asarray(ids), jnp.asarray(images[None])))
  assert np.abs(leaky[0, len(samples[0]):start] - packed[0, len(samples[0]):start]).max() > 1e-3
