"""The LLM half against transformers' Qwen2 (same family: qkv bias, SwiGLU, RMSNorm, NeoX RoPE)."""

import numpy as np
import jax.numpy as jnp
import pytest
import torch
from flax import nnx

from qwenvl_jax.config import LLMConfig
from qwenvl_jax.model.llm import QwenLM
from tests.model.helpers import qwen2_for

transformers = pytest.importorskip("transformers")


def qwen2_from_ours(lm: QwenLM, cfg: LLMConfig):
  model = qwen2_for(cfg)
  g = lambda v, *i: torch.from_numpy(np.array(np.asarray(v[...])[i] if i else v[...]))
  sd = {"model.embed_tokens.weight": g(lm.embed), "lm_head.weight": g(lm.lm_head).T,
        "model.norm.weight": g(lm.ln_f.scale)}
  blocks = lm.blocks
  for n in range(cfg.layers):
    pre = f"model.layers.{n}."
    qkv = np.asarray(blocks.attn.qkv.kernel[...])[n]  # [hidden, 3, heads, head_dim]
    qkv_b = np.asarray(blocks.attn.qkv.bias[...])[n]
    for i, name in enumerate("qkv"):
      sd[pre + f"self_attn.{name}_proj.weight"] = torch.from_numpy(qkv[:, i].reshape(cfg.hidden, -1).T.copy())
      sd[pre + f"self_attn.{name}_proj.bias"] = torch.from_numpy(qkv_b[i].reshape(-1).copy())
    sd[pre + "self_attn.o_proj.weight"] = torch.from_numpy(
        np.asarray(blocks.attn.out.kernel[...])[n].reshape(-1, cfg.hidden).T.copy())
    sd[pre + "mlp.up_proj.weight"] = g(blocks.mlp.w1.kernel, n).T
    sd[pre + "mlp.gate_proj.weight"] = g(blocks.mlp.w2.kernel, n).T  # w2 is the gate
    sd[pre + "mlp.down_proj.weight"] = g(blocks.mlp.c_proj.kernel, n).T
    sd[pre + "input_layernorm.weight"] = g(blocks.ln_1.scale, n)
    sd[pre + "post_attention_layernorm.weight"] = g(blocks.ln_2.scale, n)
  missing, unexpected = model.load_state_dict(sd, strict=False)
  assert not unexpected and not [k for k in missing if "rotary" not in k], (missing, unexpected)
  return model


@pytest.mark.parametrize("scan", [True, False])
def test_llm_logits_match_qwen2_long_prompt(scan):
  cfg = LLMConfig(vocab_size=256, hidden=64, layers=2, heads=4, head_dim=16, mlp_dim=96)
  lm = QwenLM(cfg, rngs=nnx.Rngs(0), scan_layers=scan)
  # Random norm scales and biases so every parameter matters.
  lm.blocks.attn.qkv.bias[...] = 0.5 * jnp.asarray(np.random.default_rng(1).normal(size=lm.blocks.attn.qkv.bias.shape))
  lm.blocks.ln_1.scale[...] = 1 + 0.2 * jnp.asarray(np.random.default_rng(2).normal(size=lm.blocks.ln_1.scale.shape))
  hf = qwen2_from_ours(lm, cfg)
  t = 400  # long enough for rotary-position bugs to show
  ids = np.random.default_rng(0).integers(0, cfg.vocab_size, size=(2, t))
  x = lm.embed_tokens(jnp.asarray(ids))
  pos = jnp.broadcast_to(jnp.arange(t), (2, t))
  hidden, _ = lm(x, pos, jnp.ones((2, t), jnp.int32))
  ours = np.asarray(lm.logits(hidden))
  with torch.no_grad():
    ref = hf(torch.from_numpy(ids)).logits.numpy()
  assert np.abs(ours - ref).max() < 1e-4
