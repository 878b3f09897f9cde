"""A small Qwen-VL (~30M parameters) for the from-scratch experiments on a 2-core CPU.

Same architecture as the 7B model at reduced width/depth: 224px/14 -> 16x16 patches, a 4x4 learned
ViT position table (resized per input like the released 16x16 one), 64 queries.
"""

import ml_collections


def model_config(vocab_size: int = 4096) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      vision=dict(image_size=224, patch_size=14, width=256, layers=6, heads=4, mlp_dim=1024,
                  pos_grid=8, ln_eps=1e-6, window_patches=0, global_every=4),
      adapter=dict(n_queries=64, heads=4, ln_eps=1e-6),
      llm=dict(vocab_size=vocab_size, hidden=384, layers=6, heads=6, head_dim=64, mlp_dim=1024,
               rope_base=10000.0, rms_eps=1e-6, seq_length=512, use_dynamic_ntk=True,
               use_logn_attn=True),
      image_start_id=vocab_size - 3, image_end_id=vocab_size - 2, image_pad_id=vocab_size - 1,
      dtype="float32", param_dtype="float32", remat="none", scan_layers=True,
  ))


def get_config(variant=None):
  del variant
  return ml_collections.ConfigDict(dict(model=model_config(), mesh=dict(data=1, fsdp=-1, tensor=1)))
