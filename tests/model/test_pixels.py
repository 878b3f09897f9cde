"""uint8 pixels normalised on the device equal the released pipeline's host normalisation, bit for bit,
and the model gives the same output for uint8 pixels as for the host-normalised float32 ones."""

import jax
import numpy as np
from flax import nnx
from PIL import Image

from qwenvl_jax.config import load_model_config
from qwenvl_jax.data import preprocess
from qwenvl_jax.model import pixels
from qwenvl_jax.model.qwenvl import QwenVL


def test_device_normalisation_is_bit_exact():
  rng = np.random.default_rng(0)
  img = Image.fromarray(rng.integers(0, 256, (61, 47, 3), dtype=np.uint8))
  px = preprocess.pixels(img, 56)
  assert px.dtype == np.uint8 and px.shape == (56, 56, 3)
  ref = preprocess.preprocess(img, 56)  # the released pipeline, on the host
  every_value = np.arange(256, dtype=np.uint8)[:, None].repeat(3, 1)[None]  # all 256 levels
  for x, want in ((px, ref), (every_value, preprocess.normalize(every_value))):
    got = np.asarray(jax.jit(pixels.normalize_on_device)(x))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(pixels.normalize_host(x), want)


def test_model_uint8_equals_host_normalised():
  cfg = load_model_config("tiny")
  model = QwenVL(cfg, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(1)
  px = rng.integers(0, 256, (2, 1, 56, 56, 3), dtype=np.uint8)
  a = np.asarray(model.encode_images(px))
  b = np.asarray(model.encode_images(preprocess.normalize(px)))
  np.testing.assert_array_equal(a, b)


def test_stack_rows_keeps_uint8_and_normalises_mixed():
  u = np.full((4, 4, 3), 200, np.uint8)
  f = preprocess.normalize(np.full((4, 4, 3), 10, np.uint8))
  out = pixels.stack_rows([[u], []], 2, 4, 2)
  assert out.dtype == np.uint8 and (out[0, 0] == 200).all() and not out[1].any()
  mixed = pixels.stack_rows([[u, f]], 1, 4, 2)
  assert mixed.dtype == np.float32
  np.testing.assert_array_equal(mixed[0, 0], preprocess.normalize(u))
  np.testing.assert_array_equal(mixed[0, 1], f)
