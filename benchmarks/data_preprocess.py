"""Images/s of the reference preprocessing (decode + RGB + bicubic resize + CLIP normalise), 1 and 2 workers.

  python benchmarks/data_preprocess.py [--n 400] [--size 448] [--workers 1 2]

Inputs are encoded in memory first (JPEG 640x480 like a web photo, and the 448px PNGs of the synthetic
text set), so the timing is decode + preprocess only, no disk. Workers are spawned processes, as grain's.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import time

import numpy as np
from PIL import Image

from qwenvl_jax.data import preprocess, synth


def _jpegs(n: int) -> list[bytes]:
  rng = np.random.default_rng(0)
  out = []
  for i in range(n):
    low = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
    img = Image.fromarray(low).resize((640, 480), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    out.append(buf.getvalue())
  return out


def _work(args):
  data, size = args
  return preprocess.load_and_preprocess(data, size).shape


def bench(images: list[bytes], size: int, workers: int) -> float:
  jobs = [(d, size) for d in images]
  if workers == 1:
    _work(jobs[0])
    t = time.perf_counter()
    for j in jobs:
      _work(j)
    return len(jobs) / (time.perf_counter() - t)
  with multiprocessing.get_context("spawn").Pool(workers) as pool:
    pool.map(_work, jobs[: 4 * workers])  # warm the workers up
    t = time.perf_counter()
    for _ in pool.imap_unordered(_work, jobs, chunksize=8):
      pass
    return len(jobs) / (time.perf_counter() - t)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--n", type=int, default=400)
  ap.add_argument("--size", type=int, default=448)
  ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
  args = ap.parse_args()
  sets = {"jpeg 640x480": _jpegs(args.n),
          "png 448 (synth text)": [r["image"] for r in synth.generate("text", min(args.n, 200), seed=0)]}
  print(f"preprocessing to {args.size}x{args.size}, {multiprocessing.cpu_count()} CPUs visible")
  print(f"{'input':<22} {'workers':>7} {'images/s':>9}")
  for name, images in sets.items():
    for w in args.workers:
      print(f"{name:<22} {w:>7} {bench(images, args.size, w):>9.0f}")


if __name__ == "__main__":
  main()
