"""`qwenvl-jax convert` end to end, and its one-line errors."""

import torch

from qwenvl_jax.cli import main
from tests.ckpt.helpers import load_hf_tensors


def test_cli_round_trip(hf_fp32, tmp_path, capsys):
  assert main(["convert", "--from", "hf", "--src", str(hf_fp32), "--dst", str(tmp_path / "o"),
               "--config", "tiny", "--quiet"]) == 0
  assert main(["convert", "--to", "hf", "--src", str(tmp_path / "o"), "--dst", str(tmp_path / "h"),
               "--format", "bin", "--shard-size", "50KB", "--quiet"]) == 0
  a, b = load_hf_tensors(hf_fp32), load_hf_tensors(tmp_path / "h")
  assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
  assert len(list((tmp_path / "h").glob("pytorch_model-*.bin"))) > 1


def test_cli_errors_are_one_line(hf_fp32, tmp_path, capsys):
  assert main(["convert", "--from", "hf", "--src", str(tmp_path / "nope"),
               "--dst", str(tmp_path / "o")]) == 2
  assert main(["convert", "--from", "hf", "--src", str(hf_fp32), "--dst", str(hf_fp32), "--quiet"]) == 2
  assert main(["convert", "--from", "openclip,qwen-llm", "--src", "x", "--dst", str(tmp_path / "o")]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 3 and all(line.startswith("qwenvl-jax convert: error:") for line in err)
  assert "is the source itself" in err[1] and "2 --src" in err[2]
