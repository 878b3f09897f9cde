"""Fixtures: the tiny config and random tiny checkpoints in the released HF layout (session-wide)."""

import pathlib

import pytest

from qwenvl_jax.ckpt import convert
from qwenvl_jax.testing import random_checkpoint
from qwenvl_jax.config import load_model_config


@pytest.fixture(scope="session")
def tiny_cfg():
  return load_model_config("tiny")


@pytest.fixture(scope="session")
def tokenizer_file(tmp_path_factory) -> pathlib.Path:
  """A stand-in tokenizer file (only copied around here, never parsed)."""
  path = tmp_path_factory.mktemp("tok") / "qwen.tiktoken"
  path.write_text("IQ== 0\nIg== 1\n")
  return path


@pytest.fixture(scope="session")
def hf_fp32(tmp_path_factory, tiny_cfg, tokenizer_file) -> pathlib.Path:
  """fp32 safetensors in several shards (+ index, config.json, tokenizer, a remote-code file)."""
  dst = tmp_path_factory.mktemp("hf_fp32") / "ckpt"
  random_checkpoint.write_random_hf_checkpoint(dst, tiny_cfg, dtype="float32", shard_size=40_000,
                                       tokenizer_file=tokenizer_file)
  (dst / "modeling_qwen.py").write_text("# remote code stand-in\n")
  return dst


@pytest.fixture(scope="session")
def orbax_fp32(tmp_path_factory, hf_fp32) -> pathlib.Path:
  dst = tmp_path_factory.mktemp("orbax_fp32") / "ckpt"
  return convert.convert_hf_to_orbax(hf_fp32, dst)
