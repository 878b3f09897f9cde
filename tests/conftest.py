"""Shared test setup: 8 fake CPU devices (set before jax is imported anywhere), fp32 matmuls, and the
small tokenizers several test packages use (built once per session)."""

import os

import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
  """Converted-HF caches go to a temporary folder, never the user's ~/.cache (subprocesses too)."""
  os.environ["QWENVL_JAX_CACHE"] = str(tmp_path_factory.mktemp("qwenvl_jax_cache"))


@pytest.fixture(scope="session")
def sp_dir(tmp_path_factory):
  """A folder holding `tokenizer.model`: SentencePiece (600 ids) trained here on a synthetic corpus."""
  from qwenvl_jax.text.tokenizer import SentencePieceTokenizer
  from tests.text.helpers import synthetic_corpus

  d = tmp_path_factory.mktemp("sp")
  SentencePieceTokenizer.train(synthetic_corpus(3000, seed=2), vocab_size=600,
                               model_prefix=d / "tokenizer")
  return d


@pytest.fixture(scope="session")
def sp_tok(sp_dir):
  from qwenvl_jax.text.tokenizer import load_tokenizer

  return load_tokenizer(sp_dir)


@pytest.fixture(scope="session")
def byte_vocab(tmp_path_factory) -> str:
  """A byte-level .tiktoken vocabulary (rank i = byte i): loads instantly, one token per byte."""
  from tests.text.helpers import write_tiktoken

  path = tmp_path_factory.mktemp("vocab") / "bytes.tiktoken"
  write_tiktoken(path, [bytes([i]) for i in range(256)])
  return str(path)
