"""JAX vs PyTorch on identical weights and batches: the pieces `run_all.py` and its test share.

One random checkpoint in the released HF layout is the source of truth: the JAX model is its
conversion to our Orbax layout (`convert_hf_to_orbax` -> `load_checkpoint`), the PyTorch model is
`TorchQwenVL` loading the same files. Both train steps do the same work on the same batch:

  forward (ViT -> adapter -> splice -> LLM, fp32) -> next-token CE averaged over the target tokens
  -> backward -> global-norm clip -> AdamW with the project's weight-decay mask and ViT layer-wise
  LR decay (PyTorch: one param group per (LR factor, decay) pair, the same rule as `train/optim.py`).

JAX runs the project's `TrainStep` (one device, no accumulation); PyTorch runs `torch.autograd` +
`torch.optim.AdamW` on `TorchQwenVL._run` (training semantics: raw positions, NTK alpha 1, no log-n).
"""

from __future__ import annotations

import dataclasses
import gc
import pathlib
import time

import numpy as np

from qwenvl_jax.config import MeshConfig, ModelConfig, OptimConfig

# Warmup 0 and a long horizon: the LR is the peak for the few steps measured, on both sides.
BENCH_OPTIM = OptimConfig(peak_lr=1e-3, min_lr=0.0, warmup_steps=0, weight_decay=0.05,
                          grad_clip=1.0, vit_lr_decay=0.9)
BENCH_STEPS = 10 ** 6


def pin_to_one_core():
  """One core for this process, before jax / torch are imported: XLA sizes its intra-op pool (the
  `outer_dimension_partitions` of its CPU kernels) by the schedulable CPUs, so this is what makes it
  single-threaded like `torch.set_num_threads(1)`; both sides get the same core."""
  import os

  os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
  os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"


def train_batch(cfg: ModelConfig, rows: int, seq_len: int, seed: int = 0) -> dict[str, np.ndarray]:
  """Full rows (no padding, one segment) with one image each: `<img> pad*Q </img>` after 3 text
  tokens; targets are the text tokens; uint8 pixels. Follows the contract of `train/batch.py`."""
  q = cfg.tokens_per_image
  if seq_len < q + 8:
    raise ValueError(f"seq_len {seq_len} is too short for an image span of {q + 2} tokens")
  rng = np.random.default_rng(seed)
  text_vocab = cfg.image_start_id - 8  # clear of the image specials at the top
  tokens = np.zeros((rows, seq_len), np.int32)
  mask = np.zeros((rows, seq_len), bool)
  for r in range(rows):
    text = rng.integers(0, text_vocab, seq_len - q - 2)
    tokens[r] = np.concatenate([text[:3], cfg.image_span, text[3:]])
    mask[r] = tokens[r] < text_vocab
  mask[:, 0] = False
  size = cfg.vision.image_size
  return dict(tokens=tokens, loss_mask=mask, segment_ids=np.ones((rows, seq_len), np.int32),
              positions=np.broadcast_to(np.arange(seq_len, dtype=np.int32), (rows, seq_len)).copy(),
              images=rng.integers(0, 256, size=(rows, 1, size, size, 3), dtype=np.uint8),
              num_images=np.ones(rows, np.int32))


# --------------------------------------------------------------------------------------------
# Checkpoints.


@dataclasses.dataclass
class Checkpoints:
  cfg: ModelConfig
  hf_dir: pathlib.Path
  orbax_dir: pathlib.Path


def write_checkpoints(cfg: ModelConfig, workdir: pathlib.Path, name: str, seed: int = 0) -> Checkpoints:
  """Random HF-layout checkpoint and its conversion to ours (fp32)."""
  from qwenvl_jax.ckpt import convert
  from qwenvl_jax.testing import random_checkpoint

  hf = random_checkpoint.write_random_hf_checkpoint(workdir / f"{name}_hf", cfg, seed=seed, overwrite=True)
  orbax = convert.convert_hf_to_orbax(hf, workdir / f"{name}_orbax", overwrite=True)
  return Checkpoints(cfg, hf, orbax)


def load_jax(ck: Checkpoints):
  from qwenvl_jax.ckpt.orbax_io import load_checkpoint

  model, cfg, _ = load_checkpoint(ck.orbax_dir)
  return model


def load_torch(ck: Checkpoints):
  from qwenvl_jax.testing.torch_reference import TorchQwenVL

  return TorchQwenVL.from_hf_dir(ck.hf_dir, ck.cfg)


def free_memory():
  import jax

  gc.collect()
  jax.clear_caches()


# --------------------------------------------------------------------------------------------
# Train steps.


class JaxTrainer:
  """The project's `TrainStep` on one device, started from `model`'s parameters (which it consumes:
  params are donated to the step)."""

  def __init__(self, model, optim_cfg: OptimConfig = BENCH_OPTIM, **model_overrides):
    """`model_overrides`: ModelConfig fields that change no tensor (attention, loss_chunk, remat)."""
    import jax
    import ml_collections
    from flax import nnx

    from qwenvl_jax.config import model_config_to_dict
    from qwenvl_jax.sharding import create_mesh
    from qwenvl_jax.train.setup import setup

    cfg = dataclasses.replace(model.cfg, **model_overrides).validate()
    # batch_size / seq_len only pass the run's checks: the step takes whatever batch it is given.
    config = ml_collections.ConfigDict(dict(
        model=model_config_to_dict(cfg), optim=dataclasses.asdict(optim_cfg), steps=BENCH_STEPS,
        batch_size=1, grad_accum=1, seq_len=2))
    self.run = setup(config, create_mesh(MeshConfig(1, 1, 1), devices=jax.devices()[:1]))
    self.state = self.run.placed_state(nnx.state(model).to_pure_dict())
    self.step_fn = self.run.train_step
    self.compiled, self.compile_s = None, None
    self._batches = {}

  def compile(self, batch: dict) -> float:
    """AOT-compiles the step for this batch layout; returns the seconds (lower + compile)."""

    t = time.perf_counter()
    self.compiled = self.step_fn.compile(self.state, self._put(batch))
    self.compile_s = time.perf_counter() - t
    return self.compile_s

  def _put(self, batch: dict) -> dict:
    """The batch on device once (PyTorch gets its tensors once too)."""
    import jax

    key = id(batch)
    if key not in self._batches:
      self._batches[key] = jax.device_put(batch, self.step_fn.batch_shardings(batch))
    return self._batches[key]

  def step(self, batch: dict) -> float:
    """One optimizer step (the AOT-compiled executable); returns the loss (host sync included)."""
    import jax

    if self.compiled is None:
      self.compile(batch)
    self.state, m = self.compiled(self.state, self._put(batch))
    return float(jax.device_get(m["loss"]))


def _torch_param_groups(model, cfg: ModelConfig, optim_cfg: OptimConfig):
  """The rule of `train/optim.py` on HF names: LR factor (ViT layer decay) and weight decay."""
  n, d = cfg.vision.layers, optim_cfg.vit_lr_decay
  no_decay = ("transformer.wte.weight", "transformer.visual.positional_embedding",
              "transformer.visual.attn_pool.query")
  groups: dict[tuple[float, bool], list] = {}
  for name, p in model.named_parameters():
    if not p.requires_grad:
      continue
    factor = 1.0
    if name.startswith("transformer.visual.transformer.resblocks."):
      factor = d ** (n - int(name.split(".")[4]))
    elif name.startswith(("transformer.visual.conv1", "transformer.visual.positional_embedding",
                          "transformer.visual.ln_pre")):
      factor = d ** (n + 1)
    is_norm = ".ln_" in name  # every LayerNorm / RMSNorm of the released names is ln_*
    decays = not (name.endswith("bias") or is_norm or name in no_decay)
    groups.setdefault((factor, decays), []).append(p)
  return [dict(params=ps, lr=optim_cfg.peak_lr * f, weight_decay=optim_cfg.weight_decay if dec else 0.0)
          for (f, dec), ps in groups.items()]


class TorchTrainer:
  """`TorchQwenVL` + torch autograd + `torch.optim.AdamW`, the same loss and optimizer rule."""

  def __init__(self, model, optim_cfg: OptimConfig = BENCH_OPTIM):
    import torch

    self.model, self.cfg, self.optim_cfg = model, model.cfg, optim_cfg
    for name, p in model.named_parameters():
      p.requires_grad_(not name.endswith("attn_pool.pos_embed"))  # a fixed sin-cos table
    self.params = [p for p in model.parameters() if p.requires_grad]
    self.opt = torch.optim.AdamW(_torch_param_groups(model, self.cfg, optim_cfg),
                                 lr=optim_cfg.peak_lr, betas=(optim_cfg.b1, optim_cfg.b2),
                                 eps=optim_cfg.eps, foreach=True)
    self._batches = {}

  def _tensors(self, batch: dict):
    import torch

    from qwenvl_jax.model import pixels

    key = id(batch)
    if key not in self._batches:
      ids = torch.from_numpy(batch["tokens"]).long()
      seg = batch["segment_ids"]
      w = batch["loss_mask"][:, 1:] & (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] != 0)
      images = pixels.normalize_host(batch["images"])  # JAX normalises on device, in its step
      self._batches[key] = (ids, torch.from_numpy(images), torch.from_numpy(w))
    return self._batches[key]

  def loss(self, batch: dict):
    import torch.nn.functional as F

    ids, images, w = self._tensors(batch)
    logits, _ = self.model._run(ids, images, None, None, 1.0, False)
    ce = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
    return (ce * w.flatten()).sum() / w.sum().clamp(min=1)

  def step(self, batch: dict) -> float:
    import torch

    with torch.enable_grad():
      loss = self.loss(batch)
      self.opt.zero_grad(set_to_none=True)
      loss.backward()
      torch.nn.utils.clip_grad_norm_(self.params, self.optim_cfg.grad_clip, foreach=True)
      self.opt.step()
    return float(loss.detach())
