"""The LM-head-bound benchmark model: the released 151,936-word vocabulary on a tiny body.

LLM 2 layers x 128 wide (2 heads of 64, SwiGLU 256), ViT 2 x 64 (112 px -> 8x8 patches), 256 adapter
queries, the released image special ids. The LM head (128 x 151,936) is ~90% of the step's FLOPs, so
this shape measures the loss path: `python benchmarks/train_vs_torch.py`.
"""

from qwenvl_jax.config import model_file_config, scaled_model_config


def model_config():
  cfg = scaled_model_config(
      151936,
      vision=dict(image_size=112, width=64, layers=2, heads=4, mlp_dim=256, pos_grid=16),
      adapter=dict(n_queries=256, heads=4),
      llm=dict(hidden=128, layers=2, heads=2, head_dim=64, mlp_dim=256, seq_length=2048))
  cfg.image_start_id, cfg.image_end_id, cfg.image_pad_id = 151857, 151858, 151859
  return cfg


def get_config(variant=None):
  del variant
  return model_file_config(model_config())
