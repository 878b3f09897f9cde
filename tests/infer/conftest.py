"""The session SentencePiece tokenizer (tests/conftest.py), a tiny model sized to it, a few picture files."""

import numpy as np
import pytest
from PIL import Image

from tests.infer.helpers import tiny_model


@pytest.fixture(scope="session")
def tok(sp_tok):
  return sp_tok


@pytest.fixture(scope="session")
def model(tok):
  return tiny_model(tok.vocab_size)


@pytest.fixture(scope="session")
def picture_paths(tmp_path_factory):
  d = tmp_path_factory.mktemp("pictures")
  rng = np.random.default_rng(0)
  paths = []
  for i, (w, h) in enumerate([(64, 48), (40, 80), (56, 56)]):
    p = d / f"pic{i}.png"
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(p)
    paths.append(str(p))
  return paths


@pytest.fixture(scope="session")
def hf_dir(tmp_path_factory, tok, sp_dir):
  """Random tiny weights in the released HF layout, with the SentencePiece tokenizer beside them."""
  from qwenvl_jax.testing import random_checkpoint
  from tests.infer.helpers import tiny_cfg

  dst = tmp_path_factory.mktemp("infer_hf") / "qwen-vl-tiny"
  return random_checkpoint.write_random_hf_checkpoint(dst, tiny_cfg(tok.vocab_size),
                                              tokenizer_file=sp_dir / "tokenizer.model")


@pytest.fixture(scope="session")
def ckpt_dir(tmp_path_factory, hf_dir):
  """The same weights converted to our Orbax checkpoint."""
  from qwenvl_jax.ckpt import convert

  return convert.convert_hf_to_orbax(hf_dir, tmp_path_factory.mktemp("infer_orbax") / "ckpt")
