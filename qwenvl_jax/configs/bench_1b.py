"""A ~1.05B-parameter Qwen-VL for the JAX vs PyTorch CPU benchmarks (docs/benchmarks.md).

Same architecture as the 7B model at reduced size: a ViT-B/14-sized tower (768 wide, 12 blocks,
224px -> 16x16 patches), 64 adapter queries, and a 16-layer LLM of width 2048 (16 heads of 128,
SwiGLU 5504) over a 32k vocabulary. Parameters: ViT 86M, adapter 23M, LLM 943M (embed + lm_head
131M). fp32 training holds 16 bytes per parameter (weights, gradients, two Adam moments) plus
temporaries; on the 23.5 GiB benchmark host it trains one side at a time
(`benchmarks/train_vs_torch.py --config bench_1b --one-at-a-time`, docs/performance.md).
The variant sets the LLM depth: `bench_1b:8` is the same model with 8 LLM layers (0.64B).
"""

import ml_collections

from qwenvl_jax.config import model_file_config


def model_config(vocab_size: int = 32000, llm_layers: int = 16) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      vision=dict(image_size=224, patch_size=14, width=768, layers=12, heads=12, mlp_dim=3072,
                  pos_grid=16, ln_eps=1e-6, window_patches=0, global_every=4),
      adapter=dict(n_queries=64, heads=16, ln_eps=1e-6),
      llm=dict(vocab_size=vocab_size, hidden=2048, layers=llm_layers, heads=16, head_dim=128, mlp_dim=5504,
               rope_base=10000.0, rms_eps=1e-6, seq_length=2048, use_dynamic_ntk=True,
               use_logn_attn=True),
      image_start_id=vocab_size - 3, image_end_id=vocab_size - 2, image_pad_id=vocab_size - 1,
      dtype="float32", param_dtype="float32", remat="none", scan_layers=True,
      attention="auto", loss_chunk=256,
  ))


def get_config(variant=None):
  if variant is not None and not str(variant).isdigit():
    raise ValueError(f"configs/bench_1b.py: variant {variant!r} must be an LLM layer count, e.g. 8")
  model = model_config(llm_layers=int(variant) if variant else 16)
  return model_file_config(model)
