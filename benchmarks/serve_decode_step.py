"""Where a serving decode step's time goes: the engine's jitted chunk for 1, 4 and 16 rows.

  python benchmarks/serve_decode_step.py [--config small] [--rows 1 4 16] [--rings 256 16]
                                         [--context 128] [--steps 8] [--rounds 5] [--threads 1]
                                         [--dtype bfloat16] [--quantize int8] [--lora 64 [--merge-lora]]
                                         [--json out.json]

Random weights of `--config`; the chunk is `serve.engine.decode_chunk_fn` (what `serve` runs), on a
ring of R KV columns per row holding a `--context`-token prompt (serve_load.py's requests: a 224 px
picture + a question = 128-token bucket + 64 new tokens -> R = 256). Per ring and row count: ms per
step (wall clock and this process's CPU time), tokens/s and the ratio to 1 row. The row counts are
timed alternately (1, 4, 16, 1, 4, 16, ...) and each keeps its best round, so all see the same load
of this shared machine. A ring of 16 columns makes attention negligible: what is left is the
weights' cost, i.e. the ratio an ideal batched step reaches here.

The compiled HLO of each chunk is searched for ops that move a whole layer's KV cache (a copy or
transpose of at least one layer's keys for all rows, or a dynamic-update-slice / scatter writing
that much): the signature of a cache copied per step instead of written one column in place.
`--threads 1` pins the process to one core with single-threaded XLA (0: XLA's default pool).
`--dtype` / `--quantize` serve the model as `serve --dtype` / `--quantize` do (the ring in that
dtype; the "weight products alone" section stays float32 matrices). `--lora R` adds LoRA factors
of rank R on the released fine-tuning targets (c_attn, attn.c_proj, w1, w2), as a LoRA run serves
by default; `--merge-lora` folds them in, as `serve --merge-lora` does.
`--profile` adds, per ring and row count, a jax.profiler breakdown of one chunk's XLA ops
(categories and top ops as in profile_step.py). `--xla-default` also times the same chunk (and the
weight products) compiled without the engine's XLA options (`decode_compiler_options`), alternating
with the engine's: the A/B of those options under the same load.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import re
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import profile_step  # noqa: E402  (the trace reading and op categories)

_OP = re.compile(r"^\s*(?:ROOT )?%(\S+) = (\w+)\[([\d,]*)\]\S* ([\w-]+)\((.*)")


def cache_movers(hlo: str, layer_elems: int) -> dict[str, int]:
  """Counts HLO ops that copy/transpose >= `layer_elems` elements or write that many with a
  dynamic-update-slice / scatter (in-place column writes have a small update operand)."""
  shapes, found = {}, {}
  lines = [m for m in map(_OP.match, hlo.splitlines()) if m]
  for m in lines:
    dims = [int(d) for d in m.group(3).split(",") if d]
    shapes[m.group(1)] = _prod(dims)
  for m in lines:
    op, size = m.group(4), shapes[m.group(1)]
    if op in ("copy", "transpose") and size >= layer_elems:
      found[op] = found.get(op, 0) + 1
    elif op in ("dynamic-update-slice", "scatter"):
      operands = re.findall(r"%([\w.-]+)", m.group(5))
      update = operands[2 if op == "scatter" else 1] if len(operands) > 1 else None
      if update in shapes and shapes[update] >= layer_elems:
        found[op] = found.get(op, 0) + 1
  return found


def op_sources(hlo: str) -> dict[str, str]:
  """HLO instruction name -> the JAX primitive it came from (its metadata op_name's last part)."""
  out = {}
  for m in re.finditer(r"%(\S+) = [^\n]*?metadata=\{op_name=\"([^\"]+)\"", hlo):
    out[m.group(1)] = m.group(2).rsplit("/", 1)[-1]
  return out


def matmul_floor(state, rows, rounds: int, variants: dict[str, dict]) -> list[dict]:
  """The LLM's weight products alone, x [B, K] @ W for every matrix of a decode step (no attention,
  norms or sampling), in one jit per set of XLA options in `variants` (timed alternately): the floor
  of a step's cost with XLA on this CPU, and so about the best batch ratio a decode step can reach
  here. Also the same products in numpy (its BLAS, one call per matrix) for reference."""
  import jax
  import numpy as np

  mats = []
  for path, x in jax.tree_util.tree_leaves_with_path(state):
    key = jax.tree_util.keystr(path)
    if "llm" in key and ("kernel" in key or "lm_head" in key):  # attn.out is [H, Dh, D]: 2 in-dims
      x = np.asarray(x)
      mats.append(x.reshape(-1, x.shape[-1]) if "'out'" in key else x.reshape(x.shape[0], -1))
  ws = [jax.numpy.asarray(m) for m in mats]
  flops = sum(2 * m.size for m in mats)
  products = lambda xs, ws: sum((x @ w).sum() for x, w in zip(xs, ws))
  fns = {name: (lambda xs, f=jax.jit(products, compiler_options=opts): f(xs, ws))
         for name, opts in variants.items()}
  fns["numpy"] = lambda xs: sum((x @ w).sum() for x, w in zip(xs, mats))
  xs_of = {b: [np.ones((b, m.shape[0]), np.float32) for m in mats] for b in rows}
  jxs_of = {b: [jax.numpy.asarray(x) for x in xs] for b, xs in xs_of.items()}
  best = {(n, b): float("inf") for n in fns for b in rows}
  for rnd in range(rounds + 1):  # round 0 compiles and warms
    for name, f in fns.items():
      for b in rows:
        xs = xs_of[b] if name == "numpy" else jxs_of[b]
        t = time.process_time()
        jax.block_until_ready(f(xs))
        if rnd:
          best[name, b] = min(best[name, b], time.process_time() - t)
  out = []
  for name in fns:
    print(f"weight products alone, {name} ({len(mats)} matrices, {flops / 2e6:.0f}M parameters): "
          f"rows | ms cpu | tok/s | x of 1 row | GFLOP/s", flush=True)
    base = None
    for b in rows:
      t = best[name, b]
      base = base or 1 / t
      out.append({"variant": name, "rows": b, "ms_cpu": round(t * 1e3, 2),
                  "x_of_1_row": round(b / t / base, 2), "gflops": round(b * flops / t / 1e9, 1)})
      print(f"  {b:>3} | {t * 1e3:6.2f} | {b / t:7.0f} | {b / t / base:5.2f} | "
            f"{b * flops / t / 1e9:5.1f}", flush=True)
  return out


def profile_ops(run, repeats: int = 2):
  """Seconds per call of `run` and per XLA op (jax.profiler trace, as profile_step.py reads it)."""
  import tempfile

  import jax

  run()
  with tempfile.TemporaryDirectory() as d:
    t = time.perf_counter()
    with jax.profiler.trace(d):
      for _ in range(repeats):
        run()
    wall = (time.perf_counter() - t) / repeats
    data = jax.profiler.ProfileData.from_file(str(next(pathlib.Path(d).rglob("*.xplane.pb"))))
  ops = collections.Counter()
  for plane in data.planes:
    for line in plane.lines:
      if line.name != "python":
        for ev in line.events:
          if not ev.name.startswith(profile_step._XLA_CONTAINERS):
            ops[ev.name] += ev.duration_ns / 1e9 / repeats
  return wall, ops


def _prod(xs):
  out = 1
  for x in xs:
    out *= x
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="small")
  p.add_argument("--rows", type=int, nargs="+", default=[1, 4, 16])
  p.add_argument("--rings", type=int, nargs="+", default=[256, 16])
  p.add_argument("--context", type=int, default=128, help="prompt tokens already in the ring")
  p.add_argument("--steps", type=int, default=8, help="decode steps per chunk (serve --chunk)")
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--threads", type=int, default=1, help="1: one core, single-threaded XLA")
  p.add_argument("--profile", action="store_true", help="XLA op breakdown of one chunk per shape")
  p.add_argument("--xla-default", action="store_true",
                 help="also time the chunk compiled without the engine's XLA options (A/B)")
  p.add_argument("--dtype", default=None, help="compute dtype (as serve --dtype; default float32)")
  p.add_argument("--quantize", default=None, choices=("int8", "int4", "nf4"),
                 help="weight-only quantisation (as serve --quantize)")
  p.add_argument("--lora", type=int, default=0, metavar="RANK",
                 help="LoRA factors of this rank on the released targets (0: none)")
  p.add_argument("--merge-lora", action="store_true", help="fold the --lora factors in")
  p.add_argument("--top", type=int, default=8)
  p.add_argument("--json", default=None)
  args = p.parse_args()
  if args.threads == 1:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy's reference products: one core too
    import harness

    harness.pin_to_one_core()

  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx

  from qwenvl_jax.config import load_model_config
  from qwenvl_jax.infer.generate import Generator, decode_compiler_options
  from qwenvl_jax.infer.api import set_compute_dtype
  from qwenvl_jax.model.layers import dtype_of
  from qwenvl_jax.model.llm import init_cache, per_layer_cache
  from qwenvl_jax.model.quant import quantize_model
  from qwenvl_jax.model.qwenvl import QwenVL
  from qwenvl_jax.serve.engine import decode_chunk_fn

  cfg = load_model_config(args.config)
  llm = cfg.llm
  model = QwenVL(cfg, rngs=nnx.Rngs(0))
  if args.dtype:
    model = set_compute_dtype(model, args.dtype)
  if args.quantize:
    quantize_model(model, args.quantize)
  if args.lora:
    from qwenvl_jax.ckpt import lora_run, peft
    from qwenvl_jax.model.lora import merge_lora

    lora_run.transform(model, lora_run.LoRAConfig(enabled=True, rank=args.lora, alpha=16.0,
                                                  dropout=0.0, targets=peft.RELEASED_TARGETS))
    if args.merge_lora:
      merge_lora(model)
  dtype = dtype_of(model.cfg.dtype)
  gen = Generator(model, pad_id=0, stop_ids=(), valid_vocab=llm.vocab_size)
  llm_params = sum(x.size for path, x in jax.tree_util.tree_leaves_with_path(gen.state)
                   if "llm" in jax.tree_util.keystr(path) and x.ndim >= 2)
  variants = {"engine": decode_compiler_options()}
  chunks = {"engine": decode_chunk_fn(gen, args.steps)}
  if args.xla_default:
    variants["xla default"] = {}
    chunks["xla default"] = decode_chunk_fn(gen, args.steps, compiler_options={})
  slots = max(args.rows)
  print(f"# {args.config}: LLM {llm_params / 1e6:.1f}M matrix parameters "
        f"({llm_params * 4 / 2**20:.0f} MiB f32 read per step at any row count; "
        f"{2 * llm_params / 1e6:.0f} MFLOP per row-token); threads {args.threads}; "
        f"dtype {np.dtype(dtype).name}, quantize {args.quantize}, LoRA rank {args.lora}"
        f"{' merged' if args.merge_lora else ''}; "
        f"engine XLA options {variants['engine']}; load {os.getloadavg()[0]:.1f}", flush=True)

  def ring_of(n_cols):
    ring = init_cache(llm, slots, n_cols, dtype)
    ring = per_layer_cache(ring) if gen.per_layer else ring  # as the engine keeps it
    ctx = min(args.context, n_cols - args.steps)
    cols = jnp.arange(n_cols, dtype=jnp.int32)
    return ring._replace(segment_ids=jnp.broadcast_to(cols < ctx, (slots, n_cols)).astype(jnp.int32),
                         positions=jnp.broadcast_to(cols, (slots, n_cols)),
                         index=jnp.int32(ctx)), ctx

  def inputs(b, ctx):
    return (np.ones(b, np.int32), np.full(b, ctx, np.int32), np.ones(b, np.float32),
            np.zeros(b, np.uint32), np.zeros(b, np.int32), np.zeros(b, np.float32),
            np.zeros(b, np.int32), np.ones(b, np.float32))

  rows_out = []
  for n_cols in args.rings:
    ring, ctx = ring_of(n_cols)
    movers, sources, tokens = {}, {}, {}
    for name, chunk in chunks.items():
      for b in args.rows:
        hlo = chunk.lower(gen.state, ring, *inputs(b, ctx)).compile().as_text()
        movers[name, b] = cache_movers(hlo, b * n_cols * llm.heads * llm.head_dim)
        sources[name, b] = op_sources(hlo)
        out, _ = chunk(gen.state, ring, *inputs(b, ctx))  # compile + warm, from a fresh ring
        tokens[name, b] = np.asarray(out)
        ring, _ = ring_of(n_cols)
    best = {key: (float("inf"), float("inf")) for key in movers}
    for _ in range(args.rounds):
      for name, chunk in chunks.items():
        for b in args.rows:
          ring, _ = ring_of(n_cols)  # same start state each round (the chunk moves the write index)
          jax.block_until_ready(ring)
          w0, c0 = time.perf_counter(), time.process_time()
          out, ring = chunk(gen.state, ring, *inputs(b, ctx))
          jax.block_until_ready((out, ring))
          wall, cpu = time.perf_counter() - w0, time.process_time() - c0
          best[name, b] = (min(best[name, b][0], wall), min(best[name, b][1], cpu))
    for name in chunks:
      same = all((tokens[name, b] == tokens["engine", b]).all() for b in args.rows)
      print(f"ring {n_cols} columns ({ctx} context), {name}{'' if same else ' (TOKENS DIFFER)'}: "
            f"rows | ms/step wall | ms/step cpu | tok/s (cpu) | x of 1 row | cache-sized "
            f"copy/transpose/DUS ops in the chunk", flush=True)
      base = None
      for b in args.rows:
        wall, cpu = (t / args.steps for t in best[name, b])
        tps = b / cpu
        base = base or tps
        moved = ", ".join(f"{k} {v}" for k, v in sorted(movers[name, b].items())) or "none"
        print(f"  {b:>3} | {wall * 1e3:8.1f} | {cpu * 1e3:8.1f} | {tps:7.1f} | {tps / base:5.2f} | "
              f"{moved}", flush=True)
        rows_out.append({"variant": name, "ring": n_cols, "rows": b,
                         "ms_step_wall": round(wall * 1e3, 2), "ms_step_cpu": round(cpu * 1e3, 2),
                         "tokens_per_s_cpu": round(tps, 1), "x_of_1_row": round(tps / base, 2),
                         "cache_movers": movers[name, b], "same_tokens": bool(same)})
    if args.profile:
      for name, chunk in chunks.items():
        for b in args.rows:
          def one(b=b, chunk=chunk):
            fresh, _ = ring_of(n_cols)
            jax.block_until_ready(chunk(gen.state, fresh, *inputs(b, ctx)))
          wall, ops = profile_ops(one)
          ops = collections.Counter({f"{k} ({sources[name, b].get(k, '?')})": v
                                     for k, v in ops.items()})
          profile_step.summarize(f"ring {n_cols}, {b} rows, {name}, one {args.steps}-step chunk",
                                 wall, ops, profile_step.xla_category, args.top)
  print(f"# load {os.getloadavg()[0]:.1f}", flush=True)
  matmuls = matmul_floor(gen.state, args.rows, args.rounds, variants)
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps({"config": args.config, "threads": args.threads,
                                                   "rows": rows_out, "matmuls": matmuls}, indent=2))


if __name__ == "__main__":
  main()
