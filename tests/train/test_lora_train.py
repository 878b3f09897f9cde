"""LoRA / Q-LoRA training through the real loop: only the LoRA factors (and modules_to_save) change,
the optimizer holds state for those alone, a resumed run is bit-exact, and the exports agree."""

import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from qwenvl_jax.ckpt import lora_run
from qwenvl_jax.config import apply_overrides, load_config_dict
from qwenvl_jax.train import optim
from qwenvl_jax.train.loop import train
from qwenvl_jax.train.setup import setup
from tests.train.helpers import flat, stage_config, write_init_checkpoint

pytestmark = pytest.mark.slow
OVERRIDES = ["steps=4", "checkpoint_every=2", "batch_size=16", "grad_accum=2", "seq_len=48"]


def _config(variant, *extra):
  return apply_overrides(load_config_dict(f"configs/finetune.py:{variant}"), OVERRIDES + list(extra))


def _restore(workdir, step):
  with ocp.StandardCheckpointer() as c:
    return flat(c.restore(workdir / "checkpoints" / str(step) / "params"))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  d = tmp_path_factory.mktemp("lora_base") / "init"
  write_init_checkpoint(stage_config(3), d)
  with ocp.StandardCheckpointer() as c:
    return d, flat(c.restore(d / "checkpoints" / "0" / "params"))


def test_optimizer_state_holds_only_the_trainable_tensors():
  config = _config("tiny_lora", "lora.modules_to_save=('lm_head',)")
  abstract = setup(config).abstract_state
  shapes = {optim.path_str(p): x.shape for p, x in jax.tree_util.tree_leaves_with_path(abstract.params)}
  trained = {k: v for k, v in shapes.items() if k.endswith((".lora_a", ".lora_b")) or k == "llm.lm_head"}
  n_trained = sum(int(np.prod(v)) for v in trained.values())
  n_all = sum(int(np.prod(v)) for v in shapes.values())
  assert len(trained) == 9 and n_trained < n_all / 3  # 4 layers x (A, B) + lm_head
  # Adam's two moments for the trained tensors; the rest is scalar counters.
  assert 2 * n_trained <= optim.count_state(abstract.opt_state) <= 2 * n_trained + 8


def test_lora_run_changes_only_lora_and_modules_to_save_and_resumes_exactly(base, tmp_path):
  init_dir, base_params = base
  config = _config("tiny_lora", "lora.modules_to_save=('lm_head',)")
  workdir = tmp_path / "run"
  result = train(config, workdir, init=str(init_dir))
  assert result["status"] == "done" and np.all(np.isfinite(result["losses"]))
  final = _restore(workdir, 4)
  changed = {k for k, v in final.items() if k in base_params and not np.array_equal(v, base_params[k])}
  assert changed == {"llm.lm_head"}
  lora_b = [k for k in final if k.endswith(".lora_b")]
  assert len(lora_b) == 4 and all(np.abs(final[k]).max() > 0 for k in lora_b)  # B left zero
  # Resume: drop the last checkpoint and redo steps 3-4 from step 2.
  shutil.rmtree(workdir / "checkpoints" / "4")
  again = train(config, workdir, resume=True)
  assert again["losses"] == result["losses"][2:]
  resumed = _restore(workdir, 4)
  for k in final:
    np.testing.assert_array_equal(resumed[k], final[k], err_msg=k)
  # Chat / eval load the run unmerged and merged: same logits.
  ids = np.asarray([[5, 9, 17, 3, 8, 250, 11, 4]], np.int32)
  unmerged, *_ = lora_run.load_finetuned(workdir)
  merged, *_ = lora_run.load_finetuned(workdir, merge=True)
  np.testing.assert_allclose(np.asarray(merged(ids)), np.asarray(unmerged(ids)), atol=1e-5, rtol=0)


def test_qlora_run_keeps_the_quantised_base_frozen(base, tmp_path):
  init_dir, base_params = base
  workdir = tmp_path / "qrun"
  result = train(_config("tiny_qlora", "steps=2"), workdir, init=str(init_dir))
  assert result["status"] == "done" and np.all(np.isfinite(result["losses"]))
  first = _restore(workdir, 2)
  model, *_ = lora_run.load_finetuned(workdir)
  w1 = model.llm.blocks.mlp.w1
  assert w1.kernel is None and w1.kernel_q.get_value().dtype == jax.numpy.uint8
  # The stored 4-bit base is the quantisation of the initial weights (nothing trained it).
  from qwenvl_jax.model import quant
  values, _ = quant.quantize_array(base_params["llm.blocks.mlp.w1.kernel"], w1.quant)
  np.testing.assert_array_equal(first["llm.blocks.mlp.w1.kernel_q"], np.asarray(values))
