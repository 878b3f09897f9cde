"""Static memory of the fine-tuning train states (configs/finetune.py lora / qlora / full).

Parameters, buffers (a Q-LoRA quantised base), trained parameter count and optimizer state, read from
the abstract state (no compile, no allocation), so it runs on any host:

  JAX_PLATFORMS=cpu python benchmarks/finetune_state_memory.py
"""

import jax
import numpy as np

from qwenvl_jax.config import MeshConfig, load_config_dict
from qwenvl_jax.sharding import create_mesh
from qwenvl_jax.train.setup import setup

GIB = 2**30


def nbytes(tree) -> int:
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def main():
  mesh = create_mesh(MeshConfig(1, 1, 1), devices=jax.devices()[:1])
  for variant in ("qlora", "lora", "full"):
    run = setup(load_config_dict(f"finetune:{variant}"), mesh)
    state = run.abstract_state
    labels = dict(jax.tree_util.tree_leaves_with_path(run.label_tree))
    trained = sum(int(np.prod(x.shape)) for path, x in jax.tree_util.tree_leaves_with_path(state.params)
                  if labels[path] == "train")
    print(f"{variant}: params {nbytes(state.params) / GIB:.2f} GiB, buffers (quantised base) "
          f"{nbytes(state.buffers) / GIB:.2f} GiB, trained {trained / 1e6:.1f} M, optimizer "
          f"{nbytes(state.opt_state) / GIB:.3f} GiB", flush=True)


if __name__ == "__main__":
  main()
