"""JAX decode speed with stacked vs per-layer LLM weights (`Generator(unstack_layers=...)`), A/B.

  python benchmarks/decode_layout_ab.py [--configs small bench_1b:8] [--prompt-len 128]
                                        [--new-tokens 32] [--repeats 3] [--threads 1]

Random weights, one image span plus random text (as `generate_speed.py`), batch 1, greedy. Both
generators live in one process and run alternately (ABAB), so both see the same machine load; each
keeps its best decode rate. The greedy tokens of the two layouts must be equal.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import harness


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--configs", nargs="+", default=["small", "bench_1b:8"])
  p.add_argument("--prompt-len", type=int, default=128)
  p.add_argument("--new-tokens", type=int, default=32)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--threads", type=int, default=1, help="1: pinned to one core, like run_all.py")
  args = p.parse_args()
  if args.threads == 1:
    harness.pin_to_one_core()

  from flax import nnx

  from generate_speed import _prompts, jax_runner
  from qwenvl_jax.config import load_model_config
  from qwenvl_jax.infer.generate import Generator
  from qwenvl_jax.model.qwenvl import QwenVL

  print(f"# load {os.getloadavg()}", flush=True)
  for spec in args.configs:
    cfg = load_model_config(spec)
    model = QwenVL(cfg, rngs=nnx.Rngs(0))
    ids, images = _prompts(cfg, 1, args.prompt_len)
    runners = {}
    for name, unstack in (("stacked", False), ("per-layer", True)):
      t0 = time.perf_counter()
      gen = Generator(model, pad_id=0, stop_ids=(), valid_vocab=cfg.llm.vocab_size,
                      unstack_layers=unstack)
      runners[name] = jax_runner(gen, ids, images, args.new_tokens)
      print(f"{spec} {name}: setup+compile {time.perf_counter() - t0:.1f}s", flush=True)
    results = {name: [] for name in runners}
    for _ in range(args.repeats):
      for name, run in runners.items():
        results[name].append(run())
    best = {name: max(r[1] for r in rs) for name, rs in results.items()}
    same = results["stacked"][-1][2] == results["per-layer"][-1][2]
    print(f"{spec}: decode tok/s stacked {best['stacked']:.2f} | per-layer {best['per-layer']:.2f} | "
          f"x{best['per-layer'] / best['stacked']:.2f} | all runs "
          + " ".join(f"{name}=" + ",".join(f"{r[1]:.2f}" for r in rs) for name, rs in results.items())
          + f" | tokens equal {same} | load {os.getloadavg()}", flush=True)
    del runners, model
  sys.exit(0)


if __name__ == "__main__":
  main()
