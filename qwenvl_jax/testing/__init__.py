"""Test and benchmark support shipped with the package (gemma's gm/testing pattern); never imported
by the product code.

  random_checkpoint  random weights written in the released HF layout (config.json, shards, index)
  torch_reference    an independent PyTorch forward of the released model (parity oracle, benchmarks)
"""
