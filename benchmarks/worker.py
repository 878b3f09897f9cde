"""One side (JAX or PyTorch) of one benchmark, in its own process, driven line by line over stdin.

  python benchmarks/worker.py --side jax|torch --task train|generate --config SPEC --hf DIR
                              --orbax DIR [--rows R --seq-len T | --prompt-len P --new-tokens N]
                              [--threads 1] [--set loss_chunk=0]

Prints {"ready": true, "setup_s": ..., "compile_s": ...} once built (JAX: compiled), then for every "run" line one JSON
line with wall and CPU seconds (`time.process_time`: all threads of this process, so a busy-waiting
thread pool counts against its own side) and the result; "quit" ends it. Why a process per side:
in one process the idle side's thread pools (XLA's spin-waiting workers) would steal CPU from the
other side's timed run, and memory is returned to the OS when a side is done.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import sys
import time


def build(args):
  """-> (info dict, run() -> dict)."""
  import harness
  from qwenvl_jax.config import load_model_config, parse_override_value

  cfg = load_model_config(args.config)
  ck = harness.Checkpoints(cfg, pathlib.Path(args.hf), pathlib.Path(args.orbax))
  t0 = time.perf_counter()
  if args.task == "train":
    batch = harness.train_batch(cfg, args.rows, args.seq_len)
    if args.side == "jax":
      overrides, optim = {}, {}
      for item in args.set:  # fields that change no tensor, e.g. loss_chunk=0, optim.update_guard=two_pass
        key, _, raw = item.partition("=")
        value = parse_override_value(raw)  # as `--set` on the CLI: False, 0, two_pass
        if key.startswith("optim."):
          optim[key.removeprefix("optim.")] = value
        else:
          overrides[key] = value
      optim_cfg = dataclasses.replace(harness.BENCH_OPTIM, **optim)
      trainer = harness.JaxTrainer(harness.load_jax(ck), optim_cfg, **overrides)
      trainer.compile(batch)
    else:
      trainer = harness.TorchTrainer(harness.load_torch(ck))
    info = dict(setup_s=time.perf_counter() - t0, compile_s=getattr(trainer, "compile_s", None))
    return info, lambda: dict(loss=trainer.step(batch))

  from generate_speed import _prompts, jax_runner, torch_runner

  ids, images = _prompts(cfg, 1, args.prompt_len)
  if args.side == "jax":
    from qwenvl_jax.infer.generate import Generator

    gen = Generator(harness.load_jax(ck), pad_id=0, stop_ids=(), valid_vocab=cfg.llm.vocab_size)
    t1 = time.perf_counter()
    runner = jax_runner(gen, ids, images, args.new_tokens)  # compiles (one warm-up request)
    compile_s = time.perf_counter() - t1
  else:
    runner = torch_runner(harness.load_torch(ck), ids, images, args.new_tokens)
    compile_s = None

  def run():
    prefill_s, tok_s, tokens = runner()
    return dict(prefill_s=prefill_s, decode_tok_s=tok_s, tokens=tokens)

  return dict(setup_s=time.perf_counter() - t0, compile_s=compile_s), run


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--side", choices=("jax", "torch"), required=True)
  p.add_argument("--task", choices=("train", "generate"), required=True)
  p.add_argument("--config", required=True)
  p.add_argument("--hf", required=True)
  p.add_argument("--orbax", required=True)
  p.add_argument("--rows", type=int, default=1)
  p.add_argument("--seq-len", type=int, default=64)
  p.add_argument("--prompt-len", type=int, default=64)
  p.add_argument("--new-tokens", type=int, default=16)
  p.add_argument("--threads", type=int, default=1, help="1: one pinned core; 0: library defaults")
  p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                 help="JAX side: a ModelConfig field that changes no tensor (loss_chunk, attention)")
  args = p.parse_args(argv)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
  if args.threads == 1:
    import harness

    harness.pin_to_one_core()
  import torch

  if args.threads:
    torch.set_num_threads(args.threads)
  info, run = build(args)
  out = sys.stdout
  print(json.dumps(dict(ready=True, **info)), file=out, flush=True)
  for line in sys.stdin:
    if line.strip() != "run":
      break
    c, w = time.process_time(), time.perf_counter()
    res = run()
    res.update(wall_s=time.perf_counter() - w, cpu_s=time.process_time() - c)
    print(json.dumps(res), file=out, flush=True)


if __name__ == "__main__":
  main()
