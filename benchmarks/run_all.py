"""JAX vs the PyTorch reference on CPU: train step and generation, same weights, same inputs, one run.

  python benchmarks/run_all.py [--configs tiny,small,1b] [--quick] [--threads 1] [--with-7b-compile]
                               [--out experiments/results/benchmarks.json]

Per config (tiny = configs/tiny.py, small = configs/small.py, 1b = configs/bench_1b.py, 1b:8 = its
8-LLM-layer variant), one random HF-layout checkpoint is written and converted; JAX loads the
conversion, PyTorch (`TorchQwenVL`) the HF files (see `harness.py`). fp32 on both sides.

  train     forward + backward + AdamW update (global-norm clip, weight-decay mask, ViT layer-wise
            LR decay, identical rule) on the same batch; median seconds per step after warm-up
            steps; JAX compile time (lower + compile) apart. The losses of both sides are recorded
            step by step; they agree (same weights, batch and optimizer): "loss diff" is the largest gap.
  generate  greedy decode with KV cache of the same prompt + image, same number of new tokens:
            prefill (time to first-token logits) and decode tokens/s (medians); the new tokens of
            both sides are compared.

Each side runs in its own process (`worker.py`) and the parent alternates them run by run (ABAB),
so both see the same machine load while only one works at a time (in one process XLA's idle
worker threads took CPU from PyTorch's timed steps). Besides wall-clock time each run reports its
process CPU seconds: on this shared 2-core machine (load average often 10+) CPU time is the steadier
measure of work, wall time the one a user sees. Ratios are JAX's speed-up: torch / JAX (> 1: JAX
faster). Threads: both sides get `--threads` intra-op threads (default 1, each worker pinned to the
same core, which is also what makes XLA single-threaded: with 2 threads on an
oversubscribed machine OpenMP barriers wait for descheduled threads, which made PyTorch's tiny
decode 30x slower than with 1 thread). At 1b sizes the two train states (16 B/param + temporaries;
the JAX step peaked at 21.7 GB for 1.05B) do not fit together: the JAX steps run first, then the
PyTorch ones ("*" in the table); a phase is refused when MemAvailable is short, and a refused or
killed train phase is recorded with its reason while the generation figures are kept.

`--with-7b-compile` also times the AOT compile of the 7B stage-2 train step for a TPU topology
(`--topology`; `perf.aot` through compile_7b.py). Writes the JSON and a PNG bar chart of the ratios
next to it.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

CONFIG_FILES = {"tiny": "tiny", "small": "small", "1b": "bench_1b"}  # "1b:8" = bench_1b.py:8


def config_spec(name: str) -> tuple[str, str]:
  """'1b:8' -> ('1b', 'bench_1b:8'): the SETTINGS key and the config spec."""
  base, _, variant = name.partition(":")
  return base, CONFIG_FILES[base] + (f":{variant}" if variant else "")
# rows x seq_len of the train batch, steps, prompt tokens (one image), new tokens, gen repeats.
SETTINGS = {
    "tiny": dict(rows=4, seq_len=64, steps=10, warmup=2, prompt_len=64, new_tokens=32, repeats=5),
    "small": dict(rows=4, seq_len=256, steps=5, warmup=1, prompt_len=128, new_tokens=32, repeats=3),
    "1b": dict(rows=1, seq_len=256, steps=3, warmup=1, prompt_len=128, new_tokens=16, repeats=2,
               sequential=True),
}
QUICK = dict(steps=2, warmup=1, repeats=1)


def _load() -> list[float]:
  return [round(x, 2) for x in os.getloadavg()]


def _median(xs):
  return float(statistics.median(xs))


def _available_gib() -> float:
  with open("/proc/meminfo") as f:
    info = {line.split(":")[0]: line.split()[1] for line in f}
  return int(info["MemAvailable"]) / 2 ** 20


def check_memory(n_params: int, what: str, bytes_per_param: int = 21):
  """fp32 training holds 16 bytes per parameter (weights, gradients, Adam moments) plus XLA's
  temporaries: the JAX step peaked at 21.7 GB RSS for 1.05B parameters (~21 B/param) when the OOM
  killer stopped it. Refuse to start (clear error) rather than push a shared machine into it."""
  need = bytes_per_param * n_params / 2 ** 30 + 1.5
  have = _available_gib()
  if have < need:
    raise MemoryError(f"{what}: needs ~{need:.1f} GiB, only {have:.1f} GiB available "
                      f"(/proc/meminfo MemAvailable); free memory or use a smaller config")
  _progress(f"{what}: ~{need:.1f} GiB needed, {have:.1f} GiB available")


def _progress(msg: str):
  print(f"  [{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Workers: each side in its own process (worker.py), driven run by run.


class Worker:
  """A worker.py process; `run()` -> its JSON result for one timed run."""

  def __init__(self, side: str, task: str, spec: str, ck, s: dict, threads: int, log_dir: pathlib.Path,
               extra: tuple[str, ...] = (), name: str | None = None, xla_flags: str = ""):
    """`xla_flags`: appended to the process's XLA_FLAGS (process-wide XLA options, for A/Bs)."""
    self.what = name or f"{side} {task}"
    cmd = [sys.executable, str(HERE / "worker.py"), "--side", side, "--task", task, "--config", spec,
           "--hf", str(ck.hf_dir), "--orbax", str(ck.orbax_dir), "--rows", str(s["rows"]),
           "--seq-len", str(s["seq_len"]), "--prompt-len", str(s["prompt_len"]),
           "--new-tokens", str(s["new_tokens"]), "--threads", str(threads), *extra]
    self.log = log_dir / f"{(name or side).replace(' ', '_')}_{task}.log"
    env = dict(os.environ)
    if xla_flags:
      env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {xla_flags}".strip()
    self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=self.log.open("w"), text=True, cwd=ROOT, env=env)
    self.info = self._read()

  def _read(self) -> dict:
    for line in self.proc.stdout:
      if line.startswith("{"):
        return json.loads(line)
    tail = self.log.read_text()[-1500:]
    raise RuntimeError(f"{self.what} worker exited with {self.proc.wait()}:\n{tail}")

  def run(self) -> dict:
    self.proc.stdin.write("run\n")
    self.proc.stdin.flush()
    return self._read()

  def close(self):
    if self.proc.poll() is None:
      self.proc.stdin.write("quit\n")
      self.proc.stdin.close()
      self.proc.wait()


def alternate(workers: list[Worker], n: int, label: str) -> list[list[dict]]:
  """n runs of each worker, interleaved ABAB; -> per worker, its results."""
  out = [[] for _ in workers]
  for i in range(n):
    _progress(f"{label} {i + 1}/{n}")
    for r, w in zip(out, workers):
      r.append(w.run())
  return out


def _side_stats(runs: list[dict], skip: int) -> dict:
  timed = runs[skip:]
  return dict(wall_s=_median([r["wall_s"] for r in timed]), cpu_s=_median([r["cpu_s"] for r in timed]))


def bench_generate(spec: str, ck, s: dict, threads: int, workdir: pathlib.Path) -> dict:
  n_params = count_params(ck.cfg)
  check_memory(n_params, "generation (both models)", 8)
  sides = [Worker(side, "generate", spec, ck, s, threads, workdir) for side in ("jax", "torch")]
  try:
    j, t = alternate(sides, s["repeats"], "generate")
  finally:
    for w in sides:
      w.close()
  med = lambda runs, k: _median([r[k] for r in runs])
  row = dict(prompt_len=s["prompt_len"], new_tokens=s["new_tokens"], batch=1,
             prefill_s_jax=med(j, "prefill_s"), prefill_s_torch=med(t, "prefill_s"),
             decode_tok_s_jax=med(j, "decode_tok_s"), decode_tok_s_torch=med(t, "decode_tok_s"),
             request_cpu_s_jax=med(j, "cpu_s"), request_cpu_s_torch=med(t, "cpu_s"),
             request_wall_s_jax=med(j, "wall_s"), request_wall_s_torch=med(t, "wall_s"),
             jax_compile_s=sides[0].info["compile_s"], tokens_equal=j[-1]["tokens"] == t[-1]["tokens"])
  row["prefill_ratio"] = row["prefill_s_torch"] / row["prefill_s_jax"]
  row["decode_ratio"] = row["decode_tok_s_jax"] / row["decode_tok_s_torch"]
  row["request_cpu_ratio"] = row["request_cpu_s_torch"] / row["request_cpu_s_jax"]
  return row


def bench_train(spec: str, ck, s: dict, threads: int, workdir: pathlib.Path) -> dict:
  n_params = count_params(ck.cfg)
  n = s["warmup"] + s["steps"]
  if s.get("sequential"):  # one train state at a time
    runs, workers = [], []
    for side in ("jax", "torch"):
      check_memory(n_params, f"{side} train state")
      workers.append(Worker(side, "train", spec, ck, s, threads, workdir))
      try:
        runs.append(alternate(workers[-1:], n, f"{side} train step")[0])
      finally:
        workers[-1].close()
    j, t = runs
    info = workers[0].info
  else:
    check_memory(n_params, "train (both states)", 2 * 21)
    sides = [Worker(side, "train", spec, ck, s, threads, workdir) for side in ("jax", "torch")]
    try:
      j, t = alternate(sides, n, "train step")
    finally:
      for w in sides:
        w.close()
    info = sides[0].info
  js, ts = _side_stats(j, s["warmup"]), _side_stats(t, s["warmup"])
  tokens = s["rows"] * s["seq_len"]
  row = dict(rows=s["rows"], seq_len=s["seq_len"], steps=s["steps"], warmup=s["warmup"],
             interleaved=not s.get("sequential"), jax_compile_s=info["compile_s"],
             step_s_jax=js["wall_s"], step_s_torch=ts["wall_s"],
             step_cpu_s_jax=js["cpu_s"], step_cpu_s_torch=ts["cpu_s"],
             losses_jax=[r["loss"] for r in j], losses_torch=[r["loss"] for r in t])
  row["max_loss_diff"] = max(abs(a - b) for a, b in zip(row["losses_jax"], row["losses_torch"]))
  row["tokens_s_jax"] = tokens / row["step_s_jax"]
  row["tokens_s_torch"] = tokens / row["step_s_torch"]
  row["ratio"] = row["step_s_torch"] / row["step_s_jax"]
  row["cpu_ratio"] = row["step_cpu_s_torch"] / row["step_cpu_s_jax"]
  return row


def count_params(cfg) -> int:
  from qwenvl_jax.model.params import count_parameters

  return count_parameters(cfg)["total"]


def bench_config(name: str, s: dict, workdir: pathlib.Path, threads: int) -> dict:
  import harness
  from qwenvl_jax.config import load_model_config

  spec = config_spec(name)[1]
  cfg = load_model_config(spec)
  _progress(f"{name}: writing the random HF checkpoint and converting it")
  ck = harness.write_checkpoints(cfg, workdir, name.replace(":", "_"))
  out = dict(config=name, config_spec=f"configs/{spec}", params=count_params(cfg), load_before=_load())
  out["generate"] = bench_generate(spec, ck, s, threads, workdir)
  try:
    out["train"] = bench_train(spec, ck, s, threads, workdir)
  except (MemoryError, RuntimeError) as e:  # refused, or a worker died (OOM killer): keep the
    _progress(str(e))                        # generation figures; the table says why
    out["train"] = dict(skipped=str(e)[:500])
  out["load_after"] = _load()
  return out


# --------------------------------------------------------------------------------------------
# 7B AOT compile for a TPU topology (`perf.aot` via compile_7b.py; a child process, as it
# initialises libtpu and holds the 7B abstract state).


def compile_7b(topology: str, timeout: int) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  cmd = [sys.executable, str(HERE / "compile_7b.py"), "--topology", topology, "--json"]
  t = time.perf_counter()
  try:
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
  except subprocess.TimeoutExpired:
    return dict(topology=topology, error=f"timed out after {timeout}s")
  if res.returncode:
    return dict(topology=topology, error=res.stderr.strip().splitlines()[-1][-300:])
  out = json.loads(res.stdout.strip().splitlines()[-1])
  out["wall_s"] = time.perf_counter() - t
  return out


# --------------------------------------------------------------------------------------------
# Report.


def table(results: list[dict]) -> str:
  head = (f"{'config':<6}{'params':>8} | {'train s/step jax':>16}{'torch':>8}{'ratio':>7}{'cpu ratio':>10}"
          f"{'compile s':>10}{'loss diff':>10} | {'prefill ms jax':>14}{'torch':>8}{'ratio':>7} | "
          f"{'decode tok/s jax':>16}{'torch':>8}{'ratio':>7}{'cpu ratio':>10} same tokens")
  lines = [head, "-" * len(head)]
  for r in results:
    tr, g = r["train"], r["generate"]
    if "skipped" in tr:
      train = f"{'(not run: memory, see JSON)':>61}"
    else:
      mode = "" if tr["interleaved"] else "*"
      train = (f"{tr['step_s_jax']:>16.3f}{tr['step_s_torch']:>8.3f}{tr['ratio']:>6.2f}x{mode}"
               f"{tr['cpu_ratio']:>{9 - len(mode)}.2f}x{tr['jax_compile_s']:>10.1f}{tr['max_loss_diff']:>10.1e}")
    lines.append(
        f"{r['config']:<6}{r['params'] / 1e6:>7.1f}M | {train} | "
        f"{1e3 * g['prefill_s_jax']:>14.1f}{1e3 * g['prefill_s_torch']:>8.1f}{g['prefill_ratio']:>6.2f}x | "
        f"{g['decode_tok_s_jax']:>16.1f}{g['decode_tok_s_torch']:>8.1f}{g['decode_ratio']:>6.2f}x"
        f"{g['request_cpu_ratio']:>9.2f}x {'yes' if g['tokens_equal'] else 'NO'}")
  lines.append("ratio = JAX speed-up (torch / JAX; > 1: JAX faster), wall-clock medians; cpu ratio = the same "
               "for CPU seconds of the step / of the whole request (prefill + decode).\n"
               "* = the sides ran one after the other (memory), not interleaved.")
  return "\n".join(lines)


def plot(results: list[dict], path: pathlib.Path):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  names = [r["config"] for r in results]
  series = {"train step": [r["train"].get("ratio", np.nan) for r in results],
            "prefill": [r["generate"]["prefill_ratio"] for r in results],
            "decode": [r["generate"]["decode_ratio"] for r in results]}
  x = np.arange(len(names))
  fig, ax = plt.subplots(figsize=(6, 3.5))
  for i, (label, vals) in enumerate(series.items()):
    bars = ax.bar(x + (i - 1) * 0.27, vals, 0.27, label=label)
    ax.bar_label(bars, fmt="%.2f", fontsize=7)
  ax.axhline(1.0, color="k", lw=0.8)
  ax.set_yscale("log")  # ratios span 0.3x .. 40x
  ax.set_xticks(x, names)
  ax.set_ylabel("JAX speed-up over PyTorch (x, log)")
  ax.set_title("JAX vs PyTorch, fp32 on CPU (higher = JAX faster)")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--configs", default="tiny,small,1b", help="comma list of " + ",".join(CONFIG_FILES))
  p.add_argument("--quick", action="store_true", help=f"fewer steps/repeats: {QUICK}")
  p.add_argument("--steps", type=int, help="timed train steps (overrides the per-config default)")
  p.add_argument("--threads", type=int, default=1,
                 help="intra-op threads of both sides (1: each worker is pinned to the same single "
                      "core, which also makes XLA single-threaded; else XLA uses every core)")
  p.add_argument("--with-7b-compile", action="store_true")
  p.add_argument("--topology", default="v5p:2x2x1")
  p.add_argument("--out", default=str(ROOT / "experiments/results/benchmarks.json"))
  p.add_argument("--workdir", help="checkpoint directory (default: a temporary one)")
  args = p.parse_args(argv)
  names = [c.strip() for c in args.configs.split(",") if c.strip()]
  unknown = [c for c in names if c.partition(":")[0] not in CONFIG_FILES]
  if unknown:
    p.error(f"unknown config(s) {unknown}; known: {sorted(CONFIG_FILES)}")

  import jax
  import torch

  machine = dict(host=platform.node(), cpu=platform.processor() or platform.machine(),
                 cores=os.cpu_count(), threads=args.threads, jax=jax.__version__,
                 torch=torch.__version__, jax_device=str(jax.devices()[0].device_kind),
                 mem_gb=round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30, 1),
                 dtype="float32", quick=args.quick,
                 date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
  print(f"# {machine['host']}: {machine['cores']} cores, {machine['mem_gb']} GiB | jax {machine['jax']} "
        f"({machine['jax_device']}) | torch {machine['torch']}, {machine['threads']} thread(s) per side | "
        f"fp32 | load {_load()}", flush=True)
  results = []
  with tempfile.TemporaryDirectory(prefix="bench_") as tmp:
    workdir = pathlib.Path(args.workdir or tmp)
    for name in names:
      s = dict(SETTINGS[config_spec(name)[0]], **(QUICK if args.quick else {}))
      if args.steps:
        s["steps"] = args.steps
      results.append(bench_config(name, s, workdir, args.threads))
      print(table(results[-1:]).splitlines()[2], flush=True)
      partial = pathlib.Path(args.out).with_suffix(".partial.json")
      partial.parent.mkdir(parents=True, exist_ok=True)
      partial.write_text(json.dumps(dict(machine=machine, results=results), indent=1) + "\n")
  report = dict(machine=machine, settings={n: SETTINGS[config_spec(n)[0]] for n in names},
                results=results)
  if args.with_7b_compile:
    _progress(f"7B stage-2 train step: AOT compile for {args.topology}")
    report["compile_7b"] = compile_7b(args.topology, timeout=1800)
  print()
  print(table(results))
  if "compile_7b" in report:
    c = report["compile_7b"]
    print(f"7B stage-2 train step on {c['topology']}: " +
          (c["error"] if "error" in c else f"compile {c['compile_s']:.1f}s (lower {c['lower_s']:.1f}s), "
           f"{c.get('summary', '')}"))
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(report, indent=1) + "\n")
  plot(results, out.with_suffix(".png"))
  out.with_suffix(".partial.json").unlink(missing_ok=True)
  print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
  main()
