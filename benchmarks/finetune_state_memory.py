"""Static memory of the fine-tuning train states (configs/finetune.py lora / qlora / full).

Parameters, buffers (a Q-LoRA quantised base), trained parameter count and optimizer state, read from
the abstract state (no compile, no allocation), so it runs on any host:

  JAX_PLATFORMS=cpu python benchmarks/finetune_state_memory.py
"""

import jax
import numpy as np

from qwenvl_jax.config import (MeshConfig, load_config_dict, model_config_from_dict,
                               train_config_from_dict)
from qwenvl_jax.sharding import create_mesh
from qwenvl_jax.train import finetune

GIB = 2**30


def nbytes(tree) -> int:
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def main():
  mesh = create_mesh(MeshConfig(1, 1, 1), devices=jax.devices()[:1])
  for variant in ("qlora", "lora", "full"):
    config = load_config_dict(f"finetune:{variant}")
    train_cfg, model_cfg = train_config_from_dict(config), model_config_from_dict(config.model)
    _, setup, _ = finetune.build_setup(config, train_cfg, model_cfg, mesh)
    labels = dict(jax.tree_util.tree_leaves_with_path(setup.label_tree))
    trained = sum(int(np.prod(x.shape)) for path, x in jax.tree_util.tree_leaves_with_path(setup.abs_params)
                  if labels[path] == "train")
    print(f"{variant}: params {nbytes(setup.abs_params) / GIB:.2f} GiB, buffers (quantised base) "
          f"{nbytes(setup.abs_buffers) / GIB:.2f} GiB, trained {trained / 1e6:.1f} M, optimizer "
          f"{nbytes(setup.abs_opt) / GIB:.3f} GiB", flush=True)


if __name__ == "__main__":
  main()
