"""`convert` never destroys its input and answers bad input with one line naming the file / key.

The destination-overlap cases run the real command in a child process (that is where they deleted
the source and exited 0); the one-line errors go through `main()` in process, which is the same code.
"""

import json
import logging
import os
import shutil
import struct

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from qwenvl_jax.ckpt import convert
from qwenvl_jax.ckpt.atomic import _owner, remove_stale_partials
from qwenvl_jax.cli import main
from tests.cli_subprocess import error_line, run_cli, tree_bytes


@pytest.fixture
def hf_copy(hf_fp32, tmp_path):
  dst = tmp_path / "src" / "hf"
  shutil.copytree(hf_fp32, dst)
  return dst


def _one_error(capsys, argv) -> str:
  assert main(argv) == 2
  err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
  assert len(err) == 1 and err[0].startswith("qwenvl-jax convert: error:"), err
  return err[0]


def _first_shard(hf_dir):
  return sorted(hf_dir.glob("*.safetensors"))[0]


# --- the destination overlaps the source: refused, nothing deleted -----------------------------

def test_cli_refuses_dst_equal_to_or_containing_the_hf_source(hf_copy):
  (hf_copy.parent / "notes.txt").write_text("the user's other file")
  before = tree_bytes(hf_copy.parent)
  line = error_line(run_cli("convert", "--from", "hf", "--src", hf_copy, "--dst", hf_copy,
                            "--overwrite", "--quiet"))
  assert "is the source itself" in line
  line = error_line(run_cli("convert", "--from", "hf", "--src", hf_copy, "--dst", hf_copy.parent,
                            "--overwrite", "--quiet"))
  assert "contains the source" in line
  assert tree_bytes(hf_copy.parent) == before


def test_cli_refuses_hf_export_into_or_around_the_checkpoint(orbax_fp32, tmp_path):
  ckpt = tmp_path / "box" / "ckpt"
  shutil.copytree(orbax_fp32, ckpt)
  (ckpt.parent / "other").write_text("keep me")
  before = tree_bytes(ckpt.parent)
  line = error_line(run_cli("convert", "--to", "hf", "--src", ckpt, "--dst", ckpt.parent,
                            "--overwrite", "--quiet"))
  assert "contains the source" in line
  assert tree_bytes(ckpt.parent) == before


def test_dst_inside_the_source_is_refused_both_ways(hf_copy, orbax_fp32, capsys):
  line = _one_error(capsys, ["convert", "--from", "hf", "--src", str(hf_copy), "--dst",
                             str(hf_copy / "orbax"), "--quiet"])
  assert "is inside the source" in line
  line = _one_error(capsys, ["convert", "--to", "hf", "--src", str(orbax_fp32), "--dst",
                             str(orbax_fp32 / "hf"), "--quiet"])
  assert "is inside the source" in line
  assert not (hf_copy / "orbax").exists() and not (orbax_fp32 / "hf").exists()


def test_stage1_refuses_a_dst_holding_its_sources(hf_copy, tiny_cfg):
  with pytest.raises(ValueError, match="contains the source"):
    convert.convert_stage1(hf_copy.parent, tiny_cfg, qwen_llm=hf_copy, overwrite=True)
  assert (hf_copy / "config.json").exists()


# --- broken inputs: one line naming the file / key ----------------------------------------------

def test_truncated_shard_names_the_file(hf_copy, tmp_path, capsys):
  shard = _first_shard(hf_copy)
  data = shard.read_bytes()
  shard.write_bytes(data[:len(data) - 100])
  line = _one_error(capsys, ["convert", "--from", "hf", "--src", str(hf_copy), "--dst",
                             str(tmp_path / "o"), "--quiet"])
  assert shard.name in line and "truncated" in line
  shard.write_bytes(data[:5])  # too short for the 8-byte header length (was struct.error)
  line = _one_error(capsys, ["convert", "--from", "hf", "--src", str(hf_copy), "--dst",
                             str(tmp_path / "o"), "--quiet"])
  assert shard.name in line and "5 bytes" in line
  assert not (tmp_path / "o").exists()


def test_bad_config_json_names_file_and_field(hf_copy, tmp_path, capsys):
  cfg_path = hf_copy / "config.json"
  cj = json.loads(cfg_path.read_text())
  cfg_path.write_text(json.dumps({**cj, "num_hidden_layers": "two"}))
  line = _one_error(capsys, ["convert", "--from", "hf", "--src", str(hf_copy), "--dst",
                             str(tmp_path / "o"), "--quiet"])
  assert str(cfg_path) in line and "num_hidden_layers" in line and "'two'" in line
  cfg_path.write_text("{not json")
  line = _one_error(capsys, ["convert", "--from", "hf", "--src", str(hf_copy), "--dst",
                             str(tmp_path / "o"), "--quiet"])
  assert str(cfg_path) in line and "not valid JSON" in line


def test_unwritable_destinations(hf_copy, tmp_path, capsys):
  line = _one_error(capsys, ["convert", "--from", "hf", "--src", str(hf_copy), "--dst",
                             "/sys/qwenvl-jax-test-dst", "--quiet"])  # refused even to root
  assert "/sys/qwenvl-jax-test-dst" in line
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  line = _one_error(capsys, ["convert", "--from", "hf", "--src", str(hf_copy), "--dst",
                             str(blocker / "o"), "--quiet"])
  assert f"{blocker} is a file" in line
  assert blocker.read_text() == "x"


def test_integer_tensor_is_refused_by_name(hf_copy, tmp_path, capsys):
  shard = _first_shard(hf_copy)
  tensors = load_file(shard)
  key = sorted(tensors)[0]
  tensors[key] = tensors[key].astype(np.int32)
  save_file(tensors, shard)
  line = _one_error(capsys, ["convert", "--from", "hf", "--src", str(hf_copy), "--dst",
                             str(tmp_path / "o"), "--quiet"])
  assert key in line and "int32" in line and "float" in line


def test_nan_tensor_is_converted_with_a_warning_naming_it(hf_copy, tmp_path, caplog):
  shard = _first_shard(hf_copy)
  tensors = load_file(shard)
  key = sorted(tensors)[0]
  tensors[key] = np.full_like(tensors[key], np.nan)
  save_file(tensors, shard)
  with caplog.at_level(logging.WARNING, logger="qwenvl_jax.ckpt.convert"):
    convert.convert_hf_to_orbax(hf_copy, tmp_path / "o")
  warned = [r.getMessage() for r in caplog.records if r.name == "qwenvl_jax.ckpt.convert"]
  assert warned == [f"tensor {key} holds only NaN/inf"]


# --- leftovers of a killed conversion -----------------------------------------------------------

def _dead_pid() -> int:
  pid = 4_000_000
  while True:
    try:
      os.kill(pid, 0)
    except ProcessLookupError:
      return pid
    except PermissionError:
      pass
    pid += 1


def test_partial_folders_of_killed_conversions_are_removed(hf_fp32, tmp_path):
  dst = tmp_path / "o"
  host = _owner().split("@")[1]
  dead = tmp_path / f".o.partial-{_dead_pid()}@{host}-0badf00d"
  legacy = tmp_path / ".o.partial-1234abcd"  # the name before writers were recorded
  live = tmp_path / f".o.partial-{os.getppid()}@{host}-00c0ffee"  # a writer still running: kept
  remote = tmp_path / f".o.partial-{_dead_pid()}@zzzzzz-22222222"  # another machine's: kept
  other = tmp_path / f".other.partial-{_dead_pid()}@{host}-11111111"  # another destination's: kept
  for d in (dead, legacy, live, remote, other):
    (d / "params").mkdir(parents=True)
  convert.convert_hf_to_orbax(hf_fp32, dst)
  assert (dst / "model_config.json").exists()
  assert not dead.exists() and not legacy.exists()
  assert live.exists() and remote.exists() and other.exists()
  assert remove_stale_partials(tmp_path / "other") == [other]


def test_header_shorter_than_declared_is_named(hf_copy):
  shard = _first_shard(hf_copy)
  shard.write_bytes(struct.pack("<Q", 10 ** 9) + b"{}")
  with pytest.raises(ValueError, match=f"{shard.name}.*header of 1000000000 bytes"):
    convert.convert_hf_to_orbax(hf_copy, hf_copy.parent / "o")


# --- interruption ---------------------------------------------------------------------------------

def test_disk_full_keeps_the_old_destination(orbax_fp32, tmp_path, capsys, monkeypatch):
  import errno

  from qwenvl_jax.ckpt import hf_io

  dst = tmp_path / "hf"
  assert main(["convert", "--to", "hf", "--src", str(orbax_fp32), "--dst", str(dst), "--quiet"]) == 0
  before = tree_bytes(dst)
  calls = []

  def full(self, name, data):
    calls.append(name)
    if len(calls) == 5:
      raise OSError(errno.ENOSPC, "No space left on device")
    return real(self, name, data)

  real = hf_io.SafetensorsWriter.write
  monkeypatch.setattr(hf_io.SafetensorsWriter, "write", full)
  line = _one_error(capsys, ["convert", "--to", "hf", "--src", str(orbax_fp32), "--dst", str(dst),
                             "--overwrite", "--quiet", "--dtype", "bf16"])
  assert "No space left on device" in line
  assert tree_bytes(dst) == before and sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


@pytest.mark.slow
def test_kill_9_mid_conversion_then_rerun(hf_fp32, tmp_path):
  """A conversion killed with SIGKILL leaves no destination; the next one cleans up and succeeds."""
  import signal
  import subprocess
  import sys
  import time

  from tests.cli_subprocess import REPO

  dst = tmp_path / "o"
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  code = "import sys; from qwenvl_jax.cli import main; sys.exit(main())"
  for _ in range(5):  # the tiny conversion is quick: retry until the kill lands mid-write
    proc = subprocess.Popen([sys.executable, "-c", code, "convert", "--from", "hf", "--src", str(hf_fp32),
                             "--dst", str(dst), "--quiet"], env=env, stderr=subprocess.DEVNULL)
    while proc.poll() is None and not any(p.name.startswith(".o.partial-") for p in tmp_path.iterdir()):
      time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if proc.returncode == -signal.SIGKILL and not dst.exists():
      break
    shutil.rmtree(dst, ignore_errors=True)
  else:
    pytest.skip("the conversion always finished before the kill")
  assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".o.partial-")]  # the leftover
  proc = run_cli("convert", "--from", "hf", "--src", hf_fp32, "--dst", dst, "--quiet")
  assert proc.returncode == 0, proc.stderr
  assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]  # leftover removed
