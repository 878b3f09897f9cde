"""A tiny Qwen-VL for tests and demos: a forward pass takes well under a second on one CPU core.

Widths are multiples of 4 so every mesh in the tests ((8,1,1), (2,2,2), (1,2,4)) divides them.
The vocabulary is small (a SentencePiece / test vocabulary), special ids at its top.
"""

from qwenvl_jax.config import model_file_config, scaled_model_config


def model_config(vocab_size: int = 512):
  return scaled_model_config(
      vocab_size,
      vision=dict(image_size=56, width=32, layers=2, heads=4, mlp_dim=64, pos_grid=2, global_every=2),
      adapter=dict(n_queries=4, heads=4),
      llm=dict(hidden=32, layers=2, heads=4, head_dim=8, mlp_dim=64, seq_length=64))


def get_config(variant=None):
  del variant
  return model_file_config(model_config())
