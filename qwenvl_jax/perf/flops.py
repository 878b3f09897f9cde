"""Model FLOPs from the architecture (matmuls only), for MFU and AOT predictions.

Counts 2 FLOPs per multiply-add of every matmul, attention score and value products included over
the full (unmasked) score matrix, as XLA executes them. Elementwise work (norms, softmax, GELU,
rotary) is left out; it is a few percent at real widths. Training multiplies the forward by 3
(forward, input gradients, weight gradients) for trained parts; a frozen part that still needs
input gradients (the LLM in stage 1) costs 2x, and a frozen part with nothing trainable before it
(the ViT in stage 3) costs 1x.
"""

from __future__ import annotations

import dataclasses

from qwenvl_jax.config import ModelConfig


def vit_forward_flops(cfg: ModelConfig, image_size: int | None = None) -> float:
  """One image through patch embedding and all blocks."""
  v = cfg.vision
  s = image_size or v.image_size
  n = (s // v.patch_size) ** 2
  w = v.width
  patch = 2 * n * (v.patch_size ** 2 * 3) * w
  dense = 2 * n * (4 * w * w + 2 * w * v.mlp_dim)
  flags = [False] * v.layers
  if v.window_patches:
    flags = [(i + 1) % v.global_every != 0 for i in range(v.layers)]
  attn = sum(2 * 2 * n * (v.window_patches ** 2 if windowed else n) * w for windowed in flags)
  return patch + v.layers * dense + attn


def adapter_forward_flops(cfg: ModelConfig, image_size: int | None = None) -> float:
  """One image: kv_proj, q/k/v/out projections, cross-attention, proj."""
  v, e, q = cfg.vision, cfg.llm.hidden, cfg.adapter.n_queries
  n = ((image_size or v.image_size) // v.patch_size) ** 2
  return (2 * n * v.width * e  # kv_proj
          + 2 * q * e * e + 2 * 2 * n * e * e  # q; k and v projections
          + 2 * 2 * q * n * e  # scores and values
          + 2 * q * e * e + 2 * q * e * e)  # out_proj, proj


def llm_forward_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
  """One token of a `seq_len` row: dense layers, attention over the row, LM head."""
  m = cfg.llm
  dense = 2 * (4 * m.hidden * m.hidden + 3 * m.hidden * m.mlp_dim)
  attn = 2 * 2 * seq_len * m.hidden
  return m.layers * (dense + attn) + 2 * m.hidden * m.vocab_size


@dataclasses.dataclass(frozen=True)
class StepFlops:
  forward: float
  train: float


def step_flops(cfg: ModelConfig, batch: int, seq_len: int, images_per_row: float,
               image_size: int | None = None, trainable=("vit", "adapter", "llm")) -> StepFlops:
  """FLOPs of one forward and one training step over `batch` rows of `seq_len` tokens."""
  n_images = batch * images_per_row
  vit = n_images * vit_forward_flops(cfg, image_size)
  adapter = n_images * adapter_forward_flops(cfg, image_size)
  llm = batch * seq_len * llm_forward_flops_per_token(cfg, seq_len)

  def factor(part, upstream_trained):
    if part in trainable:
      return 3
    return 2 if upstream_trained else 1

  f_vit = factor("vit", False)
  f_adapter = factor("adapter", "vit" in trainable)
  f_llm = factor("llm", "vit" in trainable or "adapter" in trainable)
  return StepFlops(forward=vit + adapter + llm,
                   train=f_vit * vit + f_adapter * adapter + f_llm * llm)


# Peak dense bf16 FLOP/s and HBM per chip, from the vendors' published specifications.
TPU_SPECS = {
    "TPU v4": dict(peak_flops=275e12, hbm_bytes=32 * 2**30),
    "TPU v5 lite": dict(peak_flops=197e12, hbm_bytes=16 * 2**30),
    "TPU v5": dict(peak_flops=459e12, hbm_bytes=95 * 2**30),
    "TPU v6 lite": dict(peak_flops=918e12, hbm_bytes=32 * 2**30),
}
