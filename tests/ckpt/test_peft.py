"""PEFT interop: adapters exported here load with the `peft` library onto the PyTorch reference
model (released module names) and give our logits; adapters written by `peft` load here."""

import jax
import numpy as np
import pytest
import torch
from flax import nnx

from qwenvl_jax.ckpt import peft as peft_io
from qwenvl_jax.ckpt.orbax_io import load_checkpoint
from qwenvl_jax.testing.torch_reference import TorchQwenVL
from qwenvl_jax.model import lora

peft = pytest.importorskip("peft")

TOL = 1e-4
TARGETS = list(peft_io.RELEASED_TARGETS)


@nnx.jit
def _logits(model, ids, images):
  return model(ids, images)


def _inputs(cfg):
  rng = np.random.default_rng(0)
  span = cfg.image_span
  text = list(rng.integers(0, cfg.image_start_id, size=40))
  ids = np.asarray([text[:5] + span + text[5:]], np.int32)
  images = rng.random((1, 1, cfg.vision.image_size, cfg.vision.image_size, 3), np.float32)
  return ids, images


def _torch_logits(model, ids, images):
  with torch.no_grad():
    out = model(torch.from_numpy(ids).long(), torch.from_numpy(images))
  return out.numpy()


def test_target_names_resolve_to_the_released_linears():
  assert peft_io.target_paths(TARGETS) == [
      "llm.blocks.attn.qkv", "llm.blocks.attn.out", "llm.blocks.mlp.w1", "llm.blocks.mlp.w2"]
  assert peft_io.save_paths(peft_io.RELEASED_MODULES_TO_SAVE) == ["llm.embed", "llm.lm_head"]
  with pytest.raises(peft_io.AdapterError, match="c_atn"):
    peft_io.target_paths(["c_atn"])


def test_exported_adapter_loads_in_peft_with_the_same_logits(orbax_fp32, hf_fp32, tmp_path):
  model, cfg, _ = load_checkpoint(orbax_fp32)
  lora.apply_lora(model, peft_io.target_paths(TARGETS), rank=4, alpha=8.0, dropout=0.05,
                  rngs=nnx.Rngs(1))
  for path, m in lora.linear_modules(model).items():  # a trained-looking B (zero B is trivial)
    if m.lora_b is not None:
      m.lora_b.set_value(jax.random.normal(jax.random.key(len(path)), m.lora_b.shape) * 0.05)
  model.llm.embed.set_value(model.llm.embed.get_value() * 1.5)  # a modules_to_save change
  ids, images = _inputs(cfg)
  ours = np.asarray(_logits(model, ids, images))
  adapter = peft_io.export_adapter(model, cfg, tmp_path / "adapter", alpha=8.0, dropout=0.05,
                                   targets=TARGETS, modules_to_save=["wte"])
  base = TorchQwenVL.from_hf_dir(hf_fp32, cfg).eval()
  reference = _torch_logits(base, ids, images)
  assert np.abs(reference - ours).max() > 1e-2  # the adapter matters
  with_adapter = peft.PeftModel.from_pretrained(base, str(adapter)).eval()
  np.testing.assert_allclose(_torch_logits(with_adapter, ids, images), ours, atol=TOL, rtol=0)


def test_adapter_written_by_peft_imports_with_the_same_logits(orbax_fp32, hf_fp32, tmp_path):
  _, cfg, _ = load_checkpoint(orbax_fp32)
  torch.manual_seed(0)
  base = TorchQwenVL.from_hf_dir(hf_fp32, cfg).eval()
  config = peft.LoraConfig(r=4, lora_alpha=16, lora_dropout=0.05, target_modules=TARGETS,
                           modules_to_save=["lm_head"])
  tuned = peft.get_peft_model(base, config)
  with torch.no_grad():
    for name, p in tuned.named_parameters():
      if "lora_B" in name:
        p.normal_(0, 0.05)
      if "modules_to_save" in name:
        p.mul_(0.5)
  tuned.save_pretrained(str(tmp_path / "from_peft"))
  reference = _torch_logits(tuned.eval(), *_inputs(cfg))
  model, _, _ = load_checkpoint(orbax_fp32)
  peft_io.apply_adapter(model, cfg, tmp_path / "from_peft")
  np.testing.assert_allclose(np.asarray(_logits(model, *_inputs(cfg))), reference, atol=TOL, rtol=0)
