"""Random checkpoints in the released HF layout, for tests, demos and benchmarks.

Every tensor is drawn independently from a generator seeded by (seed, crc32(key)) and written as it
is produced, so a multi-GB checkpoint is generated in the memory of one tensor. Scales keep
activations O(1) in small models (weights ~ N(0, 1/fan_in), norms ~ 1, biases ~ 0.1) so logit
comparisons are meaningful; the adapter's pos_embed is the fixed 2D sin-cos table, as released.
"""

from __future__ import annotations

import json
import pathlib
import zlib

import numpy as np

from qwenvl_jax.ckpt import hf_io, hf_layout
from qwenvl_jax.ckpt.atomic import atomic_directory
from qwenvl_jax.config import ModelConfig

_NORM_SUFFIXES = ("ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight", "ln_q.weight",
                  "ln_kv.weight", "ln_f.weight")


def random_hf_tensor(key: str, shape: tuple[int, ...], cfg: ModelConfig, seed: int = 0) -> np.ndarray:
  """One float32 tensor for HF `key`, deterministic in (seed, key)."""
  rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
  if key.endswith("attn_pool.pos_embed"):
    from qwenvl_jax.model.posemb import sincos_2d

    return sincos_2d(cfg.llm.hidden, cfg.adapter.grid).astype(np.float32)
  if key.endswith(_NORM_SUFFIXES):
    return (1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
  if len(shape) == 1:  # biases
    return (0.1 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
  if key.endswith(("wte.weight", "attn_pool.query", "positional_embedding")):
    return (0.5 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
  fan_in = shape[0] if key.endswith("visual.proj") else int(np.prod(shape[1:]))
  out = rng.standard_normal(shape, dtype=np.float32)  # float32 draws: no float64 temporaries
  out *= np.float32(1 / np.sqrt(fan_in))
  return out


def write_random_hf_checkpoint(dst, cfg: ModelConfig, *, dtype: str = "float32",
                               fmt: str = "safetensors", shard_size: int = 2 << 30, seed: int = 0,
                               tokenizer_file=None, overwrite: bool = False) -> pathlib.Path:
  """Writes config.json + shards + index (+ the tokenizer file) like a released HF checkpoint."""
  dt = hf_io.np_dtype(dtype)
  shapes = hf_layout.hf_shapes(cfg)
  specs = [(k, s, dt) for k, s in shapes.items()]
  dst = pathlib.Path(dst)
  with atomic_directory(dst, overwrite=overwrite) as tmp:
    hf_io.write_shards(tmp, specs, lambda k: random_hf_tensor(k, shapes[k], cfg, seed).astype(dt),
                       shard_size=shard_size, fmt=fmt)
    config = hf_layout.model_config_to_hf_config(cfg, dtype=hf_io.dtype_name(dtype))
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if tokenizer_file is not None:
      import shutil

      for f in hf_io.tokenizer_files(tokenizer_file):
        shutil.copy2(f, tmp / f.name)
  return dst


def write_random_lora_run(workdir, base_dir, settings, *, seed: int = 1,
                          b_scale: float = 0.05) -> pathlib.Path:
  """A LoRA / Q-LoRA run's workdir (one checkpoint, step 3) over the Orbax checkpoint `base_dir`,
  as `train --config finetune:lora` leaves it: finetune.json, model_config.json, the base's
  tokenizer, and the fine-tuned state. Its B factors are random (b_scale * N(0, 1)) instead of
  zero, so the factors change the model's outputs."""
  import jax
  import orbax.checkpoint as ocp
  from flax import nnx

  from qwenvl_jax.ckpt import checkpoint, lora_run
  from qwenvl_jax.ckpt.orbax_io import load_checkpoint
  from qwenvl_jax.model.lora import linear_modules
  from qwenvl_jax.train import finetune

  workdir = pathlib.Path(workdir)
  model, cfg, tokenizer = load_checkpoint(base_dir)
  lora_run.transform(model, settings)
  rng = np.random.default_rng(seed)
  for linear in linear_modules(model).values():
    if linear.lora_b is not None:
      b = linear.lora_b.get_value()
      linear.lora_b.set_value(jax.numpy.asarray(b_scale * rng.standard_normal(b.shape), b.dtype))
  with ocp.StandardCheckpointer() as c:
    c.save(workdir / "checkpoints" / "3" / "params", nnx.state(model).to_pure_dict())
  checkpoint.write_model_config(workdir, cfg)
  finetune.write_settings(workdir, settings)
  if tokenizer is not None:
    checkpoint.copy_tokenizer(tokenizer, workdir)
  return workdir
