"""Parameter counts by component, from abstract shapes (nothing is allocated)."""

from __future__ import annotations

import math

import jax
from flax import nnx

from qwenvl_jax.config import ModelConfig
from qwenvl_jax.model.qwenvl import QwenVL


def _count(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def count_parameters(cfg: ModelConfig) -> dict[str, int]:
  """Sizes of every checkpoint tensor (learned parameters and stored fixed tables) by component.

  `vit` is the vision tower up to its last block, `adapter` the released `attn_pool` + `ln_post`
  + `proj`. `paper_vit` / `paper_adapter` regroup them as Table 1 of the paper appears to
  (ln_post and proj counted with the ViT, the cross-attention layer alone as the adapter).
  """
  model = nnx.eval_shape(lambda: QwenVL(cfg, rngs=nnx.Rngs(0)))
  state = nnx.state(model, nnx.Variable)
  vit = _count(state["visual"])
  adapter = _count(state["adapter"])
  post = _count(state["adapter"]["ln_post"]) + _count(state["adapter"]["proj"])
  llm = _count(state["llm"])
  return dict(vit=vit, adapter=adapter, llm=llm, total=vit + adapter + llm,
              paper_vit=vit + post, paper_adapter=adapter - post)


def paper_rounding(n: int) -> str:
  """Billions as Table 1 prints them: one decimal, two for values under 0.1B (millions below 10M)."""
  b = n / 1e9
  if n < 10_000_000:
    return f"{n / 1e6:.2f}M"
  return f"{b:.2f}B" if b < 0.1 else f"{b:.1f}B"


def format_counts(counts: dict[str, int]) -> str:
  # Table 1's 9.6B is the exact 9.657B truncated, not rounded; models under 1B use the row rounding.
  total = counts["total"]
  total_text = f"{math.floor(total / 1e8) / 10:.1f}B" if total >= 1e9 else paper_rounding(total)
  rows = [
      ("ViT (incl. ln_post + proj, as Table 1)", counts["paper_vit"], "1.9B"),
      ("Adapter (cross-attention layer)", counts["paper_adapter"], "0.08B"),
      ("LLM", counts["llm"], "7.7B"),
  ]
  lines = [f"{'component':<42}{'parameters':>16}{'rounded':>10}{'Table 1 (7B)':>14}"]
  for name, n, paper in rows:
    lines.append(f"{name:<42}{n:>16,}{paper_rounding(n):>10}{paper:>14}")
  lines.append(f"{'Total':<42}{total:>16,}{total_text:>10}{'9.6B':>14}")
  lines.append(f"(module split: visual {counts['vit']:,}, adapter {counts['adapter']:,}; "
               f"a total >= 1B is truncated to one decimal as the paper's 9.6B is: exact "
               f"{total / 1e9:.3f}B)")
  return "\n".join(lines)
