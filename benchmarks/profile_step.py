"""Where a train step's time goes, JAX (jax.profiler trace of the XLA ops) vs PyTorch (torch.profiler).

  python benchmarks/profile_step.py [--config small] [--rows 4] [--seq-len 256] [--steps 2]
                                    [--threads 1] [--top 12]

Same checkpoint, batch and optimizer as `run_all.py` (see `harness.py`). Each side's op times are
summed over `--steps` profiled steps (after a warm-up step) and grouped into matmul (XLA dot /
YNNPACK / convolution fusions; aten mm, addmm, bmm, convolution and their backward), softmax /
norms / elementwise, data movement (copy, transpose, pad, concat, slice, gather/scatter) and the
optimizer (PyTorch's foreach AdamW + clip kernels; XLA fuses the update into elementwise fusions, so
on the JAX side it lands in "elementwise"). Prints both breakdowns and the top ops.
"""

from __future__ import annotations

import argparse
import collections
import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

# Events that contain or wait for the ops rather than being ops.
_XLA_CONTAINERS = ("while", "conditional", "call", "ThunkExecutor", "PjitFunction", "ExecuteHelper",
                   "SlinkyThreadPool")
_MOVE = ("copy", "transpose", "pad", "concatenate", "slice", "dynamic-slice", "dynamic_slice",
         "dynamic-update-slice", "dynamic_update_slice", "gather", "scatter", "broadcast", "reshape",
         "bitcast", "select-and-scatter", "reverse", "iota", "wrapped_pad", "wrapped_slice",
         "wrapped_concatenate", "wrapped_transpose", "wrapped_copy")


def xla_category(name: str) -> str:
  base = name.split(".")[0]
  if base in ("dot", "convolution", "ynn_fusion", "onednn_fusion", "custom-call") or "dot" in base:
    return "matmul"
  if base in _MOVE or base.startswith(("wrapped_", "copy", "transpose")):
    return "data movement"
  return "elementwise/reduce (fusions)"


def torch_category(name: str) -> str:
  n = name.lower()
  if any(k in n for k in ("mm", "matmul", "linear", "convolution", "conv2d", "bmm", "addmm")):
    return "matmul"
  if any(k in n for k in ("adam", "_foreach", "clip", "norm_", "zero_")):
    return "optimizer"
  if any(k in n for k in ("copy", "transpose", "permute", "cat", "slice", "index", "gather",
                          "scatter", "clone", "contiguous", "expand", "view", "reshape", "split",
                          "masked_fill", "tril", "repeat", "to_copy", "select", "fill")):
    return "data movement"
  return "elementwise/reduce"


def profile_jax(trainer, batch, steps: int):
  import jax

  trainer.step(batch)
  with tempfile.TemporaryDirectory() as d:
    t = time.perf_counter()
    with jax.profiler.trace(d):
      for _ in range(steps):
        trainer.step(batch)
    wall = (time.perf_counter() - t) / steps
    path = next(pathlib.Path(d).rglob("*.xplane.pb"))
    data = jax.profiler.ProfileData.from_file(str(path))
    ops = collections.Counter()
    for plane in data.planes:
      for line in plane.lines:
        if line.name == "python":
          continue
        for ev in line.events:
          if not ev.name.startswith(_XLA_CONTAINERS):
            ops[ev.name] += ev.duration_ns / 1e9 / steps
  return wall, ops


def profile_torch(trainer, batch, steps: int):
  from torch.profiler import ProfilerActivity, profile

  trainer.step(batch)
  t = time.perf_counter()
  with profile(activities=[ProfilerActivity.CPU]) as prof:
    for _ in range(steps):
      trainer.step(batch)
  wall = (time.perf_counter() - t) / steps
  ops = collections.Counter()
  for e in prof.key_averages():
    if e.key.startswith("aten::") or "Backward" in e.key or e.key.startswith("Optimizer"):
      if e.key.startswith("aten::"):  # self time: aten ops nest (matmul -> mm)
        ops[e.key] += e.self_cpu_time_total / 1e6 / steps
  return wall, ops


def summarize(title: str, wall: float, ops: collections.Counter, categorize, top: int) -> dict:
  cats = collections.Counter()
  for name, s in ops.items():
    cats[categorize(name)] += s
  total = sum(ops.values())
  print(f"\n{title}: {wall:.3f} s/step wall (profiled), {total:.3f} s in ops")
  for c, s in cats.most_common():
    print(f"  {c:<32}{s:>8.3f} s {100 * s / max(total, 1e-12):>5.1f}%")
  print("  top ops:")
  for name, s in ops.most_common(top):
    print(f"    {name[:48]:<50}{s:>8.4f} s")
  return dict(wall_s=wall, op_s=total, categories=dict(cats), top=dict(ops.most_common(top)))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="small", help="tiny, small or 1b")
  p.add_argument("--rows", type=int, default=4)
  p.add_argument("--seq-len", type=int, default=256)
  p.add_argument("--steps", type=int, default=2)
  p.add_argument("--threads", type=int, default=1)
  p.add_argument("--top", type=int, default=12)
  args = p.parse_args(argv)
  import harness

  if args.threads == 1:
    harness.pin_to_one_core()
  import torch

  from run_all import config_spec
  from qwenvl_jax.config import load_model_config

  torch.set_num_threads(args.threads)
  cfg = load_model_config(config_spec(args.config)[1])
  batch = harness.train_batch(cfg, args.rows, args.seq_len)
  with tempfile.TemporaryDirectory() as d:
    ck = harness.write_checkpoints(cfg, pathlib.Path(d), args.config)
    jt = harness.JaxTrainer(harness.load_jax(ck))
    jt.compile(batch)
    j = summarize("JAX", *profile_jax(jt, batch, args.steps), xla_category, args.top)
    del jt
    harness.free_memory()
    tt = harness.TorchTrainer(harness.load_torch(ck))
    t = summarize("PyTorch", *profile_torch(tt, batch, args.steps), torch_category, args.top)
  print(f"\nload average {os.getloadavg()}")
  return dict(jax=j, torch=t)


if __name__ == "__main__":
  main()
