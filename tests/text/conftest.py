"""Tokenizers shared by the text tests: the released Qwen vocabulary (skipped when the dashscope wheel
is absent), a tiny byte-level BPE vocabulary trained here and written in the same .tiktoken format, and
the SentencePiece model of tests/conftest.py (`sp_tok`)."""

import random

import pytest

from qwenvl_jax.text.tokenizer import QwenTokenizer, find_qwen_vocab, load_tokenizer
from tests.text.helpers import synthetic_corpus, train_byte_bpe, write_tiktoken


@pytest.fixture(scope="session")
def qwen_vocab_path():
  path = find_qwen_vocab()
  if path is None:
    pytest.skip("released qwen.tiktoken not found (install the dashscope wheel)")
  return path


@pytest.fixture(scope="session")
def qwen_tok(qwen_vocab_path):
  return QwenTokenizer.from_file(qwen_vocab_path)


@pytest.fixture(scope="session")
def tiny_vocab_path(tmp_path_factory):
  # All 256 bytes (in a shuffled rank order, so nothing assumes rank == byte) plus learned merges.
  byte_tokens = [bytes([b]) for b in range(256)]
  random.Random(1).shuffle(byte_tokens)
  merges = [t for t in dict.fromkeys(train_byte_bpe(synthetic_corpus(400), 300)) if len(t) > 1]
  path = tmp_path_factory.mktemp("tiny_bpe") / "tiny.tiktoken"
  write_tiktoken(path, byte_tokens + merges)
  return path


@pytest.fixture(scope="session")
def tiny_tok(tiny_vocab_path):
  return load_tokenizer(tiny_vocab_path)


@pytest.fixture(params=["qwen", "tiny_bpe", "sentencepiece"])
def any_tok(request):
  return request.getfixturevalue({"qwen": "qwen_tok", "tiny_bpe": "tiny_tok",
                                  "sentencepiece": "sp_tok"}[request.param])
