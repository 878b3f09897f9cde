"""Run configs as code (big_vision style): each module's `get_config(variant)` returns a ConfigDict.

  qwen_vl_7b        the released model (numbers: the dataclass defaults in qwenvl_jax/config.py)
  tiny, small       the same architecture scaled down (tests and demos; from-scratch experiments)
  bench_1b          a ~1B model for the JAX vs PyTorch CPU benchmarks (variant: LLM layers)
  stage1/2/3        the paper's three training stages (Table 8); variants full (default), tiny, small

`qwenvl_jax.config.load_config_dict` finds them by name (`stage2:tiny`) or by their old path
(`configs/stage2.py:tiny`), so they work from an installed wheel in any directory.
"""
