"""Where a serving engine's wall time goes: prefill (admission) vs decode chunks vs the rest.

  python benchmarks/serve_engine_profile.py [--ckpt DIR] [--clients 1 16] [--rounds 3]
                                            [--max-tokens 64] [--max-batch 16] [--chunk 8]
                                            [--xla-default] [--no-prefix-cache]

In-process, no HTTP: the same `BatchEngine` `serve` runs, fed the load benchmark's text-only
requests (prompts built by the server's own request parser), `clients` requests submitted at once
per round. The engine's admission (`_admit`: host batch preparation, prefill, KV insert,
first-token sampling) and decode chunks (`_step`) are timed on the engine thread (both end in a
host read of their tokens, so the times are complete); "other" is the round's wall time minus
both (thread hand-offs, Python bookkeeping). The levels are run alternately after one untimed
round each (compiles), each keeping its best round. Also times detokenising: the server's
`TextStream` over one answer, fed chunk by chunk as the engine hands tokens out.
`--xla-default` adds a second engine whose decode chunk is compiled with XLA's default options
instead of the engine's (`decode_compiler_options`); the two engines run their rounds alternately
(one at a time), the A/B of those options under the same load; `--no-prefix-cache` likewise adds
an engine without the prefix cache. Every request asks its own question (nothing repeats to cache).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import random
import sys
import threading
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import serve_load  # noqa: E402  (its checkpoint and question words)


def requests_for(pred, n: int, offset: int):
  from qwenvl_jax.serve.messages import ServeLimits, parse_request

  out = []
  for i in range(offset, offset + n):
    rng = random.Random(i)
    question = " ".join(rng.choice(serve_load.WORDS) for _ in range(rng.randint(4, 12))) + "?"
    body = {"model": "bench", "temperature": 0, "messages": [
        {"role": "user", "content": [{"type": "text", "text": question}]}]}
    out.append(parse_request(body, pred, ServeLimits(), model_names=["bench"]))
  return out


class Timed:
  """Wraps the engine's `_admit` and `_step` with wall-clock accumulators."""

  def __init__(self, engine):
    self.admit_s = self.step_s = 0.0
    self.admits = self.steps = 0
    self.inside = threading.Event()  # set while the engine thread is in a timed call
    for name in ("_admit", "_step"):
      setattr(engine, name, self._wrap(name, getattr(engine, name)))

  def _wrap(self, name, fn):
    def timed(*a, **kw):
      t0 = time.perf_counter()
      self.inside.set()
      try:
        return fn(*a, **kw)
      finally:
        dt = time.perf_counter() - t0
        self.inside.clear()
        if name == "_admit":
          self.admit_s, self.admits = self.admit_s + dt, self.admits + 1
        else:
          self.step_s, self.steps = self.step_s + dt, self.steps + 1
    return timed

  def reset(self):
    self.admit_s = self.step_s = 0.0
    self.admits = self.steps = 0


def run_round(engine, chats, max_tokens: int):
  from qwenvl_jax.serve.engine import Request

  done = [threading.Event() for _ in chats]
  counts = [0] * len(chats)
  for k, c in enumerate(chats):
    def emit(ids, reason, k=k):
      counts[k] += len(ids)
      if reason is not None:
        done[k].set()
    engine.submit(Request(c.ids, c.images, max_tokens, emit))
  assert all(e.wait(600) for e in done)
  return sum(counts)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--ckpt", default=None)
  ap.add_argument("--workdir", default="/tmp/qwenvl_serve_bench")
  ap.add_argument("--clients", type=int, nargs="+", default=[1, 16])
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument("--max-tokens", type=int, default=64)
  ap.add_argument("--max-batch", type=int, default=16)
  ap.add_argument("--chunk", type=int, default=8)
  ap.add_argument("--xla-default", action="store_true",
                  help="also run an engine with XLA's default decode options, alternately")
  ap.add_argument("--no-prefix-cache", action="store_true",
                  help="also run an engine without the prefix cache, alternately")
  args = ap.parse_args(argv)

  from qwenvl_jax.infer.api import load_predictor
  from qwenvl_jax.serve.app import TextStream
  from qwenvl_jax.serve.engine import BatchEngine

  ckpt = pathlib.Path(args.ckpt) if args.ckpt else serve_load.small_checkpoint(
      pathlib.Path(args.workdir))
  pred = load_predictor(ckpt, batch_size=1)
  variants = {"engine": {}, **({"xla default": dict(compiler_options={})} if args.xla_default
                               else {}),
              **({"no prefix cache": dict(prefix_cache_tokens=0)} if args.no_prefix_cache else {})}
  engines = {name: BatchEngine(pred.generator, slots=args.max_batch, chunk=args.chunk, **kw)
             for name, kw in variants.items()}
  timers = {name: Timed(e) for name, e in engines.items()}
  best = {}
  try:
    offset = 0
    for engine in engines.values():
      for c in args.clients:  # untimed: compiles
        run_round(engine, requests_for(pred, c, offset), args.max_tokens)
        offset += c
    for _ in range(args.rounds):
      for c in args.clients:
        for name, engine in engines.items():
          timed = timers[name]
          chats = requests_for(pred, c, offset)
          offset += c
          # Past the gather window of the previous round: a 1-request round after a 16-request
          # one would otherwise wait it out for 15 requests that never come (`engine._gather`).
          time.sleep(engine.gather_s + 0.01)
          timed.reset()
          t0 = time.perf_counter()
          tokens = run_round(engine, chats, args.max_tokens)
          wall = time.perf_counter() - t0
          while timed.inside.is_set():  # the last chunk hands out its tokens before it returns
            time.sleep(0.001)
          row = dict(clients=c, wall=wall, tok_s=tokens / wall, admit=timed.admit_s,
                     admits=timed.admits, step=timed.step_s, steps=timed.steps,
                     other=wall - timed.admit_s - timed.step_s, load=os.getloadavg()[0])
          if (name, c) not in best or wall < best[name, c]["wall"]:
            best[name, c] = row
  finally:
    for engine in engines.values():
      engine.close()
  for name in engines:
    print(f"{name}:")
    print(f"{'clients':>7} {'wall s':>7} {'tok/s':>7} {'admit s':>8} {'(calls)':>7} "
          f"{'decode s':>8} {'(chunks)':>8} {'other s':>7} {'load':>5}")
    for c in args.clients:
      r = best[name, c]
      print(f"{c:>7} {r['wall']:>7.3f} {r['tok_s']:>7.1f} {r['admit']:>8.3f} {r['admits']:>7} "
            f"{r['step']:>8.3f} {r['steps']:>8} {r['other']:>7.3f} {r['load']:>5.2f}")
    if len(args.clients) > 1:
      lo, hi = best[name, args.clients[0]], best[name, args.clients[-1]]
      print(f"{hi['clients']} vs {lo['clients']}: {hi['tok_s'] / lo['tok_s']:.2f}x tokens/s")

  # Detokenising one answer the way the server does (TextStream.add per engine hand-out).
  ids = list(range(10, 10 + args.max_tokens))
  t0 = time.perf_counter()
  for _ in range(20):
    stream = TextStream(pred.tokenizer, [])
    for k in range(0, len(ids), args.chunk):
      stream.add(ids[k:k + args.chunk])
    stream.finish()
  print(f"detokenising one {args.max_tokens}-token answer: "
        f"{(time.perf_counter() - t0) / 20 * 1e3:.2f} ms")


if __name__ == "__main__":
  main()
