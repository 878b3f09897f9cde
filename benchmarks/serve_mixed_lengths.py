"""What one long request costs in a batch of short ones, and what it pays itself. A wave of 15 short
chat requests (the load benchmark's text questions, `--max-tokens` new tokens) and a 16th that is
long, against the same wave with a 16th short one:

* long prompt: a `--long-prompt`-token prompt with `--long-tokens` new tokens (it ends early). Its
  bucket makes the KV ring longer (512 + 8 -> 1024 columns instead of 128), and every decode step
  reads the whole ring for every row: the short requests' tokens/s.
* long answer: a short prompt with `--long-answer` new tokens, joining last (so in slot 15). Once the
  short ones end it decodes alone: how long it takes, against the same request decoded alone.

  python benchmarks/serve_mixed_lengths.py [--ckpt DIR] [--long-prompt 400] [--long-tokens 8]
                                           [--long-answer 256] [--rounds 3]

In-process `BatchEngine` (`serve`'s), random `configs/small.py` weights by default; wave kinds
alternate, each keeps its best of `--rounds`; the engine counters say how often the ring shrank
and rows moved.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import threading
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import serve_engine_profile  # noqa: E402  (the load benchmark's requests)
import serve_load  # noqa: E402


def wave(engine, requests):
  """Submits (ids, max_tokens) pairs at once -> seconds until each is done, tokens of each."""
  from qwenvl_jax.serve.engine import Request

  done = [threading.Event() for _ in requests]
  ends, tokens = [0.0] * len(requests), [0] * len(requests)
  reqs = []
  for k, (ids, n) in enumerate(requests):
    def emit(new, reason, k=k):
      tokens[k] += len(new)
      if reason is not None:
        ends[k] = time.perf_counter()
        done[k].set()
    reqs.append(Request(ids, (), n, emit))
  t0 = time.perf_counter()
  engine.submit_all(reqs)
  assert all(e.wait(600) for e in done)
  time.sleep(0.2)  # the engine goes idle (and drops its ring) between waves
  return [e - t0 for e in ends], tokens


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--ckpt", default=None)
  ap.add_argument("--workdir", default="/tmp/qwenvl_serve_bench")
  ap.add_argument("--long-prompt", type=int, default=400)
  ap.add_argument("--long-tokens", type=int, default=8)
  ap.add_argument("--long-answer", type=int, default=256)
  ap.add_argument("--max-tokens", type=int, default=64)
  ap.add_argument("--rounds", type=int, default=3)
  args = ap.parse_args(argv)

  from qwenvl_jax.infer.api import load_predictor
  from qwenvl_jax.serve.engine import BatchEngine

  ckpt = pathlib.Path(args.ckpt) if args.ckpt else serve_load.small_checkpoint(
      pathlib.Path(args.workdir))
  pred = load_predictor(ckpt, batch_size=1)
  engine = BatchEngine(pred.generator, slots=16, gather_s=0)
  long_ids = (pred.tokenizer.encode(" ".join(serve_load.WORDS)) * args.long_prompt)[:args.long_prompt]
  offset, best = 0, {}

  def shorts(n):
    nonlocal offset
    out = [(c.ids, args.max_tokens) for c in serve_engine_profile.requests_for(pred, n, offset)]
    offset += n
    return out

  kinds = {
      "16 short": lambda: shorts(16),
      "15 short + long prompt": lambda: shorts(15) + [(long_ids, args.long_tokens)],
      "15 short + long answer": lambda: shorts(15) + [(shorts(1)[0][0], args.long_answer)],
      "long answer alone": lambda: [(shorts(1)[0][0], args.long_answer)],
  }
  try:
    for rnd in range(args.rounds + 1):  # round 0 compiles
      for kind, make in kinds.items():
        ends, tokens = wave(engine, make())
        # the 15 short ones: tokens/s until the last is done; the 16th request: its time
        short_tps = sum(tokens[:15]) / max(ends[:15]) if len(ends) >= 15 else 0.0
        if rnd:
          old = best.get(kind, (0.0, float("inf")))
          best[kind] = (max(old[0], short_tps), min(old[1], ends[-1]))
  finally:
    engine.close()
  base = best["16 short"][0]
  for kind in ("16 short", "15 short + long prompt"):
    tps = best[kind][0]
    print(f"{kind:>24}: the 15 short requests {tps:7.1f} tokens/s ({tps / base:.2f}x)")
  alone = best["long answer alone"][1]
  beside = best["15 short + long answer"][1]
  print(f"{'long answer':>24}: {args.long_answer} tokens in {beside:.3f} s beside 15 short ones, "
        f"{alone:.3f} s alone ({beside / alone:.2f}x)")
  print(f"engine: ring shrinks {getattr(engine.stats, 'ring_shrinks', 'n/a')}, "
        f"rows moved {getattr(engine.stats, 'rows_moved', 'n/a')}")


if __name__ == "__main__":
  main()
