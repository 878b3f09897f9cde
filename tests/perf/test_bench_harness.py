"""The benchmark harness compares like with like: the JAX train step and the PyTorch reference
(torch autograd + torch.optim.AdamW on `TorchQwenVL`) give the same losses step after step on the
same random HF checkpoint and batch, so the step times in benchmarks/run_all.py time the same work.

The first loss checks the forward and the loss normalisation; the later ones check the gradients,
the clip, AdamW, the weight-decay mask and the ViT layer-wise LR decay (an error in any of them
moves the weights apart and the losses with them).
"""

import pathlib
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "benchmarks"))
import harness  # noqa: E402

from qwenvl_jax.ckpt import hf_layout  # noqa: E402
from qwenvl_jax.config import load_model_config  # noqa: E402
from qwenvl_jax.train import optim  # noqa: E402


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
  return harness.write_checkpoints(load_model_config("tiny"), tmp_path_factory.mktemp("bench"), "tiny")


def test_train_steps_agree_with_pytorch(tiny_ckpt):
  cfg = tiny_ckpt.cfg
  batch = harness.train_batch(cfg, rows=2, seq_len=32, seed=3)
  jax_side = harness.JaxTrainer(harness.load_jax(tiny_ckpt))
  torch_side = harness.TorchTrainer(harness.load_torch(tiny_ckpt))
  losses = [(jax_side.step(batch), torch_side.step(batch)) for _ in range(3)]
  ours, ref = np.array(losses).T
  np.testing.assert_allclose(ours, ref, rtol=2e-5)
  assert ours[2] < ours[0] - 0.1  # the updates are real (lr 1e-3 on one batch)


def test_torch_param_groups_follow_the_optax_rule(tiny_ckpt):
  """Each HF tensor's (LR factor, weight decay) equals what train/optim.py gives its JAX path."""
  cfg, o = tiny_ckpt.cfg, harness.BENCH_OPTIM
  model = harness.load_torch(tiny_ckpt)
  harness.TorchTrainer(model)  # sets requires_grad
  group_of = {}
  for g in harness._torch_param_groups(model, cfg, o):
    for p in g["params"]:
      group_of[id(p)] = (g["lr"] / o.peak_lr, g["weight_decay"])
  params = dict(model.named_parameters())
  checked = 0
  for entry in hf_layout.ENTRIES:
    for i, key in enumerate(entry.hf_keys(cfg)):
      if key not in params or not params[key].requires_grad:
        continue
      factor = optim.layer_factor(entry.ours, cfg.vision.layers, o.vit_lr_decay)
      want_factor = float(factor[i]) if isinstance(factor, np.ndarray) else factor
      want_wd = o.weight_decay if optim.decays(entry.ours) else 0.0
      got_factor, got_wd = group_of[id(params[key])]
      assert got_factor == pytest.approx(want_factor, rel=1e-9), key
      assert got_wd == want_wd, key
      checked += 1
  assert checked == sum(p.requires_grad for p in params.values())
