"""Image features land exactly on the positions between <img> and </img>; mismatches fail clearly."""

import numpy as np
import jax.numpy as jnp
import pytest
from flax import nnx

from qwenvl_jax.model.qwenvl import ImageSpanError, QwenVL, splice_image_features
from tests.model.helpers import image_row, tiny_config


@pytest.mark.parametrize("n_images", [0, 1, 3])
def test_features_land_on_pad_positions(n_images):
  cfg = tiny_config()
  q, d = cfg.tokens_per_image, 8
  pieces = [1, 2] + sum([["IMG", 7] for _ in range(n_images)], []) + [9]
  ids = image_row(cfg, pieces)[None]
  text = np.random.default_rng(0).normal(size=(1, ids.shape[1], d)).astype(np.float32)
  feats = np.random.default_rng(1).normal(size=(1, max(n_images, 1), q, d)).astype(np.float32)
  out = np.asarray(splice_image_features(jnp.asarray(text), jnp.asarray(ids), jnp.asarray(feats),
                                         cfg.image_start_id, cfg.image_end_id))
  # Expected, by walking the ids by hand: the k-th span's j-th inner position gets feats[k, j].
  expected = text.copy()
  k = -1
  for t, tok in enumerate(ids[0]):
    if tok == cfg.image_start_id:
      k, j = k + 1, 0
    elif tok == cfg.image_pad_id:
      expected[0, t] = feats[0, k, j]
      j += 1
  np.testing.assert_array_equal(out, expected)
  assert (ids[0] == cfg.image_pad_id).sum() == n_images * q


def test_model_splices_per_row_and_skips_vit_for_text():
  cfg = tiny_config()
  model = QwenVL(cfg, rngs=nnx.Rngs(0))
  row_a = image_row(cfg, [1, "IMG", 2, "IMG", 3])
  row_b = image_row(cfg, [4, "IMG", 5] + [6] * (cfg.tokens_per_image + 3))
  ids = jnp.asarray(np.stack([row_a, row_b]))
  images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 2, 56, 56, 3)).astype(np.float32))
  emb = np.asarray(model.embed(ids, images, num_images=jnp.asarray([2, 1])))
  feats = np.asarray(model.encode_images(images))
  inner = np.flatnonzero(np.asarray(row_b) == cfg.image_pad_id)
  np.testing.assert_allclose(emb[1, inner], feats[1, 0], atol=1e-6)
  inner_a = np.flatnonzero(np.asarray(row_a) == cfg.image_pad_id)
  np.testing.assert_allclose(emb[0, inner_a], feats[0].reshape(-1, feats.shape[-1]), atol=1e-6)
  text_only = np.asarray(model.embed(jnp.asarray([[1, 2, 3]])))
  np.testing.assert_allclose(text_only[0], np.asarray(model.llm.embed[...])[[1, 2, 3]])


def test_mismatched_images_give_clear_errors():
  cfg = tiny_config()
  model = QwenVL(cfg, rngs=nnx.Rngs(0))
  ids = jnp.asarray(image_row(cfg, [1, "IMG", 2, "IMG"])[None])
  one_image = jnp.zeros((1, 1, 56, 56, 3))
  with pytest.raises(ImageSpanError, match="2 image spans in the tokens but 1 images given"):
    model(ids, one_image)
  short = ids[:, :-3]  # cut the second span
  with pytest.raises(ImageSpanError, match="unbalanced|holds"):
    model(short, jnp.zeros((1, 2, 56, 56, 3)))
  with pytest.raises(ImageSpanError, match="no images were given"):
    model(ids)
  wrong_len = jnp.asarray(np.r_[[cfg.image_start_id], [cfg.image_pad_id] * 3, [cfg.image_end_id]][None])
  with pytest.raises(ImageSpanError, match=f"holds 3 tokens, expected {cfg.tokens_per_image}"):
    model(wrong_len, one_image)
