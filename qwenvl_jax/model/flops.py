"""Model FLOPs from the architecture (matmuls only), for MFU and AOT predictions; and the matmul
FLOPs of a lowered program with its loops counted as often as they run.

Counts 2 FLOPs per multiply-add of every matmul, attention score and value products included over
the full (unmasked) score matrix, as XLA executes them. Elementwise work (norms, softmax, GELU,
rotary) is left out; it is a few percent at real widths. Training multiplies the forward by 3
(forward, input gradients, weight gradients) for trained parts; a frozen part that still needs
input gradients (the LLM in stage 1) costs 2x, and a frozen part with nothing trainable before it
(the ViT in stage 3) costs 1x.
"""

from __future__ import annotations

import dataclasses
import math
import re

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


def prefill_flops(cfg: ModelConfig, batch: int, prompt_len: int, cache_len: int,
                  images_per_row: float = 0, image_size: int | None = None) -> float:
  """Prefill as `infer/generate.py` runs it: images through ViT + adapter, `prompt_len` tokens
  through the LLM attending over the whole `cache_len` cache (masked slots included), and the LM
  head on the last position only."""
  m = cfg.llm
  n_images = batch * images_per_row
  vision = n_images * (vit_forward_flops(cfg, image_size) + adapter_forward_flops(cfg, image_size))
  dense = 2 * (4 * m.hidden * m.hidden + 3 * m.hidden * m.mlp_dim)
  attn = 2 * 2 * cache_len * m.hidden
  return vision + batch * (prompt_len * m.layers * (dense + attn) + 2 * m.hidden * m.vocab_size)


def decode_step_flops(cfg: ModelConfig, batch: int, cache_len: int) -> float:
  """One new token per row attending over the whole `cache_len` cache, LM head included."""
  return prefill_flops(cfg, batch, 1, cache_len)


# --------------------------------------------------------------------------------------------
# Matmul FLOPs of a lowered program.
#
# XLA's cost analysis counts the body of a while loop once, and our step is loops inside loops
# (microbatches around scanned ViT / LLM layers, forward and backward), so on the 7B step it
# reports a small fraction of the work. `program_matmul_flops` reads the StableHLO of the lowered
# (global, not yet partitioned) program instead: 2 * |result| * |contracted dims| for every
# dot_general, each multiplied by the trip counts of the loops around it and by the number of
# call sites of the function holding it. Remat recomputation is in the program, so it is counted.

_DOT = re.compile(r"stablehlo\.dot_general .*contracting_dims = \[([\d, ]*)\] x .*:\s*"
                  r"\(tensor<([^>]*)>, tensor<[^>]*>\) -> tensor<([^>]*)>")
_CALL = re.compile(r"(?:func\.)?call @([\w.$-]+)\(")
_FUNC = re.compile(r"^  func\.func (?:public |private )?@([\w.$-]+)\(")
_CONST = re.compile(r"^\s*(%[\w#]+) = stablehlo\.constant dense<(-?\d+)> : tensor<i(?:32|64)>")
_COMPARE_LT = re.compile(r"stablehlo\.compare\s+LT, %[\w#]+, (%[\w#]+)")


def _dims(tensor_type: str) -> list[int]:
  """'16x64x32xf32' -> [16, 64, 32]; a scalar 'f32' -> []."""
  return [int(d) for d in tensor_type.split("x")[:-1]]


@dataclasses.dataclass
class ProgramFlops:
  flops: float
  unknown_trip_counts: int  # while loops whose bound could not be read (counted once)


def program_matmul_flops(stablehlo_text: str) -> ProgramFlops:
  """Matmul FLOPs of a StableHLO module (`jax.stages.Lowered.as_text()`), loops unrolled."""
  funcs: dict[str, tuple[float, list[tuple[str, float]]]] = {}
  unknown = 0
  name, own, calls, consts, stack = None, 0.0, [], {}, []
  for line in stablehlo_text.splitlines():
    m = _FUNC.match(line)
    if m:
      name, own, calls, consts, stack = m.group(1), 0.0, [], {}, []
      continue
    if name is None:
      continue
    if line == "  }":
      funcs[name] = (own, calls)
      name = None
      continue
    indent = len(line) - len(line.lstrip())
    text = line.strip()
    c = _CONST.match(line)
    if c:
      consts[c.group(1)] = int(c.group(2))
    if "stablehlo.while(" in text:
      stack.append(dict(indent=indent, trips=None, in_body=False))
      continue
    if stack and indent == stack[-1]["indent"]:
      frame = stack[-1]
      if text.startswith("} do {"):
        frame["in_body"] = True
        if frame["trips"] is None:
          unknown += 1
        continue
      if text == "}" and frame["in_body"]:
        stack.pop()
        continue
    mult = math.prod(f["trips"] or 1 for f in stack if f["in_body"])
    if stack and not stack[-1]["in_body"]:
      lt = _COMPARE_LT.search(text)
      if lt and lt.group(1) in consts:
        stack[-1]["trips"] = consts[lt.group(1)]
      continue  # a loop condition holds no matmuls
    d = _DOT.search(text)
    if d:
      contract = [int(i) for i in d.group(1).split(",") if i.strip()]
      lhs, out = _dims(d.group(2)), _dims(d.group(3))
      own += mult * 2 * math.prod(out) * math.prod(lhs[i] for i in contract)
    for callee in _CALL.findall(text):
      calls.append((callee, mult))

  memo: dict[str, float] = {}

  def total(fn: str) -> float:
    if fn not in memo:
      own_flops, callees = funcs.get(fn, (0.0, []))
      memo[fn] = own_flops + sum(mult * total(callee) for callee, mult in callees)
    return memo[fn]

  return ProgramFlops(flops=total("main"), unknown_trip_counts=unknown)


# Peak dense bf16 FLOP/s per chip (vendors' published specifications) and the HBM per chip a program may
# use: what libtpu's compiler reports as available (its out-of-memory messages: 30.75G on v4, 95.74G on
# v5p, 15.75G on v5e, i.e. the HBM less a reserve); v6e's is the published 32 GiB, not yet checked.
# HBM bandwidth per chip (published) bounds steps that read more bytes than they compute (decode).
TPU_SPECS = {
    "TPU v4": dict(peak_flops=275e12, hbm_bytes=30.75 * 2**30, hbm_bandwidth=1.2e12),
    "TPU v5 lite": dict(peak_flops=197e12, hbm_bytes=15.75 * 2**30, hbm_bandwidth=819e9),
    "TPU v5": dict(peak_flops=459e12, hbm_bytes=95.74 * 2**30, hbm_bandwidth=2.765e12),
    "TPU v6 lite": dict(peak_flops=918e12, hbm_bytes=32 * 2**30, hbm_bandwidth=1.64e12),
}
