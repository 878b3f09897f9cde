"""Small builders shared by model tests."""

import numpy as np

from qwenvl_jax.config import load_model_config


def tiny_config(**overrides):
  import dataclasses
  return dataclasses.replace(load_model_config("tiny"), **overrides)


def image_row(cfg, pieces):
  """Token ids from pieces: ints are text ids, 'IMG' is a full image span."""
  ids = []
  for p in pieces:
    if p == "IMG":
      ids += cfg.image_span
    else:
      ids.append(p)
  return np.asarray(ids, np.int32)


def qwen2_for(llm_cfg):
  """An untrained transformers `Qwen2ForCausalLM` with the shapes of our LLM config (fp32, eager)."""
  import transformers

  hf_cfg = transformers.Qwen2Config(
      vocab_size=llm_cfg.vocab_size, hidden_size=llm_cfg.hidden, intermediate_size=llm_cfg.mlp_dim,
      num_hidden_layers=llm_cfg.layers, num_attention_heads=llm_cfg.heads,
      num_key_value_heads=llm_cfg.heads, head_dim=llm_cfg.head_dim, rms_norm_eps=llm_cfg.rms_eps,
      max_position_embeddings=4096,
      rope_parameters={"rope_type": "default", "rope_theta": llm_cfg.rope_base},
      tie_word_embeddings=False, use_sliding_window=False, attn_implementation="eager")
  return transformers.Qwen2ForCausalLM(hf_cfg).eval()
