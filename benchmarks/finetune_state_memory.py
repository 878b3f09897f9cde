"""Static memory of the fine-tuning train states (configs/finetune.py lora / qlora / full): parameters,
buffers (a Q-LoRA quantised base), trained parameter count and optimizer state, from the abstract
state (no compile). Run: PYTHONPATH=. JAX_PLATFORMS=cpu python benchmarks/finetune_state_memory.py"""
import jax, numpy as np
from qwenvl_jax.config import *
from qwenvl_jax.sharding import create_mesh
from qwenvl_jax.train import finetune, optim
def nbytes(tree):
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))
mesh = create_mesh(MeshConfig(1, 1, 1), devices=jax.devices()[:1])
for v in ("qlora", "lora", "full"):
  config = load_config_dict(f"configs/finetune.py:{v}")
  tcfg, mcfg = train_config_from_dict(config), model_config_from_dict(config.model)
  tcfg2, setup, lcfg = finetune.build_setup(config, tcfg, mcfg, mesh)
  labels = dict(jax.tree_util.tree_leaves_with_path(setup.label_tree))
  trained = sum(int(np.prod(x.shape)) for p, x in jax.tree_util.tree_leaves_with_path(setup.abs_params) if labels[p] == "train")
  print(f"{v}: params {nbytes(setup.abs_params)/2**30:.2f} GiB, buffers (quantised base) {nbytes(setup.abs_buffers)/2**30:.2f} GiB, "
        f"trained {trained/1e6:.1f} M, optimizer {nbytes(setup.abs_opt)/2**30:.3f} GiB", flush=True)
