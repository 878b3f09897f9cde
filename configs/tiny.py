"""A tiny Qwen-VL for tests and demos: a forward pass takes well under a second on one CPU core.

Widths are multiples of 4 so every mesh in the tests ((8,1,1), (2,2,2), (1,2,4)) divides them.
The vocabulary is small (a SentencePiece / test vocabulary), special ids at its top.
"""

import ml_collections


def model_config(vocab_size: int = 512) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      vision=dict(image_size=56, patch_size=14, width=32, layers=2, heads=4, mlp_dim=64,
                  pos_grid=2, ln_eps=1e-6, window_patches=0, global_every=2),
      adapter=dict(n_queries=4, heads=4, ln_eps=1e-6),
      llm=dict(vocab_size=vocab_size, hidden=32, layers=2, heads=4, head_dim=8, mlp_dim=64,
               rope_base=10000.0, rms_eps=1e-6, seq_length=64, use_dynamic_ntk=True,
               use_logn_attn=True),
      image_start_id=vocab_size - 3, image_end_id=vocab_size - 2, image_pad_id=vocab_size - 1,
      dtype="float32", param_dtype="float32", remat="none", scan_layers=True,
  ))


def get_config(variant=None):
  del variant
  return ml_collections.ConfigDict(dict(model=model_config(), mesh=dict(data=1, fsdp=-1, tensor=1)))
