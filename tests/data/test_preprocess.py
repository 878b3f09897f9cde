"""Preprocessing against an independent numpy computation, and corrupt-image errors."""

import io

import numpy as np
import pytest
from PIL import Image

from qwenvl_jax.data import preprocess
from qwenvl_jax.data.preprocess import CorruptImageError, load_image

# The OpenAI CLIP constants (released Qwen-VL visual.py), written out independently of the module.
MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
STD = np.array([0.26862954, 0.26130258, 0.27577711])


def _png(img: Image.Image) -> bytes:
  buf = io.BytesIO()
  img.save(buf, format="PNG")
  return buf.getvalue()


def _random_image(mode="RGB", size=(97, 61), seed=0):
  rng = np.random.default_rng(seed)
  arr = rng.integers(0, 256, size=(size[1], size[0], 4), dtype=np.uint8)
  img = Image.fromarray(arr, "RGBA")
  return img if mode == "RGBA" else img.convert("RGB").convert(mode)


def test_constants():
  np.testing.assert_array_equal(np.asarray(preprocess.CLIP_MEAN), MEAN)
  np.testing.assert_array_equal(np.asarray(preprocess.CLIP_STD), STD)


@pytest.mark.parametrize("size", [224, 448])
@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P"])
def test_matches_numpy_reference(size, mode):
  img = _random_image(mode)
  got = preprocess.load_and_preprocess(_png(img), size)
  ref_img = Image.open(io.BytesIO(_png(img))).convert("RGB").resize((size, size), Image.BICUBIC)
  want = (np.asarray(ref_img, np.float64) / 255.0 - MEAN) / STD
  assert got.dtype == np.float32 and got.shape == (size, size, 3)
  np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


def test_resize_is_pil_bicubic_not_bilinear():
  img = _random_image()
  got = preprocess.resize(img, 32)
  assert np.array_equal(np.asarray(got), np.asarray(img.resize((32, 32), Image.BICUBIC)))
  assert not np.array_equal(np.asarray(got), np.asarray(img.resize((32, 32), Image.BILINEAR)))


def test_load_from_path(tmp_path):
  p = tmp_path / "a.png"
  p.write_bytes(_png(_random_image()))
  assert load_image(p).mode == "RGB"
  assert load_image(str(p)).size == (97, 61)


def test_missing_file_names_it(tmp_path):
  with pytest.raises(CorruptImageError, match="nope.png.*not found") as e:
    load_image(tmp_path / "nope.png")
  assert e.value.name.endswith("nope.png")


def test_truncated_and_garbage(tmp_path):
  data = _png(_random_image(size=(200, 200)))
  p = tmp_path / "trunc.png"
  p.write_bytes(data[: len(data) // 2])
  with pytest.raises(CorruptImageError, match="trunc.png"):
    load_image(p)  # Image.open alone would succeed: load() forces the decode
  with pytest.raises(CorruptImageError, match="rec-7"):
    load_image(b"not an image at all", name="rec-7")
