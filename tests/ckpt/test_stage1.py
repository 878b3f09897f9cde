"""Stage-1 init: ViT from an OpenCLIP state dict, LLM from a Qwen-7B checkpoint, fresh adapter."""

import dataclasses
import json

import jax
import numpy as np
import pytest
import torch
from flax import nnx

from qwenvl_jax.ckpt import convert, hf_io, hf_layout
from qwenvl_jax.testing import random_checkpoint
from qwenvl_jax.ckpt.checkpoint import flatten_dict
from qwenvl_jax.ckpt.orbax_io import load_checkpoint
from qwenvl_jax.model.qwenvl import QwenVL
from qwenvl_jax.model.resize import resize_grid_table


def _openclip_state_dict(cfg, grid=4, seed=0):
  """An OpenCLIP ViT (MHA in_proj, class token, CLIP head) plus a few text-tower keys."""
  rng = np.random.default_rng(seed)
  w, f = cfg.vision.width, cfg.vision.mlp_dim
  t = lambda *s: torch.from_numpy(rng.standard_normal(s).astype(np.float32))
  sd = {"visual.class_embedding": t(w), "visual.positional_embedding": t(1 + grid * grid, w),
        "visual.conv1.weight": t(w, 3, cfg.vision.patch_size, cfg.vision.patch_size),
        "visual.ln_pre.weight": t(w), "visual.ln_pre.bias": t(w),
        "visual.ln_post.weight": t(w), "visual.ln_post.bias": t(w), "visual.proj": t(w, 24),
        "token_embedding.weight": t(10, 24), "logit_scale": t(1)}
  for i in range(cfg.vision.layers):
    p = f"visual.transformer.resblocks.{i}."
    sd.update({p + "ln_1.weight": t(w), p + "ln_1.bias": t(w), p + "ln_2.weight": t(w),
               p + "ln_2.bias": t(w), p + "attn.in_proj_weight": t(3 * w, w),
               p + "attn.in_proj_bias": t(3 * w), p + "attn.out_proj.weight": t(w, w),
               p + "attn.out_proj.bias": t(w), p + "mlp.c_fc.weight": t(f, w), p + "mlp.c_fc.bias": t(f),
               p + "mlp.c_proj.weight": t(w, f), p + "mlp.c_proj.bias": t(w)})
  return sd


@pytest.fixture(scope="module")
def sources(tmp_path_factory, tiny_cfg, tokenizer_file):
  root = tmp_path_factory.mktemp("stage1")
  clip = root / "open_clip_pytorch_model.bin"
  torch.save(_openclip_state_dict(tiny_cfg), clip)
  # A Qwen-7B-style LLM checkpoint: only the LLM keys and no `visual` in config.json.
  full = random_checkpoint.write_random_hf_checkpoint(root / "full", tiny_cfg, seed=7,
                                              tokenizer_file=tokenizer_file)
  llm_dir = root / "qwen_llm"
  llm_dir.mkdir()
  w = hf_io.HFWeights(full)
  keep = [k for k in w.keys() if not k.startswith("transformer.visual.")]
  hf_io.write_shards(llm_dir, [(k, w.shape(k), w.dtype(k)) for k in keep], w.read, shard_size=1 << 30)
  cj = json.loads((full / "config.json").read_text())
  del cj["visual"]
  (llm_dir / "config.json").write_text(json.dumps(cj))
  (llm_dir / "qwen.tiktoken").write_bytes(tokenizer_file.read_bytes())
  return clip, llm_dir


def test_stage1_from_openclip_and_qwen_llm(sources, tiny_cfg, tmp_path):
  clip, llm_dir = sources
  report = convert.convert_stage1(tmp_path / "init", tiny_cfg, openclip=clip, qwen_llm=llm_dir, seed=5)
  assert sorted(report["dropped"]) == ["logit_scale", "token_embedding.weight", "visual.class_embedding",
                                       "visual.ln_post.bias", "visual.ln_post.weight", "visual.proj"]
  assert set(report["fresh"]) == {e.ours for e in hf_layout.part_entries("adapter")}
  model, cfg, tok = load_checkpoint(tmp_path / "init")
  assert cfg == tiny_cfg and tok.name == "qwen.tiktoken"
  ours = {k: np.asarray(v) for k, v in flatten_dict(nnx.state(model).to_pure_dict()).items()}
  sd = torch.load(clip, weights_only=True)
  w = tiny_cfg.vision.width

  # MHA in_proj (q | k | v contiguous): q = x @ W[:w].T + b[:w] must equal our qkv[:, 0].
  in_w = sd["visual.transformer.resblocks.1.attn.in_proj_weight"].numpy()
  in_b = sd["visual.transformer.resblocks.1.attn.in_proj_bias"].numpy()
  for s in range(3):
    np.testing.assert_array_equal(ours["visual.blocks.attn.qkv.kernel"][1][:, s].reshape(w, w),
                                  in_w[s * w:(s + 1) * w].T)
    np.testing.assert_array_equal(ours["visual.blocks.attn.qkv.bias"][1][s].reshape(w),
                                  in_b[s * w:(s + 1) * w])
  # Position table: class row dropped, 4x4 grid resized to the config's 2x2 (PyTorch bicubic).
  table = sd["visual.positional_embedding"].numpy()[1:]
  np.testing.assert_array_equal(ours["visual.pos_embed"], np.asarray(resize_grid_table(table, 2)))
  want = torch.nn.functional.interpolate(torch.from_numpy(table).reshape(1, 4, 4, w).permute(0, 3, 1, 2),
                                         size=(2, 2), mode="bicubic", align_corners=False)
  want = want.permute(0, 2, 3, 1).reshape(4, w).numpy()
  np.testing.assert_allclose(ours["visual.pos_embed"], want, atol=1e-6)
  np.testing.assert_array_equal(ours["visual.patch_embed"],
                                sd["visual.conv1.weight"].numpy().transpose(2, 3, 1, 0))

  # LLM from the Qwen checkpoint, untouched.
  llm = hf_io.HFWeights(llm_dir)
  np.testing.assert_array_equal(ours["llm.lm_head"], llm.read("lm_head.weight").T)
  np.testing.assert_array_equal(ours["llm.blocks.mlp.w2.kernel"][1],
                                llm.read("transformer.h.1.mlp.w2.weight").T)

  # The adapter as QwenVL(cfg, rngs=nnx.Rngs(seed)) initialises it (built under jit here too: eager
  # construction differs in the last ulp and takes ~10 s to compile op by op).
  fresh = jax.jit(lambda: nnx.state(QwenVL(tiny_cfg, rngs=nnx.Rngs(5)).adapter).to_pure_dict())()
  for k, v in flatten_dict(fresh).items():
    np.testing.assert_array_equal(ours["adapter." + k], np.asarray(v), err_msg=k)


def test_stage1_single_source_and_mismatches(sources, tiny_cfg, tmp_path):
  clip, llm_dir = sources
  report = convert.convert_stage1(tmp_path / "vit_only", tiny_cfg, openclip=clip)
  assert report["from_qwen_llm"] == [] and "llm.embed" in report["fresh"]
  load_checkpoint(tmp_path / "vit_only")
  wider = dataclasses.replace(tiny_cfg, vision=dataclasses.replace(tiny_cfg.vision, width=48, heads=4),
                              llm=dataclasses.replace(tiny_cfg.llm, layers=3))
  with pytest.raises(hf_layout.LayoutError, match=r"model\.vision\.width"):
    convert.convert_stage1(tmp_path / "bad", wider, openclip=clip)
  with pytest.raises(ValueError, match=r"model\.llm\.layers"):
    convert.convert_stage1(tmp_path / "bad", wider, qwen_llm=llm_dir)
  assert not (tmp_path / "bad").exists()
