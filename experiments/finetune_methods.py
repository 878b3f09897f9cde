"""Full fine-tuning vs LoRA vs Q-LoRA at small scale: the demo's base and ChatML data, one seed.

    nice -n 10 python -m experiments.finetune_methods --work runs/finetune_methods \
        --results experiments/results/finetune_methods

Each method fine-tunes demo/base (the shipped pre-trained parts, converted as scripts/demo.sh does)
on the demo's ChatML conversations about synthetic scenes (`qwenvl-jax data synth`, the demo's
arguments and seeds), with the same steps, batches, seed and data order, and is scored on the demo's
held-out set (grounding and VQA asked as chat turns). Every step is a `qwenvl-jax` command; this file
is also the config (`qwenvl-jax train --config experiments/finetune_methods.py:lora ...`):

- full:  demo/config.py as it is (ViT + adapter frozen, the LLM trained; lr 1e-3);
- lora:  the LoRA section of configs/finetune.py (released targets c_attn, attn.c_proj, w1, w2;
         dropout 0.05) at rank 8, alpha 16 on the 192-wide LLM; everything else frozen; lr 1e-2
         (10x full, the ratio configs/finetune.py uses for the 7B: 1e-5 vs 1e-4);
- qlora: lora over the LLM stored in NF4 (groups of 64, the released default);
- lora_save: lora plus `modules_to_save=("wte", "lm_head")`, what the released finetune.py does when
         the base is not a chat model, as this base is not (its LLM never saw <|im_start|> ChatML).

Measured per method: the loss curve (one PNG), held-out scores, trainable parameters, optimizer-state
bytes, the frozen base's bytes, median step time, the training process's CPU time and peak RSS.
Results: RESULTS/results.json and RESULTS/loss_curves.png.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import shlex
import statistics
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
METHODS = ("full", "lora", "qlora", "lora_save")
STEPS = 120
FULL_LR = 1e-3
LORA_LR = 1e-2
# The demo's data (scripts/demo.sh): 96 px scenes of 1-2 shapes, training seed 0, held-out seed 1.
SHAPES = ["--kind", "shapes", "--size", "96", "--max-objects", "2", "--radius", "0.12", "0.2"]


def _demo_config():
  spec = importlib.util.spec_from_file_location("qwenvl_demo_config", REPO / "demo" / "config.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config("chat")


def lora_section(method: str) -> dict:
  from qwenvl_jax.configs.finetune import LORA

  if method == "full":
    return dict(LORA, enabled=False)
  section = dict(LORA, rank=8, alpha=16.0)
  if method == "qlora":
    return dict(section, quantize="nf4")
  if method == "lora_save":
    return dict(section, modules_to_save=("wte", "lm_head"))
  return section


def get_config(variant=None):
  method = variant or "lora"
  if method not in METHODS:
    raise ValueError(f"unknown variant {method!r}; known: {list(METHODS)}")
  config = _demo_config()
  config.lora = lora_section(method)
  config.steps = STEPS
  config.checkpoint_every = STEPS
  config.log_every = 10
  config.optim.peak_lr = FULL_LR if method == "full" else LORA_LR
  return config


# --------------------------------------------------------------------------------------------
# Accounting from the abstract train state (nothing allocated).


def _abstract_state(config):
  """(params, label tree, buffers, optimizer state) of a run config as ShapeDtypeStructs."""
  from qwenvl_jax.config import MeshConfig
  from qwenvl_jax.sharding import create_mesh
  from qwenvl_jax.train.setup import setup

  mesh = create_mesh(MeshConfig())
  run = setup(config, mesh)
  state = run.abstract_state
  return state.params, run.label_tree, state.buffers, state.opt_state


def state_accounting(method: str) -> dict:
  """Trainable parameters, optimizer-state bytes and the frozen base's bytes of a method's run."""
  import jax
  import numpy as np

  from qwenvl_jax.train import optim

  abs_params, label_tree, abs_buffers, abs_opt = _abstract_state(get_config(method))
  nbytes = lambda x: int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
  params = jax.tree.leaves(abs_params)
  labels = jax.tree.leaves(label_tree)
  trained = [x for x, label in zip(params, labels) if label == optim.TRAIN]
  frozen = [x for x, label in zip(params, labels) if label != optim.TRAIN]
  return {"trainable_params": sum(int(np.prod(x.shape)) for x in trained),
          "total_params": sum(int(np.prod(x.shape)) for x in params),
          "optimizer_state_bytes": sum(nbytes(x) for x in jax.tree.leaves(abs_opt)),
          "trained_param_bytes": sum(nbytes(x) for x in trained),
          "frozen_param_bytes": sum(nbytes(x) for x in frozen),
          # a quantised base lives here (not an nnx.Param)
          "buffer_bytes": sum(nbytes(x) for x in jax.tree.leaves(abs_buffers))}


# --------------------------------------------------------------------------------------------
# Commands.


def _env() -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.setdefault("JAX_COMPILATION_CACHE_DIR", str(REPO / "runs" / "jax_cache"))
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
  env.pop("XLA_FLAGS", None)  # one CPU device, as the demo runs
  return env


def qwenvl(*args, log_path: pathlib.Path) -> dict:
  """Runs `qwenvl-jax ARGS` in the repo root; -> {cmd, seconds, cpu_seconds, max_rss_mib, load}.
  CPU time and peak RSS are the child's own (os.wait4), so they hold under a shared machine's load."""
  cmd = [sys.executable, "-m", "qwenvl_jax", *map(str, args)]
  text = shlex.join(cmd[2:]).replace(f"{REPO}/", "")  # results name paths relative to the repo
  print(f"$ {text}", flush=True)
  log_path.parent.mkdir(parents=True, exist_ok=True)
  load, t0 = os.getloadavg()[0], time.perf_counter()
  with log_path.open("w") as f:
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=f, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
  seconds = time.perf_counter() - t0
  if os.waitstatus_to_exitcode(status) != 0:
    tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-25:])
    raise RuntimeError(f"failed: {text}\n--- {log_path} ---\n{tail}")
  out = {"cmd": text, "seconds": round(seconds, 1), "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
         "max_rss_mib": round(usage.ru_maxrss / 1024), "load_before": round(load, 1),
         "load_after": round(os.getloadavg()[0], 1)}
  print(f"  {out['seconds']} s wall, {out['cpu_seconds']} CPU s, load {load:.1f}", flush=True)
  return out


def prepare(work: pathlib.Path, n_train: int, n_heldout: int) -> dict:
  """The demo's steps 1-2: the base in Orbax, training and held-out data, evaldata/<task> links."""
  runs = {}
  if not (work / "base").is_dir():
    runs["convert"] = qwenvl("convert", "--from", "hf", "--src", REPO / "demo" / "base",
                             "--dst", work / "base", "--quiet", log_path=work / "logs" / "convert.log")
  for name, n, seed in (("train", n_train, 0), ("heldout", n_heldout, 1)):
    if not (work / "data" / name / "shapes_chat.jsonl").is_file():
      runs[f"data_{name}"] = qwenvl("data", "synth", *SHAPES, "--n", n, "--seed", seed,
                                    "--out", work / "data" / name,
                                    log_path=work / "logs" / f"data_{name}.log")
  for task in ("synth_grounding_chat", "synth_vqa_chat"):
    link = work / "evaldata" / task
    if not link.exists():
      link.parent.mkdir(parents=True, exist_ok=True)
      link.symlink_to(work / "data" / "heldout")
  return runs


def read_metrics(workdir: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line]


def run_method(method: str, work: pathlib.Path, steps: int, eval_limit: int) -> dict:
  run = work / method
  if run.exists():
    raise FileExistsError(f"{run} exists: use a new --work")
  train = qwenvl("train", "--config", f"experiments/finetune_methods.py:{method}",
                 "--init", work / "base", "--workdir", run,
                 "--set", f"data.paths=('{work / 'data' / 'train' / 'shapes_chat.jsonl'}',)",
                 "--set", f"steps={steps}", "--set", f"checkpoint_every={steps}",
                 log_path=work / "logs" / f"train_{method}.log")
  evaluation = qwenvl("eval", "--task", "all", "--data", work / "evaldata", "--ckpt", run,
                      "--limit", eval_limit, "--batch-size", 16, "--out", work / f"eval_{method}",
                      "--no-progress", log_path=work / "logs" / f"eval_{method}.log")
  records = read_metrics(run)
  losses = [r["loss"] for r in records]
  times = [r["step_time_s"] for r in records[2:]]  # the first steps compile
  scores = {}
  for path in sorted((work / f"eval_{method}").glob("*.metrics.json")):
    m = json.loads(path.read_text())
    scores[m["task"]] = {"score": m["score"], "n": m["n"]}
  return {"losses": losses, "loss_first10": statistics.fmean(losses[:10]),
          "loss_last10": statistics.fmean(losses[-10:]),
          "median_step_time_s": statistics.median(times), "train": train, "eval": evaluation,
          "heldout": scores, **state_accounting(method)}


def plot(work: pathlib.Path, results: pathlib.Path, methods) -> pathlib.Path:
  from experiments import plots

  path = results / "loss_curves.png"
  plots.loss_curves({m: work / m for m in methods}, path,
                    "Fine-tuning the demo base on ChatML (same data, seed, steps)", x_offset=False)
  return path


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--work", default="runs/finetune_methods", help="runs, data and logs (git-ignored)")
  p.add_argument("--results", default="experiments/results/finetune_methods")
  p.add_argument("--steps", type=int, default=STEPS)
  p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
  p.add_argument("--n-train", type=int, default=1200, help="training scenes (each gives one conversation)")
  p.add_argument("--eval-limit", type=int, default=60, help="held-out items per task")
  args = p.parse_args(argv)
  work, results = pathlib.Path(args.work).absolute(), pathlib.Path(args.results)
  results.mkdir(parents=True, exist_ok=True)
  t0 = time.perf_counter()
  settings = {"base": json.loads((REPO / "demo" / "base" / "base.json").read_text()).get("made_by"),
              "steps": args.steps, "eval_limit": args.eval_limit, "n_train": args.n_train}
  report = {**settings, "setup": {}, "methods": {}, "seconds": 0.0}
  out = results / "results.json"
  if out.is_file():  # a later call with other --methods adds to the same comparison
    previous = json.loads(out.read_text())
    if {k: previous.get(k) for k in settings} != settings:
      raise SystemExit(f"{out} holds a run with other settings; choose another --results")
    report.update(previous)
  report["setup"].update(prepare(work, args.n_train, args.eval_limit))
  for method in args.methods:
    report["methods"][method] = run_method(method, work, args.steps, args.eval_limit)
    out.write_text(json.dumps(report, indent=2) + "\n")
  report["seconds"] = round(report["seconds"] + time.perf_counter() - t0, 1)
  report["cpu_seconds"] = round(sum(r["cpu_seconds"] for r in report["setup"].values()) + sum(
      m[k]["cpu_seconds"] for m in report["methods"].values() for k in ("train", "eval")), 1)
  out.write_text(json.dumps(report, indent=2) + "\n")
  plot(work, results, list(report["methods"]))
  print(json.dumps({m: {k: v for k, v in r.items() if k not in ("losses", "train", "eval")}
                    for m, r in report["methods"].items()}, indent=2))


if __name__ == "__main__":
  main()
