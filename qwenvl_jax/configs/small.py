"""A small Qwen-VL (~30M parameters) for the from-scratch experiments on a 2-core CPU.

Same architecture as the 7B model at reduced width/depth: 224px/14 -> 16x16 patches, an 8x8 learned
ViT position table (resized per input like the released 16x16 one), 64 queries.
"""

from qwenvl_jax.config import model_file_config, scaled_model_config


def model_config(vocab_size: int = 4096):
  return scaled_model_config(
      vocab_size,
      vision=dict(image_size=224, width=256, layers=6, heads=4, mlp_dim=1024, pos_grid=8,
                  global_every=4),
      adapter=dict(n_queries=64, heads=4),
      llm=dict(hidden=384, layers=6, heads=6, head_dim=64, mlp_dim=1024, seq_length=512))


def get_config(variant=None):
  del variant
  return model_file_config(model_config())
