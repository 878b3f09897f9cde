"""LoRA exports (`convert --to hf --merge-lora`, `convert --to peft`) write like every converter:
a temporary folder renamed when complete, an existing destination replaced only with --overwrite,
nothing under the destination name after a failure, never into or around the run."""

import dataclasses
import json

import numpy as np
import pytest
from flax import nnx

from qwenvl_jax.ckpt import checkpoint, convert, lora_run, peft
from qwenvl_jax.ckpt.orbax_io import load_checkpoint
from qwenvl_jax.cli import main
from qwenvl_jax.testing.random_checkpoint import write_random_lora_run
from qwenvl_jax.train import finetune
from tests.cli_subprocess import tree_bytes

SETTINGS = lora_run.LoRAConfig(enabled=True, rank=4, alpha=8.0, dropout=0.0,
                               targets=peft.RELEASED_TARGETS, modules_to_save=("lm_head",))


@pytest.fixture(scope="module")
def run(tmp_path_factory, orbax_fp32):
  return write_random_lora_run(tmp_path_factory.mktemp("lora") / "run", orbax_fp32, SETTINGS)


@pytest.fixture(scope="module")
def qlora_run(tmp_path_factory, orbax_fp32):
  settings = dataclasses.replace(SETTINGS, quantize="nf4", group_size=8)
  return write_random_lora_run(tmp_path_factory.mktemp("qlora") / "run", orbax_fp32, settings)


def _logits(model, cfg):
  ids = np.asarray([np.arange(3, 43) % cfg.llm.vocab_size], np.int32)
  return np.asarray(nnx.jit(lambda m, x: m(x))(model, ids))


def _one_error(capsys, argv) -> str:
  assert main(argv) == 2
  err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
  assert len(err) == 1 and err[0].startswith("qwenvl-jax convert: error:"), err
  return err[0]


def _siblings(path):
  return sorted(p.name for p in path.parent.iterdir())


@pytest.mark.parametrize("which", ["run", "qlora_run"])
def test_merged_hf_export_gives_the_unmerged_runs_logits(which, request, tmp_path, tokenizer_file):
  run = request.getfixturevalue(which)  # Q-LoRA: mlp.c_proj is quantised without LoRA
  dst = tmp_path / "merged"
  finetune.write_merged_hf(run, dst, dtype="float32", tokenizer_file=tokenizer_file)
  assert _siblings(dst) == ["merged"]  # no intermediate left beside it
  assert (dst / tokenizer_file.name).read_bytes() == tokenizer_file.read_bytes()
  assert not any(p.name.startswith(".") for p in dst.iterdir())
  back = convert.convert_hf_to_orbax(dst, tmp_path / "back")
  merged, cfg, _ = load_checkpoint(back)
  unmerged, *_ = lora_run.load_finetuned(run)
  np.testing.assert_allclose(_logits(merged, cfg), _logits(unmerged, cfg), atol=1e-5, rtol=0)


def test_merged_checkpoint_failing_halfway_leaves_no_destination(run, tmp_path, monkeypatch):
  def fail(*_):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(checkpoint, "write_text_atomic", fail)  # after params/ is written
  dst = tmp_path / "merged"
  with pytest.raises(OSError, match="No space"):
    finetune.write_merged_checkpoint(run, dst)
  assert _siblings(dst) == []


def test_merged_hf_failing_halfway_keeps_the_old_destination(run, tmp_path, monkeypatch):
  from qwenvl_jax.ckpt import hf_io

  dst = tmp_path / "merged"
  dst.mkdir()
  (dst / "config.json").write_text("the user's previous export")
  before = tree_bytes(dst)
  write_shards = hf_io.write_shards

  def shards_then_fail(*args, **kw):
    write_shards(*args, **kw)
    raise KeyboardInterrupt

  monkeypatch.setattr(hf_io, "write_shards", shards_then_fail)
  with pytest.raises(KeyboardInterrupt):
    finetune.write_merged_hf(run, dst, overwrite=True)
  assert tree_bytes(dst) == before and _siblings(dst) == ["merged"]


def test_peft_export_failing_halfway_leaves_no_destination(run, tmp_path, monkeypatch):
  import safetensors.numpy

  def fail(tensors, filename, metadata=None):
    with open(filename, "wb") as f:
      f.write(b"half")
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(safetensors.numpy, "save_file", fail)
  dst = tmp_path / "adapter"
  with pytest.raises(OSError, match="No space"):
    finetune.export_peft(run, dst)
  assert _siblings(dst) == []


def test_peft_export_replaces_an_existing_adapter_only_with_overwrite(run, tmp_path, capsys):
  dst = tmp_path / "adapter"
  dst.mkdir()
  (dst / "adapter_config.json").write_text("{}")
  line = _one_error(capsys, ["convert", "--to", "peft", "--src", str(run), "--dst", str(dst)])
  assert "already exists" in line and json.loads((dst / "adapter_config.json").read_text()) == {}
  assert main(["convert", "--to", "peft", "--src", str(run), "--dst", str(dst), "--overwrite"]) == 0
  adapter = peft.read_adapter(dst)
  assert adapter.rank == 4 and adapter.modules_to_save == ("lm_head",)
  assert _siblings(dst) == ["adapter"]


def test_exports_refuse_a_destination_inside_or_around_the_run(run, capsys):
  before = tree_bytes(run)
  for export in (finetune.export_peft, finetune.write_merged_checkpoint, finetune.write_merged_hf):
    with pytest.raises(ValueError, match="is inside the source"):
      export(run, run / "out")
    with pytest.raises(ValueError, match="contains the source"):
      export(run, run.parent, overwrite=True)
  # A step folder as --src: the destination is still inside its run.
  step = run / "checkpoints" / "3"
  for target in (["--to", "peft"], ["--to", "hf", "--merge-lora"]):
    line = _one_error(capsys, ["convert", *target, "--src", str(step), "--dst", str(run / "out"),
                               "--quiet"])
    assert "is inside the source" in line
  assert tree_bytes(run) == before
