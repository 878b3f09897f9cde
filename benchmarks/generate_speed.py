"""Generation speed, JAX vs the PyTorch reference on the same weights, in the same run.

  python benchmarks/generate_speed.py [--configs tiny small] [--batch 1 8] [--prompt-len 128]
                                      [--new-tokens 64] [--repeats 5] [--json out.json]

For each config: random weights in the released HF layout -> our Orbax checkpoint (loaded with
`load_checkpoint`) and `TorchQwenVL.from_state_dict` (the independent PyTorch forward, KV cache).
Each row holds one image span plus random text, all rows the same length (the reference uses raw
positions, so no padding on either side). Greedy, no stop token, fp32.

  TTFT       prompt forward incl. the ViT, to the first token's logits (JAX: `Generator.prefill`;
             PyTorch: `greedy` up to its first lm_head output, stamped by a forward hook)
  decode     new tokens per second over the whole batch after that point (JAX: the jitted
             while-loop; PyTorch: the rest of `greedy`, KV cache)

JAX compile time is excluded (one warm-up run). The two sides run alternately, `--repeats` times,
and each keeps its best figure (robust on a shared machine). The greedy tokens of both sides are
compared and the result printed (they should be equal).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import tempfile
import time

import jax
import numpy as np
import torch

from qwenvl_jax.ckpt import convert
from qwenvl_jax.testing import random_checkpoint
from qwenvl_jax.ckpt.orbax_io import load_checkpoint
from qwenvl_jax.testing.torch_reference import TorchQwenVL
from qwenvl_jax.config import load_model_config
from qwenvl_jax.infer.generate import Generator, SamplingConfig, Timing


def _prompts(cfg, batch: int, prompt_len: int, seed: int = 0):
  """[batch, prompt_len] ids with one image span after 3 text tokens, and [batch, 1, S, S, 3] images."""
  rng = np.random.default_rng(seed)
  q = cfg.tokens_per_image
  text_vocab = cfg.image_start_id - 300  # stay clear of the specials at the top
  rows = []
  for _ in range(batch):
    text = rng.integers(0, text_vocab, prompt_len - q - 2).tolist()
    rows.append(text[:3] + cfg.image_span + text[3:])
  size = cfg.vision.image_size
  images = rng.normal(size=(batch, 1, size, size, 3)).astype(np.float32)
  return np.asarray(rows, np.int32), images


def jax_runner(gen: Generator, ids, images, new_tokens: int):
  """-> run() returning (ttft_s, decode tok/s, tokens); compiles on creation."""
  prompts = [r.tolist() for r in ids]
  imgs = [[im[0]] for im in images]
  sampling = SamplingConfig(temperature=0, max_new_tokens=new_tokens)
  gen.generate_ids(prompts, imgs, sampling, stop_ids=())  # compile

  def run():
    t = Timing()
    out = gen.generate_ids(prompts, imgs, sampling, stop_ids=(), timing=t)
    return t.prefill_s, len(prompts) * t.new_tokens / t.decode_s, out

  return run


def torch_runner(ref: TorchQwenVL, ids, images, new_tokens: int):
  """Times `greedy` itself: a forward hook on lm_head stamps the end of the prompt pass."""
  ids_t, images_t = torch.from_numpy(ids).long(), torch.from_numpy(images)
  ref.greedy(ids_t, images_t, max_new_tokens=2)  # warm-up
  stamps = []
  ref.lm_head.register_forward_hook(lambda *_: stamps.append(time.perf_counter()))

  def run():
    stamps.clear()
    t0 = time.perf_counter()
    full = ref.greedy(ids_t, images_t, max_new_tokens=new_tokens)
    t1 = time.perf_counter()
    steps = full.shape[1] - ids.shape[1]
    return stamps[0] - t0, ids.shape[0] * steps / (t1 - stamps[0]), full[:, ids.shape[1]:].tolist()

  return run


def best_of(runs, repeats: int):
  """Interleaves the sides run by run (both see the same machine load) and keeps each side's best
  TTFT and best decode rate: on a shared machine the best run is the least disturbed one."""
  results = [[] for _ in runs]
  for _ in range(repeats):
    for r, run in zip(results, runs):
      r.append(run())
  return [(min(x[0] for x in r), max(x[1] for x in r), r[-1][2]) for r in results]


def build(config: str, workdir: pathlib.Path):
  cfg = load_model_config(config)
  hf = random_checkpoint.write_random_hf_checkpoint(workdir / f"{config}_hf", cfg)
  orbax = convert.convert_hf_to_orbax(hf, workdir / f"{config}_orbax")
  model, cfg, _ = load_checkpoint(orbax)
  ref = TorchQwenVL.from_hf_dir(hf, cfg)
  return cfg, model, ref


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--configs", nargs="+", default=["tiny", "small"])
  p.add_argument("--batch", nargs="+", type=int, default=[1, 8])
  p.add_argument("--prompt-len", type=int, default=128)
  p.add_argument("--new-tokens", type=int, default=64)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--json", help="also write the rows as JSON here")
  args = p.parse_args()

  print(f"# {platform.node()} | jax {jax.__version__} on {jax.devices()[0].platform} "
        f"({jax.device_count()} device(s)) | torch {torch.__version__}, {torch.get_num_threads()} "
        f"threads | {os.cpu_count()} cores | fp32, greedy, prompt {args.prompt_len} tokens "
        f"(1 image), {args.new_tokens} new tokens, best of {args.repeats} interleaved runs")
  head = (f"{'config':<7}{'batch':>6} | {'TTFT ms jax':>12}{'torch':>9}{'ratio':>7} | "
          f"{'decode tok/s jax':>17}{'torch':>9}{'ratio':>7} | tokens equal")
  print(head)
  print("-" * len(head))
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for config in args.configs:
      cfg, model, ref = build(config, pathlib.Path(tmp))
      # valid_vocab = vocab_size: with random weights any id may come out; no stops.
      gen = Generator(model, pad_id=0, stop_ids=(), valid_vocab=cfg.llm.vocab_size)
      for b in args.batch:
        ids, images = _prompts(cfg, b, args.prompt_len)
        (j_ttft, j_tps, j_out), (t_ttft, t_tps, t_out) = best_of(
            [jax_runner(gen, ids, images, args.new_tokens),
             torch_runner(ref, ids, images, args.new_tokens)], args.repeats)
        equal = j_out == t_out
        row = dict(config=config, batch=b, prompt_len=args.prompt_len, new_tokens=args.new_tokens,
                   ttft_ms_jax=1e3 * j_ttft, ttft_ms_torch=1e3 * t_ttft,
                   decode_tok_s_jax=j_tps, decode_tok_s_torch=t_tps, tokens_equal=equal)
        rows.append(row)
        print(f"{config:<7}{b:>6} | {1e3 * j_ttft:>12.1f}{1e3 * t_ttft:>9.1f}"
              f"{t_ttft / j_ttft:>6.2f}x | {j_tps:>17.0f}{t_tps:>9.0f}{j_tps / t_tps:>6.2f}x | "
              f"{'yes' if equal else 'NO'}", flush=True)
  print("ratio = how many times faster JAX is (TTFT: torch/jax; decode: jax/torch)")
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
  main()
