"""Qwen-VL (7B LLM + ViT-bigG/14), the released model's exact values (see shared/reference)."""

import ml_collections


def model_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      vision=dict(image_size=448, patch_size=14, width=1664, layers=48, heads=16, mlp_dim=8192,
                  pos_grid=16, ln_eps=1e-6, window_patches=0, global_every=4),
      adapter=dict(n_queries=256, heads=32, ln_eps=1e-6),
      llm=dict(vocab_size=151936, hidden=4096, layers=32, heads=32, head_dim=128, mlp_dim=11008,
               rope_base=10000.0, rms_eps=1e-6, seq_length=2048, use_dynamic_ntk=True,
               use_logn_attn=True),
      image_start_id=151857, image_end_id=151858, image_pad_id=151859,
      dtype="bfloat16", param_dtype="float32", remat="full", scan_layers=True,
      attention="auto", loss_chunk=256,
  ))


def get_config(variant=None):
  del variant
  return ml_collections.ConfigDict(dict(model=model_config(),
                                        mesh=dict(data=1, fsdp=-1, tensor=1)))
