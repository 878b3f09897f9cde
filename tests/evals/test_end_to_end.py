"""`qwenvl-jax eval --ckpt` end to end: a tiny checkpoint (random weights, HF layout converted to Orbax)
on synthetic grounding and OCR sets, through the real model, predictor and metric."""

import json

import numpy as np
import pytest
from PIL import Image

from qwenvl_jax.cli import main
from qwenvl_jax.evals import runner
from qwenvl_jax.evals.tasks import get_task
from tests.evals.fixtures import BUILDERS


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, sp_dir, sp_tok):
  from qwenvl_jax.ckpt import convert
  from qwenvl_jax.testing import random_checkpoint
  from tests.infer.helpers import tiny_cfg

  root = tmp_path_factory.mktemp("eval_e2e")
  hf = random_checkpoint.write_random_hf_checkpoint(root / "hf", tiny_cfg(sp_tok.vocab_size),
                                            tokenizer_file=sp_dir / "tokenizer.model")
  return convert.convert_hf_to_orbax(hf, root / "orbax")


def _with_images(task, root):
  BUILDERS[task](root)
  rng = np.random.default_rng(0)
  for rec in map(json.loads, (root / "test.jsonl").read_text().splitlines()):
    path = root / rec["image"]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path)
  return root


@pytest.mark.parametrize("task,limit", [
    ("synth_grounding", 2),
    pytest.param("synth_ocr", 3, marks=pytest.mark.slow),  # same path, another ~30 s of compiles
])
def test_eval_cli_runs_a_checkpoint(ckpt, tmp_path, capsys, task, limit):
  data = _with_images(task, tmp_path / "data")
  out = tmp_path / "out"
  args = ["eval", "--task", task, "--data", str(data), "--ckpt", str(ckpt), "--limit", str(limit),
          "--batch-size", "2", "--out", str(out), "--no-progress"]
  assert main(args) == 0
  metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert metrics["task"] == task and metrics["n"] == limit and metrics["n_missing"] == 0
  assert 0.0 <= metrics["score"] <= 100.0
  stem = runner.output_stem(get_task(task), get_task(task).paper_splits[0], 0)
  preds = [json.loads(line) for line in (out / f"{stem}.predictions.jsonl").read_text().splitlines()]
  assert len(preds) == limit and all(isinstance(p["answer"], str) for p in preds)
  # Scoring the written predictions without a model reproduces the metrics.
  assert main(["eval", "--task", task, "--data", str(data), "--limit", str(limit),
               "--predictions", str(out / f"{stem}.predictions.jsonl")]) == 0
  rescored = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert rescored["score"] == metrics["score"] and rescored["n"] == limit


@pytest.mark.slow  # two model loads and compiles, ~1 min
@pytest.mark.skipif(__import__("jax").device_count() < 8, reason="needs 8 (fake) devices")
def test_sharded_eval_gives_the_single_device_predictions(ckpt, tmp_path, capsys):
  """`--mesh` loads the checkpoint sharded (weights over fsdp x tensor, batch over data x fsdp) and writes
  the same predictions and metrics as a single-device run."""
  data = _with_images("synth_grounding", tmp_path / "data")
  common = ["eval", "--task", "synth_grounding", "--data", str(data), "--ckpt", str(ckpt), "--limit", "2",
            "--batch-size", "4", "--no-progress"]
  runs = {}
  for name, extra in (("single", []), ("sharded", ["--mesh", "data=2,fsdp=2,tensor=2"]),
                      ("tp", ["--tensor-parallel", "2"])):
    out = tmp_path / name
    assert main(common + ["--out", str(out)] + extra) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    preds = (out / "synth_grounding_test_0shot.predictions.jsonl").read_text()
    runs[name] = (preds, metrics["score"])
  assert runs["sharded"] == runs["single"] == runs["tp"]
  assert main(common + ["--out", str(tmp_path / "bad"), "--mesh", "data=3,fsdp=1,tensor=1"]) == 2
  assert main(common + ["--out", str(tmp_path / "bad"), "--mesh", "data=8,fsdp=1,tensor=1", "--batch-size", "4"]) == 2
