"""scripts/demo.sh, the README's first command, runs end to end (minutes on a CPU: slow)."""

import json
import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
  env = {**os.environ, "DEMO_OUT": str(tmp_path / "demo")}
  env.pop("XLA_FLAGS", None)  # one CPU device, as a user runs it
  proc = subprocess.run(["bash", str(ROOT / "scripts/demo.sh")], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=1800)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  out = tmp_path / "demo"
  for n in range(1, 8):
    assert "== [" in proc.stdout and f"{n}/7" in proc.stdout
  assert "round trip: all" in proc.stdout
  assert list((out / "run" / "checkpoints").iterdir())
  assert (out / "run" / "tokenizer" / "tokenizer.model").is_file()
  assert "Assistant: " in proc.stdout  # a box is drawn only if the tiny model wrote a well-formed one
  (metrics,) = (out / "eval").glob("*.metrics.json")
  result = json.loads(metrics.read_text())
  assert result["n"] > 0 and 0 <= result["score"] <= 100
  losses = [json.loads(line)["loss"] for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
  assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 1.0
