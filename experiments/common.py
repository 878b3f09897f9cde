"""What the experiment drivers share: stage commands, subprocess runs with timing and load, metrics."""

from __future__ import annotations

import json
import os
import pathlib
import shlex
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
CONFIG = "experiments/configs.py"


def env() -> dict:
  """CPU JAX with a persistent compilation cache shared by every process of a run (stages 2 and 3
  and all evaluations reuse compiled programs instead of paying ~40 s per process)."""
  e = dict(os.environ)
  e.setdefault("JAX_PLATFORMS", "cpu")
  e.setdefault("JAX_COMPILATION_CACHE_DIR", str(REPO / "runs" / "jax_cache"))
  e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), e.get("PYTHONPATH")]))
  return e


def loadavg() -> float:
  return os.getloadavg()[0]


def run(cmd: list[str], log_path: pathlib.Path, log=print) -> dict:
  """Runs `cmd` in the repo root, output to `log_path`; -> {cmd, seconds, load_before/after, last_line}.
  Raises with the log's tail when it fails."""
  log_path.parent.mkdir(parents=True, exist_ok=True)
  text = shlex.join(cmd)
  log(f"$ {text}")
  t0, load0 = time.perf_counter(), loadavg()
  with log_path.open("w") as f:
    proc = subprocess.run(cmd, cwd=REPO, env=env(), stdout=f, stderr=subprocess.STDOUT)
  seconds = time.perf_counter() - t0
  lines = log_path.read_text(errors="replace").strip().splitlines()
  if proc.returncode != 0:
    tail = "\n".join(lines[-25:])
    raise RuntimeError(f"command failed ({proc.returncode}): {text}\n--- {log_path} ---\n{tail}")
  log(f"  done in {seconds:.0f}s (load {load0:.1f} -> {loadavg():.1f})")
  return {"cmd": text, "seconds": round(seconds, 1), "load_before": round(load0, 2),
          "load_after": round(loadavg(), 2), "last_line": lines[-1] if lines else ""}


def python_module(module: str, *args: str) -> list[str]:
  return [sys.executable, "-m", module, *args]


def tokenizer_overrides(manifest: dict) -> list[str]:
  """--set values that make the model agree with the trained SentencePiece vocabulary."""
  return [f"model.llm.vocab_size={manifest['padded_vocab_size']}",
          f"model.image_start_id={manifest['image_start_id']}",
          f"model.image_end_id={manifest['image_end_id']}",
          f"model.image_pad_id={manifest['image_pad_id']}",
          f"data.tokenizer={manifest['tokenizer']}"]


def read_metrics(workdir: pathlib.Path) -> list[dict]:
  path = pathlib.Path(workdir) / "metrics.jsonl"
  if not path.is_file():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def smooth(values, k: int = 10) -> list[float]:
  """Trailing moving average (the first k-1 points average what exists so far)."""
  out, acc = [], 0.0
  for i, v in enumerate(values):
    acc += v
    if i >= k:
      acc -= values[i - k]
    out.append(acc / min(i + 1, k))
  return out


def probe_checkpoints(ckpts, probe, out: str | None = None) -> dict:
  """{ckpt: probe(model, model_config)} for each checkpoint, printed as it comes and written to `out`
  as JSON (the probe_* scripts)."""
  from qwenvl_jax.ckpt.orbax_io import load_checkpoint
  results = {}
  for ckpt in ckpts:
    model, cfg, _ = load_checkpoint(ckpt)
    results[ckpt] = probe(model, cfg)
    print(ckpt, json.dumps(results[ckpt]), flush=True)
  if out:
    pathlib.Path(out).write_text(json.dumps(results, indent=2) + "\n")
  return results
