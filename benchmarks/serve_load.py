"""Load benchmark for `qwenvl-jax serve`: requests/s, tokens/s and p50/p95 latency at 1, 4, 16 clients.

  python benchmarks/serve_load.py [--ckpt DIR] [--clients 1 4 16] [--requests 16] [--max-tokens 64]
                                  [--max-seconds 300] [--max-batch 16] [--json out.json]
                                  [--compare '--gather-ms 0']

Starts the server as its own process on a free 127.0.0.1 port (the default model: random weights of
configs/small.py with a SentencePiece vocabulary trained here, cached under --workdir) and drives it
with N client threads, each sending chat requests (one 224 px picture + a question, or the question
alone with --no-picture; greedy, max_tokens fixed) back to back. The server compiles its text
shapes for 64- and 128-token prompt buckets before it listens (`serve --warmup-prompt-tokens`;
`--no-warmup` to skip), and each level first runs one untimed round, then max(`--requests`, 2 x
clients) timed requests or until `--max-seconds`, whichever comes first. Tokens are the
`usage.completion_tokens` the server reports; from /health's engine counters over the timed round:
`compiles` (shapes compiled: each stalls every request for seconds), `rows/step` (busy rows a
decode step computed on average), `reqs/prefill` (requests sharing one prefill call) and
`cached/req` (prompt tokens a request reused from the prefix cache instead of prefilling them).
The 1-minute load average is printed with each row: the machine is shared, so read the numbers
with it.
`--compare FLAGS` is an A/B: a second server with those extra flags runs every level right after
the first one, and the B / A tokens/s per level are printed.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import io
import itertools
import json
import os
import pathlib
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-c", "import sys; from qwenvl_jax.cli import main; sys.exit(main())"]
WORDS = ("red blue green square circle triangle small large left right top bottom picture object "
         "where which what color shape count near far above below").split()


def small_checkpoint(workdir: pathlib.Path) -> pathlib.Path:
  """Random configs/small.py weights + a 4096-id SentencePiece tokenizer (built once)."""
  ckpt = workdir / "small-orbax"
  if ckpt.exists():
    return ckpt
  from qwenvl_jax.ckpt import convert
  from qwenvl_jax.testing import random_checkpoint
  from qwenvl_jax.config import load_model_config

  workdir.mkdir(parents=True, exist_ok=True)
  corpus = workdir / "corpus.txt"
  rng = random.Random(0)
  corpus.write_text("\n".join(" ".join(rng.choice(WORDS) + str(rng.randrange(500))
                                       for _ in range(12)) for _ in range(20000)))
  subprocess.run([*CLI, "tokenize", "--train-sp", str(corpus),
                  "--vocab-size", "1500", "--model-vocab", "4096", "--out",
                  str(workdir / "tok" / "tokenizer")], check=True, env=_env())
  cfg = load_model_config("small")
  hf = random_checkpoint.write_random_hf_checkpoint(workdir / "small-hf", cfg,
                                            tokenizer_file=workdir / "tok" / "tokenizer.model",
                                            overwrite=True)
  return convert.convert_hf_to_orbax(hf, ckpt)


def _env():
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  env.pop("XLA_FLAGS", None)  # one CPU device: the server's real setting here
  return env


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def picture_url(seed: int) -> str:
  from PIL import Image

  arr = np.random.default_rng(seed).integers(0, 255, (224, 224, 3), np.uint8)
  buf = io.BytesIO()
  Image.fromarray(arr).save(buf, "PNG")
  return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def post(url: str, body: dict, timeout: float) -> dict:
  req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
  with urllib.request.urlopen(req, timeout=timeout) as r:
    return json.load(r)


def health(base: str) -> dict:
  with urllib.request.urlopen(base + "/health", timeout=30) as r:
    return json.load(r)


def engine_mix(before: dict, after: dict, chunk: int) -> dict:
  """What the engine did during a level, from /health's counters: `rows_per_step` = busy rows per
  decode step on average (16 = every slot busy), `reqs_per_prefill` = requests that shared one
  prefill call, `cached_per_req` = prompt tokens a request took from the prefix cache, and
  `compiles` = shapes compiled mid-level (each stalls every slot for seconds)."""
  d = {k: after["engine"][k] - before["engine"][k] for k in after["engine"]}
  return {"compiles": after["compiled"] - before["compiled"],
          "rows_per_step": round(d["busy_row_steps"] / (d["steps"] * chunk), 2) if d["steps"] else 0,
          "reqs_per_prefill": round(d["admitted"] / d["prefills"], 2) if d["prefills"] else 0,
          "cached_per_req": round(d["prefix_tokens"] / d["admitted"], 1) if d["admitted"] else 0}


QUESTIONS = itertools.count()  # every request of a run asks its own question (no repeats to cache)


def run_level(base: str, model: str, clients: int, n_requests: int, max_tokens: int,
              deadline_s: float, pictures: list[str]) -> dict:
  """`clients` threads send requests back to back until n_requests are done or time is up."""
  lock = threading.Lock()
  latencies, tokens = [], []
  counter = iter(range(n_requests))
  t_end = time.perf_counter() + deadline_s

  def client(k: int):
    while time.perf_counter() < t_end:
      with lock:
        if next(counter, None) is None:
          return
        i = next(QUESTIONS)
      rng = random.Random(i)
      question = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) + "?"
      parts = [{"type": "image_url", "image_url": {"url": pictures[i % len(pictures)]}}
               ] if pictures else []
      body = {"model": model, "temperature": 0, "max_tokens": max_tokens, "messages": [
          {"role": "user", "content": parts + [{"type": "text", "text": question}]}]}
      t0 = time.perf_counter()
      out = post(base + "/v1/chat/completions", body, timeout=deadline_s + 600)
      with lock:
        latencies.append(time.perf_counter() - t0)
        tokens.append(out["usage"]["completion_tokens"])

  t0 = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(clients) as pool:
    list(pool.map(client, range(clients)))
  wall = time.perf_counter() - t0
  lat = np.asarray(latencies)
  return {"clients": clients, "requests": len(lat), "seconds": round(wall, 2),
          "requests_per_s": round(len(lat) / wall, 3), "tokens_per_s": round(sum(tokens) / wall, 1),
          "mean_tokens": round(float(np.mean(tokens)), 1) if tokens else 0,
          "p50_s": round(float(np.percentile(lat, 50)), 3) if len(lat) else None,
          "p95_s": round(float(np.percentile(lat, 95)), 3) if len(lat) else None,
          "load_avg_1m": round(os.getloadavg()[0], 2)}


def scaling(rows: list[dict]) -> str:
  """Aggregate tokens/s of the most clients vs the fewest: the ratio of their mean tokens/s over the
  rounds, and each round's ratio to the round of the fewest clients just before it (levels are
  run in repeated sequences like 1 4 16 1 4 16, so a pair saw the same machine load)."""
  lo, hi = min(r["clients"] for r in rows), max(r["clients"] for r in rows)
  mean = lambda c: float(np.mean([r["tokens_per_s"] for r in rows if r["clients"] == c]))
  if lo == hi or not mean(lo):
    return ""
  pairs, last_lo = [], None
  for r in rows:
    if r["clients"] == lo:
      last_lo = r["tokens_per_s"]
    elif r["clients"] == hi and last_lo:
      pairs.append(r["tokens_per_s"] / last_lo)
  each = " ".join(f"{x:.2f}x" for x in pairs)
  return (f"aggregate tokens/s at {hi} clients = {mean(hi) / mean(lo):.2f}x that of {lo} client(s) "
          f"(means over rounds; per round: {each})")


def start_server(ckpt: pathlib.Path, args, flags: list[str]) -> tuple[subprocess.Popen, str]:
  """A `qwenvl-jax serve` process on a free port, once it answers /health -> (process, base URL)."""
  port = free_port()
  base = f"http://127.0.0.1:{port}"
  proc = subprocess.Popen(
      [*CLI, "serve", "--ckpt", str(ckpt), "--port", str(port),
       "--host", "127.0.0.1", "--model-name", "bench", "--max-batch", str(args.max_batch),
       "--chunk", str(args.chunk), "--log-level", "warning",
       *([] if args.no_warmup else ["--warmup-prompt-tokens", "64", "128",
                                    "--warmup-max-tokens", str(args.max_tokens)]),
       *flags], env=_env())
  end = time.time() + 1200  # the warm-up compiles a few dozen shapes on a loaded CPU
  while True:
    try:
      urllib.request.urlopen(base + "/health", timeout=5).close()
      return proc, base
    except OSError:
      if proc.poll() is not None or time.time() > end:
        proc.kill()
        raise SystemExit("server did not start")
      time.sleep(1)


def stop_server(proc: subprocess.Popen):
  proc.send_signal(signal.SIGTERM)
  try:
    proc.wait(120)
  except subprocess.TimeoutExpired:
    proc.kill()


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--ckpt", default=None, help="checkpoint to serve (default: random small)")
  ap.add_argument("--workdir", default="/tmp/qwenvl_serve_bench")
  ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
  ap.add_argument("--requests", type=int, default=16,
                  help="timed requests per level (at least 2 per client)")
  ap.add_argument("--max-tokens", type=int, default=64)
  ap.add_argument("--no-picture", action="store_true",
                  help="text-only requests (decode-bound: what batching speeds up)")
  ap.add_argument("--max-seconds", type=float, default=300, help="time bound per level")
  ap.add_argument("--max-batch", type=int, default=16)
  ap.add_argument("--chunk", type=int, default=8)
  ap.add_argument("--no-warmup", action="store_true",
                  help="do not have the server compile its shapes before listening")
  ap.add_argument("--compare", default=None, metavar="'FLAGS'",
                  help="A/B: also start a server with these extra flags (e.g. '--gather-ms 0'); "
                       "each level runs on both, one after the other (the idle one waits)")
  ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                  help="more `qwenvl-jax serve` flags for every server (e.g. --quantize int8)")
  ap.add_argument("--json", default=None)
  args = ap.parse_args(argv)

  ckpt = pathlib.Path(args.ckpt) if args.ckpt else small_checkpoint(pathlib.Path(args.workdir))
  configs = {"": list(args.extra)}
  if args.compare is not None:
    configs = {"A": list(args.extra), "B": list(args.extra) + args.compare.split()}
  servers, rows = {}, []
  try:
    for name, flags in configs.items():
      servers[name] = start_server(ckpt, args, flags)
    pictures = [] if args.no_picture else [picture_url(s) for s in range(8)]
    label = f"{'server':>6} " if args.compare is not None else ""
    print(f"{label}{'clients':>7} {'reqs':>5} {'req/s':>7} {'tok/s':>7} {'p50 s':>7} {'p95 s':>7} "
          f"{'tok/req':>7} {'compiles':>8} {'rows/step':>9} {'reqs/prefill':>12} {'cached/req':>10} "
          f"{'load':>5}",
          flush=True)
    for c in args.clients:
      for name, (_, base) in servers.items():
        run_level(base, "bench", c, 2 * c, args.max_tokens, args.max_seconds, pictures)  # compile
        before = health(base)
        row = run_level(base, "bench", c, max(args.requests, 2 * c), args.max_tokens,
                        args.max_seconds, pictures)
        row.update(engine_mix(before, health(base), args.chunk), server=name)
        rows.append(row)
        label = f"{name:>6} " if args.compare is not None else ""
        print(f"{label}{row['clients']:>7} {row['requests']:>5} {row['requests_per_s']:>7} "
              f"{row['tokens_per_s']:>7} {row['p50_s']:>7} {row['p95_s']:>7} "
              f"{row['mean_tokens']:>7} {row['compiles']:>8} {row['rows_per_step']:>9} "
              f"{row['reqs_per_prefill']:>12} {row['cached_per_req']:>10} {row['load_avg_1m']:>5}",
              flush=True)
    if args.compare is not None:  # B vs A at each level (each B round ran right after its A)
      for c in dict.fromkeys(args.clients):
        tok = {n: [r["tokens_per_s"] for r in rows if r["server"] == n and r["clients"] == c]
               for n in servers}
        print(f"{c:>3} clients: B / A tokens/s = {np.mean(tok['B']) / np.mean(tok['A']):.3f} "
              f"(rounds: {' '.join(f'{b / a:.3f}' for a, b in zip(tok['A'], tok['B']))})")
    for name in servers:
      summary = scaling([r for r in rows if r["server"] == name])
      if summary:
        print(f"{'server ' + name + ' (' + ' '.join(configs[name]) + '): ' if name else ''}{summary}")
  finally:
    for proc, _ in servers.values():
      stop_server(proc)
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(
        {"ckpt": str(ckpt), "servers": configs, "rows": rows}, indent=2))


if __name__ == "__main__":
  main()
