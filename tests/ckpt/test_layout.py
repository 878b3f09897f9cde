"""The HF layout table: complete, exact inverses, the released shapes, config.json both ways."""

import dataclasses
import math

import numpy as np
import pytest
from flax import nnx

from qwenvl_jax.ckpt import hf_layout
from qwenvl_jax.ckpt.checkpoint import flatten_dict
from qwenvl_jax.config import ConfigError, load_model_config
from qwenvl_jax.model.qwenvl import QwenVL
from qwenvl_jax.sharding import eval_shape_model


@pytest.mark.parametrize("name", ["tiny", "qwen_vl_7b"])
def test_table_covers_model_state_exactly(name):
  cfg = load_model_config(name)
  state = nnx.state(eval_shape_model(lambda: QwenVL(cfg, rngs=nnx.Rngs(0)))).to_pure_dict()
  shapes = {k: tuple(v.shape) for k, v in flatten_dict(state).items()}
  assert shapes == hf_layout.ours_shapes(cfg)


def test_released_shapes_and_parameter_count():
  cfg = load_model_config("qwen_vl_7b")
  shapes = hf_layout.hf_shapes(cfg)
  assert sum(math.prod(s) for s in shapes.values()) == 9_656_935_168  # the released checkpoint
  expected = {
      "transformer.visual.conv1.weight": (1664, 3, 14, 14),
      "transformer.visual.positional_embedding": (256, 1664),
      "transformer.visual.transformer.resblocks.47.attn.in_proj.weight": (4992, 1664),
      "transformer.visual.transformer.resblocks.0.mlp.c_fc.weight": (8192, 1664),
      "transformer.visual.attn_pool.kv_proj.weight": (4096, 1664),
      "transformer.visual.attn_pool.attn.in_proj_weight": (12288, 4096),
      "transformer.visual.attn_pool.pos_embed": (256, 4096),
      "transformer.visual.proj": (4096, 4096),
      "transformer.wte.weight": (151936, 4096),
      "transformer.h.31.attn.c_attn.weight": (12288, 4096),
      "transformer.h.31.attn.c_attn.bias": (12288,),
      "transformer.h.0.attn.c_proj.weight": (4096, 4096),
      "transformer.h.0.mlp.w2.weight": (11008, 4096),
      "transformer.h.0.mlp.c_proj.weight": (4096, 11008),
      "lm_head.weight": (151936, 4096),
  }
  assert {k: shapes[k] for k in expected} == expected
  assert "transformer.h.0.attn.c_proj.bias" not in shapes and "transformer.h.32.ln_1.weight" not in shapes


def test_every_pattern_is_an_exact_inverse():
  cfg = load_model_config("tiny")
  rng = np.random.default_rng(0)
  for e in hf_layout.ENTRIES:
    x = rng.standard_normal(e.hf_shape(cfg)).astype(np.float32)
    ours = e.to_ours(x, cfg)
    assert ours.shape == (e.ours_shape(cfg)[1:] if e.stack else e.ours_shape(cfg)), e.ours
    np.testing.assert_array_equal(e.to_hf(ours, cfg), x)


def test_qkv_layouts_follow_the_reference():
  """ViT in_proj rows are [heads, 3, head_dim]; c_attn and the adapter's MHA are [3, heads, head_dim]."""
  cfg = load_model_config("tiny")
  w, vhd = cfg.vision.width, cfg.vision.head_dim
  rows = np.arange(3 * w, dtype=np.float32)[:, None] * np.ones((1, w), np.float32)
  vit = hf_layout.BY_OURS["visual.blocks.attn.qkv.kernel"].to_ours(rows, cfg)  # [W, 3, H, hd]
  h, s, d = 2, 1, 3  # head 2's key, dim 3
  assert vit[0, s, h, d] == h * 3 * vhd + s * vhd + d
  dm, ah, ahd = cfg.llm.hidden, cfg.adapter.heads, cfg.llm.hidden // cfg.adapter.heads
  rows = np.arange(3 * dm, dtype=np.float32)[:, None] * np.ones((1, dm), np.float32)
  for name, heads, hd in (("adapter.in_proj.kernel", ah, ahd),
                          ("llm.blocks.attn.qkv.kernel", cfg.llm.heads, cfg.llm.head_dim)):
    out = hf_layout.BY_OURS[name].to_ours(rows, cfg)
    assert out[0, s, h, d] == s * heads * hd + h * hd + d, name


@pytest.mark.parametrize("name", ["tiny", "qwen_vl_7b"])
def test_config_json_round_trip(name):
  cfg = load_model_config(name)
  cj = hf_layout.model_config_to_hf_config(cfg, dtype="bfloat16")
  assert hf_layout.hf_config_to_model_config(cj, base=cfg) == cfg


def test_released_config_json_fields():
  cj = hf_layout.model_config_to_hf_config(load_model_config("qwen_vl_7b"), dtype="bfloat16")
  released = dict(vocab_size=151936, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                  kv_channels=128, intermediate_size=22016, rotary_emb_base=10000, rotary_pct=1.0,
                  layer_norm_epsilon=1e-6, seq_length=2048, use_dynamic_ntk=True, use_logn_attn=True,
                  no_bias=True, tie_word_embeddings=False, torch_dtype="bfloat16")
  assert {k: cj[k] for k in released} == released
  assert cj["visual"] == {"heads": 16, "image_size": 448, "image_start_id": 151857, "layers": 48,
                          "mlp_ratio": 4.9231, "output_dim": 4096, "patch_size": 14, "width": 1664}


def test_config_json_disagreement_names_the_field():
  cfg = load_model_config("tiny")
  cj = hf_layout.model_config_to_hf_config(cfg)
  with pytest.raises(ConfigError, match=r"model\.llm\.hidden"):
    wider = {**cj, "hidden_size": 64, "visual": {**cj["visual"], "output_dim": 64}}
    hf_layout.hf_config_to_model_config(wider, base=cfg)
  with pytest.raises(ConfigError, match="rotary_pct"):
    hf_layout.hf_config_to_model_config({**cj, "rotary_pct": 0.5})
  with pytest.raises(ConfigError, match="visual.output_dim"):
    hf_layout.hf_config_to_model_config({**cj, "visual": {**cj["visual"], "output_dim": 8}})


def test_check_tensors_messages():
  cfg = load_model_config("tiny")
  good = hf_layout.ours_shapes(cfg)
  hf_layout.check_tensors(good, cfg, side="ours")
  bad = dict(good)
  del bad["llm.ln_f.scale"]
  bad["llm.extra"] = (3,)
  bad["visual.blocks.mlp.fc_in.kernel"] = (2, 32, 65)  # one odd tensor: a shape mismatch
  with pytest.raises(hf_layout.LayoutError) as e:
    hf_layout.check_tensors(bad, cfg, side="ours")
  msg = str(e.value)
  assert "llm.ln_f.scale" in msg and "llm.extra" in msg
  assert "visual.blocks.mlp.fc_in.kernel" in msg and "(2, 32, 65)" in msg and "(2, 32, 64)" in msg
  wider = dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, vocab_size=1024))
  with pytest.raises(hf_layout.LayoutError, match=r"model\.llm\.vocab_size.*512"):
    hf_layout.check_tensors(good, wider, side="ours")
  deeper = dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, layers=3))
  with pytest.raises(hf_layout.LayoutError, match=r"model\.llm\.layers.*3.*2 layers"):
    hf_layout.check_tensors(hf_layout.hf_shapes(cfg), deeper, side="hf")
