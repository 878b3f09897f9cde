"""HF -> Orbax -> HF on random tiny checkpoints in the released layout: bit-identical, same dtypes."""

import json

import numpy as np
import pytest
import torch

from qwenvl_jax.ckpt import convert
from qwenvl_jax.testing import random_checkpoint
from qwenvl_jax.ckpt.checkpoint import resolve_checkpoint
from qwenvl_jax.ckpt.orbax_io import ParamReader, param_metadata
from tests.ckpt.helpers import index_keys, load_hf_tensors


def _bits(t: torch.Tensor) -> torch.Tensor:
  return t.view(torch.int16 if t.element_size() == 2 else torch.int32)


def _assert_identical(a_dir, b_dir):
  a, b = load_hf_tensors(a_dir), load_hf_tensors(b_dir)
  assert set(a) == set(b) == index_keys(a_dir) == index_keys(b_dir)
  for k in a:
    assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
    assert torch.equal(_bits(a[k]), _bits(b[k])), k  # bits, not values: NaN-safe, -0.0 != 0.0


def test_round_trip_fp32_safetensors(hf_fp32, orbax_fp32, tmp_path):
  out = convert.convert_orbax_to_hf(orbax_fp32, tmp_path / "back", shard_size=100_000)
  _assert_identical(hf_fp32, out)
  read_json = lambda d: json.loads((d / "config.json").read_text())
  assert read_json(out) == read_json(hf_fp32)
  assert (out / "qwen.tiktoken").read_bytes() == (hf_fp32 / "qwen.tiktoken").read_bytes()
  assert (out / "modeling_qwen.py").exists()  # remote code carried through hf_extra/
  ref = resolve_checkpoint(orbax_fp32)
  assert ref.tokenizer_path.name == "qwen.tiktoken"
  assert {dt for _, dt in param_metadata(ref.params_dir).values()} == {np.dtype(np.float32)}


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_round_trip_bf16(tiny_cfg, tmp_path, fmt):
  src = random_checkpoint.write_random_hf_checkpoint(tmp_path / "hf", tiny_cfg, dtype="bfloat16", fmt=fmt,
                                             shard_size=30_000, seed=3)
  mid = convert.convert_hf_to_orbax(src, tmp_path / "orbax")
  # Stored as the config's float32 master weights (bf16 -> fp32 is exact).
  assert {dt for _, dt in param_metadata(mid / "params").values()} == {np.dtype(np.float32)}
  out = convert.convert_orbax_to_hf(mid, tmp_path / "back", fmt=fmt)  # dtype: the source's
  _assert_identical(src, out)
  assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_export_dtype_and_orbax_dtype_options(hf_fp32, tmp_path):
  mid = convert.convert_hf_to_orbax(hf_fp32, tmp_path / "orbax_bf16", param_dtype="bf16")
  assert {dt.name for _, dt in param_metadata(mid / "params").values()} == {"bfloat16"}
  assert json.loads((mid / "model_config.json").read_text())["param_dtype"] == "bfloat16"
  out = convert.convert_orbax_to_hf(mid, tmp_path / "back", dtype="fp32")
  a, b = load_hf_tensors(hf_fp32), load_hf_tensors(out)
  for k in a:
    assert b[k].dtype == torch.float32
    torch.testing.assert_close(b[k], a[k].bfloat16().float(), rtol=0, atol=0)


def test_streaming_blocks_layers_and_row_blocks(hf_fp32, tmp_path, monkeypatch):
  """With tiny block sizes the tiny model takes the 7B paths: one on-disk chunk per layer,
  row-block chunks for embed / lm_head, block-wise export; still bit-identical."""
  monkeypatch.setattr(convert, "BLOCK_BYTES", 8 << 10)
  monkeypatch.setattr(convert, "MIN_LAYER_CHUNK_BYTES", 1 << 10)
  mid = convert.convert_hf_to_orbax(hf_fp32, tmp_path / "orbax")
  reader = ParamReader(mid / "params")
  assert reader.chunk_shape("llm.blocks.mlp.w1.kernel") == (1, 32, 64)  # 8 KiB layers
  assert reader.chunk_shape("llm.blocks.ln_1.scale") == (2, 32)  # 128 B layers: one chunk
  embed, lm_head = reader.chunk_shape("llm.embed"), reader.chunk_shape("llm.lm_head")
  assert 1 < embed[0] < 512 and embed[1] == 32 and lm_head[0] == 32 and 1 < lm_head[1] < 512
  out = convert.convert_orbax_to_hf(mid, tmp_path / "back", dtype="fp32")
  _assert_identical(hf_fp32, out)
