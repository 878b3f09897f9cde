"""Checkpoints: the released HF/PyTorch layout <-> our Orbax checkpoints.

  hf_layout    the one parameter table (HF key, shape transform) + config.json <-> ModelConfig
  hf_io        safetensors / pytorch_model*.bin readers and a streaming safetensors writer
  checkpoint   our layouts (checkpoint dir, training workdir), the one resolver, model_config.json,
               the compatibility check, the training run's Checkpointer, --init loading
  orbax_io     save_checkpoint / load_checkpoint (onto any mesh), array reads, streaming Orbax writes
  convert      convert_hf_to_orbax, convert_orbax_to_hf, convert_stage1 (OpenCLIP + Qwen-7B)
  atomic       temporary-directory-then-rename writes

PyTorch is imported only lazily, by the .bin readers / writers. Random checkpoints in the released
layout and the PyTorch reference forward live in `qwenvl_jax.testing`.
"""
