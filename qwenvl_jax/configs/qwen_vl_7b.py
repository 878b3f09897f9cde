"""Qwen-VL (7B LLM + ViT-bigG/14), the released model (shared/reference).

Its numbers live once, as the defaults of the dataclasses in qwenvl_jax/config.py; this config adds
the training-time choices: bfloat16 compute over float32 master weights, full rematerialisation.
"""

import ml_collections

from qwenvl_jax.config import ModelConfig, model_config_to_dict, model_file_config


def model_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(model_config_to_dict(ModelConfig(dtype="bfloat16", remat="full")))


def get_config(variant=None):
  del variant
  return model_file_config(model_config())
