"""The grain pipeline end to end: samples/s at 448px with 0/1/2 workers, and stage-2 packing efficiency.

  python benchmarks/data_pipeline.py [--n 240] [--vocab PATH]

Data: a mix of the three synthetic sets (shapes 224px, text and docs 448px, PNG in memory), every
pre-training task, the released Qwen vocabulary (found in the installed `dashscope` wheel unless --vocab),
256 image tokens, seq_len 2048. Efficiency = real tokens / row slots.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from qwenvl_jax.data import pipeline, synth


def _records(n: int) -> list[dict]:
  k = n // 3
  return (list(synth.generate("shapes", k, seed=0)) + list(synth.generate("text", k, seed=0))
          + list(synth.generate("docs", n - 2 * k, seed=0)))


def _cfg(vocab, **kw):
  base = dict(paths=(), tokenizer=vocab, seq_len=2048, batch_size=8, image_size=448, n_image_tokens=256,
              shard_index=0, shard_count=1, seed=0, num_epochs=1, drop_remainder=False)
  return pipeline.PipelineConfig(**{**base, **kw})


def throughput(vocab, records, workers: int, threads: int) -> float:
  p = pipeline.make_pipeline(_cfg(vocab, num_workers=workers, num_epochs=None, read_threads=threads), records)
  it = iter(p)
  next(it)  # start-up: worker spawn, tokenizer load
  t = time.perf_counter()
  n = 0
  while n < len(records):
    n += next(it)["tokens"].shape[0]
  return n / (time.perf_counter() - t)


def efficiency(vocab, records, **kw) -> tuple[float, float]:
  batches = list(pipeline.make_pipeline(_cfg(vocab, image_size=28, **kw), records))
  seg = np.concatenate([b["segment_ids"] for b in batches])
  return float((seg > 0).mean()), float(seg.max(axis=1).mean())


def main():
  from qwenvl_jax.text.tokenizer import find_qwen_vocab

  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--n", type=int, default=240)
  ap.add_argument("--vocab", default=None)
  ap.add_argument("--skip-packing", action="store_true")
  ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
  ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="read threads per process")
  args = ap.parse_args()
  vocab = args.vocab or str(find_qwen_vocab())
  records = _records(args.n)
  print(f"{len(records)} records; samples/s at 448px, batch 8, seq_len 2048")
  for w in args.workers:
    for t in args.threads:
      print(f"  workers={w} threads={t}: {throughput(vocab, records, w, t):6.1f} samples/s")
  if args.skip_packing:
    return
  print("packing efficiency (real tokens / slots), seq_len 2048:")
  eff, segs = efficiency(vocab, records)
  print(f"  unpacked            {eff:6.3f}  ({segs:.2f} samples/row)")
  for window in (16, 64, 256):
    eff, segs = efficiency(vocab, records, layout="packed", pack_window=window, max_images=16)
    print(f"  packed, window {window:<4} {eff:6.3f}  ({segs:.2f} samples/row)")


if __name__ == "__main__":
  main()
