"""The LLM half of a converted checkpoint against transformers' Qwen2, with Qwen2's weights mapped here
straight from the released-layout HF files (not from our conversion table or our model)."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from qwenvl_jax.ckpt.orbax_io import load_checkpoint
from tests.ckpt.helpers import load_hf_tensors
from tests.model.helpers import qwen2_for

transformers = pytest.importorskip("transformers")


def qwen2_from_released_layout(sd: dict, cfg) -> "transformers.Qwen2ForCausalLM":
  """transformer.h.N.attn.c_attn ([q | k | v] rows) -> q/k/v_proj; mlp.w1 -> up, mlp.w2 -> gate (the
  released MLP is c_proj(w1(x) * silu(w2(x)))); ln_1/ln_2 -> input/post_attention_layernorm."""
  llm = cfg.llm
  model = qwen2_for(llm)
  out = {"model.embed_tokens.weight": sd["transformer.wte.weight"],
         "model.norm.weight": sd["transformer.ln_f.weight"], "lm_head.weight": sd["lm_head.weight"]}
  for n in range(llm.layers):
    src, dst = f"transformer.h.{n}.", f"model.layers.{n}."
    for name, w, b in zip("qkv", sd[src + "attn.c_attn.weight"].chunk(3, 0),
                          sd[src + "attn.c_attn.bias"].chunk(3, 0)):
      out[dst + f"self_attn.{name}_proj.weight"], out[dst + f"self_attn.{name}_proj.bias"] = w, b
    out[dst + "self_attn.o_proj.weight"] = sd[src + "attn.c_proj.weight"]
    out[dst + "mlp.up_proj.weight"] = sd[src + "mlp.w1.weight"]
    out[dst + "mlp.gate_proj.weight"] = sd[src + "mlp.w2.weight"]
    out[dst + "mlp.down_proj.weight"] = sd[src + "mlp.c_proj.weight"]
    out[dst + "input_layernorm.weight"] = sd[src + "ln_1.weight"]
    out[dst + "post_attention_layernorm.weight"] = sd[src + "ln_2.weight"]
  missing, unexpected = model.load_state_dict({k: v.float() for k, v in out.items()}, strict=False)
  assert not unexpected and not [k for k in missing if "rotary" not in k], (missing, unexpected)
  return model


def test_converted_llm_matches_transformers_qwen2(hf_fp32, orbax_fp32):
  model, cfg, _ = load_checkpoint(orbax_fp32)
  ref_model = qwen2_from_released_layout(load_hf_tensors(hf_fp32), cfg)
  # Text only (the LLM half), within the training length: no NTK / log-n scaling on either side.
  t = cfg.llm.seq_length
  ids = np.random.default_rng(0).integers(0, cfg.image_start_id, size=(2, t))
  ours = np.asarray(nnx.jit(lambda m, i: m(i))(model, jnp.asarray(ids)))
  with torch.no_grad():
    ref = ref_model(torch.from_numpy(ids)).logits.numpy()
  assert np.abs(ref).max() > 1.0  # not a degenerate comparison
  assert np.abs(ours - ref).max() < 1e-4
