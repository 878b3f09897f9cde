"""Checkpoint conversion speed and peak memory, both directions, on a generated >= 1 GB checkpoint.

  python benchmarks/convert_bench.py [--preset mid|7b-widths] [--shard-mb 500] [--dtype bf16] [--dir D]

Each step (generate, hf -> orbax, orbax -> hf, verify bit-identity) runs in its own subprocess so peak RSS
(`resource.getrusage`, ru_maxrss) is per step; "baseline" is the RSS after imports, before any work.
Presets: "mid" (~0.9B parameters, 1.8 GB in bf16) and "7b-widths" (the released widths and
vocabulary, 2 LLM + 4 ViT layers, 2.5 GB in bf16).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import resource
import shutil
import subprocess
import sys
import tempfile
import time


def bench_config(preset: str = "mid"):
  """mid: a ~0.9B Qwen-VL shape. 7b-widths: the released widths and vocabulary (embed / lm_head
  of 151936 x 4096, 1.2 GB each in bf16) with few layers, to show memory does not follow them."""
  from qwenvl_jax.config import AdapterConfig, LLMConfig, ModelConfig, VisionConfig

  if preset == "7b-widths":
    return ModelConfig(vision=VisionConfig(layers=4), adapter=AdapterConfig(),
                       llm=LLMConfig(layers=2)).validate()
  return ModelConfig(
      vision=VisionConfig(image_size=224, patch_size=14, width=1024, layers=12, heads=16,
                          mlp_dim=4096, pos_grid=16),
      adapter=AdapterConfig(n_queries=64, heads=16),
      llm=LLMConfig(vocab_size=32000, hidden=2048, layers=12, heads=16, head_dim=128, mlp_dim=5504),
      image_start_id=31997, image_end_id=31998, image_pad_id=31999).validate()


def _rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _dir_bytes(path: pathlib.Path) -> int:
  return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def child(step: str, root: pathlib.Path, shard_bytes: int, dtype: str, preset: str) -> dict:
  """One step in this process; returns its figures."""
  from qwenvl_jax.ckpt import convert, hf_io, hf_layout  # noqa: F401  (imports first)
  from qwenvl_jax.ckpt.orbax_io import load_checkpoint  # noqa: F401
  from qwenvl_jax.testing import random_checkpoint
  import numpy as np

  cfg = bench_config(preset)
  baseline = _rss_mb()
  t = time.perf_counter()
  if step == "generate":
    random_checkpoint.write_random_hf_checkpoint(root / "hf", cfg, dtype=dtype, shard_size=shard_bytes,
                                                 overwrite=True)
    out = root / "hf"
  elif step == "hf2orbax":
    convert.convert_hf_to_orbax(root / "hf", root / "orbax", overwrite=True)
    out = root / "orbax"
  elif step == "orbax2hf":
    convert.convert_orbax_to_hf(root / "orbax", root / "hf_back", shard_size=shard_bytes,
                                overwrite=True)
    out = root / "hf_back"
  elif step == "verify":  # bit-identical round trip, tensor by tensor
    a, b = hf_io.HFWeights(root / "hf"), hf_io.HFWeights(root / "hf_back")
    assert set(a.keys()) == set(b.keys())
    for k in a.keys():
      assert a.dtype(k) == b.dtype(k) and a.shape(k) == b.shape(k), k
      n = a.shape(k)[0]
      block = max(1, (64 << 20) // max(1, a.read(k, (0, 1)).nbytes))
      for r0 in range(0, n, block):  # row blocks: the check itself stays small
        rows = (r0, min(r0 + block, n))
        assert np.array_equal(a.read(k, rows).view(np.uint8), b.read(k, rows).view(np.uint8)), k
    out = root / "hf_back"
  else:
    raise ValueError(step)
  wall = time.perf_counter() - t
  weights = [p for p in out.rglob("*") if p.suffix in (".safetensors", ".bin")]
  return {"step": step, "wall_s": wall, "peak_rss_mb": _rss_mb(), "baseline_rss_mb": baseline,
          "out_gb": _dir_bytes(out) / 1e9,
          "largest_shard_mb": max((p.stat().st_size for p in weights), default=0) / 1e6}


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--dir", help="work directory (default: a temporary one, removed afterwards)")
  ap.add_argument("--shard-mb", type=int, default=500)
  ap.add_argument("--dtype", default="bf16")
  ap.add_argument("--preset", default="mid", choices=("mid", "7b-widths"))
  ap.add_argument("--keep", action="store_true", help="keep the checkpoints")
  ap.add_argument("--child", help=argparse.SUPPRESS)
  args = ap.parse_args()
  shard_bytes = args.shard_mb * 10 ** 6
  if args.child:
    print(json.dumps(child(args.child, pathlib.Path(args.dir), shard_bytes, args.dtype, args.preset)))
    return
  root = pathlib.Path(args.dir or tempfile.mkdtemp(prefix="convert_bench_"))
  root.mkdir(parents=True, exist_ok=True)
  from qwenvl_jax.ckpt import hf_layout

  cfg = bench_config(args.preset)
  n_params = sum(math.prod(s) for s in hf_layout.hf_shapes(cfg).values())
  largest = max(math.prod(s) for s in hf_layout.hf_shapes(cfg).values())
  print(f"model '{args.preset}': {n_params / 1e9:.2f}B parameters ({cfg.llm.layers} LLM, "
        f"{cfg.vision.layers} ViT layers), largest tensor {largest * 2 / 1e6:.0f} MB in bf16 / "
        f"{largest * 4 / 1e6:.0f} MB in fp32; shards <= {args.shard_mb} MB; dir {root}")
  env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
  rows = []
  try:
    for step in ("generate", "hf2orbax", "orbax2hf", "verify"):
      cmd = [sys.executable, __file__, "--child", step, "--dir", str(root), "--shard-mb",
             str(args.shard_mb), "--dtype", args.dtype, "--preset", args.preset]
      res = subprocess.run(cmd, env=env, capture_output=True, text=True)
      if res.returncode:
        sys.stderr.write(res.stderr[-4000:])
        raise SystemExit(f"step {step} failed")
      rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
  finally:
    if not args.keep and not args.dir:
      shutil.rmtree(root, ignore_errors=True)
  print(f"{'step':<10}{'wall s':>8}{'peak RSS MB':>13}{'baseline MB':>13}{'output GB':>11}"
        f"{'largest shard MB':>18}")
  for r in rows:
    print(f"{r['step']:<10}{r['wall_s']:>8.1f}{r['peak_rss_mb']:>13.0f}{r['baseline_rss_mb']:>13.0f}"
          f"{r['out_gb']:>11.2f}{r['largest_shard_mb']:>18.0f}")


if __name__ == "__main__":
  main()
