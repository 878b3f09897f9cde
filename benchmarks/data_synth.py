"""Generation rate of the synthetic sets (images/s, PNG-encoded records in memory), 1 and 2 workers.

  python benchmarks/data_synth.py [--n 300] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import time

from qwenvl_jax.data import synth


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--n", type=int, default=300)
  ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
  ap.add_argument("--kinds", nargs="+", default=["shapes", "text", "docs"])
  args = ap.parse_args()
  print(f"{'kind':<7} {'size':>5} {'workers':>7} {'images/s':>9} {'KB/image':>9}")
  for kind in args.kinds:
    list(synth.generate(kind, 2, seed=99))  # imports, font cache
    for w in args.workers:
      t = time.perf_counter()
      recs = list(synth.generate(kind, args.n, seed=1, workers=w))
      dt = time.perf_counter() - t
      kb = sum(len(r["image"]) for r in recs) / len(recs) / 1024
      print(f"{kind:<7} {synth.DEFAULT_SIZE[kind]:>5} {w:>7} {args.n / dt:>9.0f} {kb:>9.0f}")


if __name__ == "__main__":
  main()
