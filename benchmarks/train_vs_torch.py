"""JAX train step vs the project's PyTorch step, same checkpoint and batch, alternating: one command.

  python benchmarks/train_vs_torch.py [--config bench_vocab] [--rows 4] [--seq-len 512] [--steps 4]
                                      [--jax-variant plain:loss_chunk=0 ...] [--threads 0]

A random HF-layout checkpoint of `--config` is written once; the JAX side (`TrainStep`, the config's
defaults) loads its conversion, PyTorch (`testing/torch_reference.py` + AdamW, `harness.TorchTrainer`) the
HF files. Each side runs in its own process (`worker.py`; `--threads 0` = each library's default
threads); the parent alternates one step of each (J T J T ...), so both see the same load. Printed:
median step time per side, the ratio torch / JAX of the medians and the median of the per-pair
ratios (robust to load swings), the CPU-time ratio, the load average, and the fraction of the
LM-head floor each side reaches: floor = 6 x rows x T x hidden x vocab FLOPs (forward + both backward
matmuls of the head on every position, what PyTorch computes) / one core's fp32 matmul peak (measured
here first, FLOPs per CPU-second), compared with the step's CPU seconds (all its threads). Extra `--jax-variant NAME:FIELD=V[,FIELD=V]` workers (ModelConfig fields that
change no tensor) join the alternation, e.g. the full-logits path `plain:loss_chunk=0`; `--jax-xla
NAME:FLAG=V` workers run the default step with `--FLAG=V` added to their XLA_FLAGS (process-wide XLA
options), e.g. without YNNPACK fusions: `noynn:xla_cpu_experimental_ynn_fusion_type=`.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def matmul_peak_gflops(n: int = 2048, reps: int = 5) -> float:
  """fp32 matmul FLOPs per CPU-second of one core (torch, 1 thread, best of `reps` n x n products).

  Per CPU-second rather than per wall second: on a shared machine a step's wall time is mostly the
  other sessions' load, its CPU time is its own work, so the floor is compared with CPU seconds."""
  import torch

  torch.set_num_threads(1)
  a, b = torch.randn(n, n), torch.randn(n, n)
  a @ b
  best = float("inf")
  for _ in range(reps):
    t = time.process_time()
    a @ b
    best = min(best, time.process_time() - t)
  return 2 * n ** 3 / best / 1e9


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="bench_vocab", help="config spec (configs/<name>.py[:variant])")
  p.add_argument("--rows", type=int, default=4)
  p.add_argument("--seq-len", type=int, default=512)
  p.add_argument("--steps", type=int, default=4, help="timed steps per side (after --warmup)")
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--threads", type=int, default=0, help="0: library defaults; 1: one pinned core")
  p.add_argument("--jax-variant", action="append", default=[], metavar="NAME:FIELD=V,...")
  p.add_argument("--jax-xla", action="append", default=[], metavar="NAME:FLAG=V")
  p.add_argument("--one-at-a-time", action="store_true",
                 help="run one side's process at a time (all its steps, then the next side's) when "
                      "both sides' train states do not fit in memory together (configs/bench_1b.py "
                      "on a 24 GiB host); wall ratios then see load swings between the sides")
  p.add_argument("--json", default=None, help="also write the results here")
  args = p.parse_args(argv)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import harness
  from run_all import Worker, _progress
  from qwenvl_jax.config import load_model_config

  cfg = load_model_config(args.config)
  peak = matmul_peak_gflops()
  load_before = os.getloadavg()
  s = dict(rows=args.rows, seq_len=args.seq_len, prompt_len=0, new_tokens=0)
  with tempfile.TemporaryDirectory() as d:
    d = pathlib.Path(d)
    ck = harness.write_checkpoints(cfg, d, "bench")
    variants = [("jax", (), "")]
    for v in args.jax_variant:
      name, _, fields = v.partition(":")
      variants.append((f"jax {name}", tuple(x for f in fields.split(",") if f for x in ("--set", f)),
                       ""))
    for v in args.jax_xla:
      name, _, flag = v.partition(":")
      variants.append((f"jax {name}", (), f"--{flag}"))
    sides = [("jax", *v) for v in variants] + [("torch", "torch", (), "")]
    start = lambda lib, name, extra, flags: Worker(lib, "train", args.config, ck, s, args.threads, d,
                                                   extra, name, flags)
    n = args.warmup + args.steps
    if args.one_at_a_time:
      runs = []
      for side in sides:
        w = start(*side)
        try:
          _progress(f"{side[1]}: ready in {w.info.get('compile_s') or 0:.1f} s; {n} steps")
          runs.append([w.run() for _ in range(n)])
        finally:
          w.close()
    else:
      workers = []
      try:
        for side in sides:
          workers.append(start(*side))
          _progress(f"{side[1]}: ready in {workers[-1].info.get('compile_s') or 0:.1f} s")
        runs = [[] for _ in workers]
        for i in range(n):
          _progress(f"step {i + 1}/{n}")
          for r, w in zip(runs, workers):
            r.append(w.run())
      finally:
        for w in workers:
          w.close()
  load_after = os.getloadavg()
  h, v = cfg.llm.hidden, cfg.llm.vocab_size
  head_flops = 6 * args.rows * args.seq_len * h * v
  floor_s = head_flops / (peak * 1e9)
  torch_runs = runs[-1][args.warmup:]
  t_med = statistics.median(r["wall_s"] for r in torch_runs)
  out = dict(config=args.config, rows=args.rows, seq_len=args.seq_len, steps=args.steps,
             threads=args.threads, one_at_a_time=args.one_at_a_time, peak_gflops=peak,
             head_gflop=head_flops / 1e9, floor_s=floor_s,
             load_before=load_before, load_after=load_after, cpus=os.cpu_count(),
             torch=dict(step_s=t_med, cpu_s=statistics.median(r["cpu_s"] for r in torch_runs),
                        losses=[r["loss"] for r in runs[-1]]))
  t_cpu = out["torch"]["cpu_s"]
  out["torch"]["floor_fraction"] = floor_s / t_cpu
  print(f"\n{args.config}: {args.rows} rows x {args.seq_len} tokens, fp32, AdamW; "
        f"threads {'default' if not args.threads else args.threads}; "
        f"fp32 matmul peak {peak:.1f} GFLOP per CPU-s; LM-head floor {head_flops / 1e9:.0f} GFLOP = "
        f"{floor_s:.2f} CPU-s; load {load_before[0]:.1f} -> {load_after[0]:.1f}")
  print(f"{'side':<22}{'step s':>9}{'cpu s':>9}{'ratio':>8}{'pair ratio':>12}{'cpu ratio':>11}"
        f"{'floor %':>9}  loss")
  print(f"{'torch':<22}{t_med:>9.3f}{t_cpu:>9.3f}{'':>8}{'':>12}{'':>11}"
        f"{100 * floor_s / t_cpu:>8.0f}%  {runs[-1][-1]['loss']:.6f}")
  for (name, _, _), r in zip(variants, runs[:-1]):
    timed = r[args.warmup:]
    med = statistics.median(x["wall_s"] for x in timed)
    pair = statistics.median(t["wall_s"] / j["wall_s"] for j, t in zip(timed, torch_runs))
    cpu = statistics.median(x["cpu_s"] for x in timed)
    row = dict(step_s=med, cpu_s=cpu, ratio=t_med / med, cpu_ratio=t_cpu / cpu,
               pair_ratio=pair, floor_fraction=floor_s / cpu, losses=[x["loss"] for x in r],
               max_loss_diff=max(abs(a["loss"] - b["loss"]) for a, b in zip(r, runs[-1])))
    out[name] = row
    print(f"{name:<22}{med:>9.3f}{cpu:>9.3f}{row['ratio']:>7.2f}x{pair:>11.2f}x"
          f"{row['cpu_ratio']:>10.2f}x{100 * floor_s / cpu:>8.0f}%  {r[-1]['loss']:.6f} "
          f"(max diff {row['max_loss_diff']:.1e})")
  print("ratio = torch / JAX median wall step time (> 1: JAX faster); pair ratio = median over the "
        "alternating pairs; cpu ratio = the same for CPU seconds; floor % = LM-head floor CPU-s / "
        "the step's CPU-s (> 100%: the side skips head work, e.g. JAX's targets-only loss)")
  if args.json:
    path = pathlib.Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1))
    tmp.rename(path)
  return out


if __name__ == "__main__":
  main()
