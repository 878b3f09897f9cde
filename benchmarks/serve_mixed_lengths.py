"""What one long request costs the short ones decoding beside it: a wave of 15 short chat requests
(the load benchmark's text questions, 64 new tokens) with a 16th that is long (a `--long-prompt`-token
prompt, `--long-tokens` new tokens, so it ends early), against the same wave with a 16th short one.

  python benchmarks/serve_mixed_lengths.py [--ckpt DIR] [--long-prompt 400] [--long-tokens 8]
                                           [--rounds 3]

In-process `BatchEngine` (`serve`'s), random `configs/small.py` weights by default. The long
prompt's bucket makes the engine's KV ring longer (512 + 8 -> 1024 columns instead of 128), and every
decode step reads the whole ring for every row. Prints, per wave kind (alternating, best of
`--rounds`): the wall time from submission until the 15 short requests are done and their
tokens/s; and how often the ring shrank back once the long request ended.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import serve_engine_profile  # noqa: E402  (the load benchmark's requests, one round's driver)
import serve_load  # noqa: E402


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--ckpt", default=None)
  ap.add_argument("--workdir", default="/tmp/qwenvl_serve_bench")
  ap.add_argument("--long-prompt", type=int, default=400)
  ap.add_argument("--long-tokens", type=int, default=8)
  ap.add_argument("--max-tokens", type=int, default=64)
  ap.add_argument("--rounds", type=int, default=3)
  args = ap.parse_args(argv)

  import threading

  from qwenvl_jax.infer.api import load_predictor
  from qwenvl_jax.serve.engine import BatchEngine, Request

  ckpt = pathlib.Path(args.ckpt) if args.ckpt else serve_load.small_checkpoint(
      pathlib.Path(args.workdir))
  pred = load_predictor(ckpt, batch_size=1)
  engine = BatchEngine(pred.generator, slots=16, gather_s=0)
  long_ids = (pred.tokenizer.encode(" ".join(serve_load.WORDS)) * args.long_prompt)[:args.long_prompt]
  offset, best = 0, {}
  try:
    for rnd in range(args.rounds + 1):  # round 0 compiles
      for kind in ("16 short", "15 short + 1 long"):
        shorts = serve_engine_profile.requests_for(pred, 16 if kind == "16 short" else 15, offset)
        offset += 16
        done = [threading.Event() for _ in shorts]
        tokens = [0] * len(shorts)
        reqs = []
        for k, c in enumerate(shorts):
          def emit(ids, reason, k=k):
            tokens[k] += len(ids)
            if reason is not None:
              done[k].set()
          reqs.append(Request(c.ids, c.images, args.max_tokens, emit))
        if kind != "16 short":
          reqs.append(Request(long_ids, (), args.long_tokens, lambda ids, reason: None))
        t0 = time.perf_counter()
        engine.submit_all(reqs)
        assert all(e.wait(600) for e in done)
        wall = time.perf_counter() - t0
        if rnd:
          tps = sum(tokens[:15]) / wall
          best[kind] = max(best.get(kind, (0, 0)), (tps, wall))
        time.sleep(0.2)  # the engine goes idle (and drops its ring) between waves
  finally:
    engine.close()
  for kind, (tps, wall) in best.items():
    print(f"{kind:>18}: 15 short requests done in {wall:.3f} s, {tps:7.1f} tokens/s")
  base, mixed = best["16 short"][0], best["15 short + 1 long"][0]
  print(f"the long request leaves the short ones {mixed / base:.2f}x their tokens/s "
        f"(ring shrinks: {getattr(engine.stats, 'ring_shrinks', 'n/a')})")


if __name__ == "__main__":
  main()
