"""Evaluation during training: config parsing, and a tiny run evaluating its live parameters."""

import json

import numpy as np
import pytest
from PIL import Image

from qwenvl_jax.evals import in_loop
from tests.evals.fixtures import BUILDERS


def test_specs_are_checked_at_startup():
  specs = in_loop.parse_specs({"ocr": {"task": "synth_ocr", "data": "d", "every": 5, "limit": 3}}, "tok.model")
  assert specs[0].name == "ocr" and specs[0].tokenizer == "tok.model" and specs[0].batch_size == 8
  with pytest.raises(ValueError, match="evals.ocr: unknown key"):
    in_loop.parse_specs({"ocr": {"task": "synth_ocr", "data": "d", "every": 5, "evry": 1}})
  with pytest.raises(ValueError, match="evals.x: 'every' is required"):
    in_loop.parse_specs({"x": {"task": "synth_ocr", "data": "d"}})
  with pytest.raises(ValueError, match="unknown task 'nope'"):
    in_loop.parse_specs({"x": {"task": "nope", "data": "d", "every": 1}})
  ev = in_loop.InLoopEvals(specs, total_steps=12, mesh=None, workdir=".")
  assert [s for s in range(1, 13) if ev.due(s)] == [5, 10, 12]  # every 5, and the last step


@pytest.mark.slow  # a tiny training run plus two evaluations and a checkpoint eval, ~2 min
def test_training_evaluates_live_parameters(tmp_path, sp_dir, sp_tok):
  import ml_collections

  from qwenvl_jax.cli import main
  from qwenvl_jax.train.loop import train
  from qwenvl_jax.train.metrics import read_metrics
  from tests.train.helpers import stage_config

  data = tmp_path / "ocr"
  BUILDERS["synth_ocr"](data)
  rng = np.random.default_rng(0)
  for rec in map(json.loads, (data / "test.jsonl").read_text().splitlines()):
    (data / rec["image"]).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(data / rec["image"])
  v = sp_tok.vocab_size
  config = stage_config(1, "steps=4", "checkpoint_every=4", f"model.llm.vocab_size={v}",
                        f"model.image_start_id={v - 3}", f"model.image_end_id={v - 2}", f"model.image_pad_id={v - 1}")
  with config.unlocked():
    config.evals = ml_collections.ConfigDict({"ocr": dict(task="synth_ocr", data=str(data), every=2, limit=2,
                                                          batch_size=2, max_new_tokens=4,
                                                          tokenizer=str(sp_dir / "tokenizer.model"))})
  work = tmp_path / "run"
  assert train(config, work)["status"] == "done"
  records = {r["step"]: r for r in read_metrics(work)}
  assert [s for s, r in records.items() if "eval/ocr/exact_match" in r] == [2, 4]
  assert 0.0 <= records[4]["eval/ocr/exact_match"] <= 100.0 and "eval/ocr/anls" in records[4]
  assert list((work / "tb").glob("events.out.tfevents.*"))
  live = (work / "evals" / "step_4" / "ocr" / "synth_ocr_test_0shot.predictions.jsonl").read_text()
  # The same step's checkpoint evaluated from disk gives the same predictions: the loop used those weights.
  out = tmp_path / "from_ckpt"
  assert main(["eval", "--task", "synth_ocr", "--data", str(data), "--ckpt", str(work),
               "--tokenizer", str(sp_dir / "tokenizer.model"),
               "--limit", "2", "--batch-size", "2", "--max-new-tokens", "4", "--out", str(out), "--no-progress"]) == 0
  assert (out / "synth_ocr_test_0shot.predictions.jsonl").read_text() == live
