"""The loop in-process: NaN stop keeps the last good checkpoint, stage 1 -> 2 initialisation at a
higher resolution, workdir protection, checkpoints restored onto another mesh."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from qwenvl_jax.config import ConfigError, model_config_from_dict, train_config_from_dict
from qwenvl_jax.ckpt import checkpoint as ckpt_lib
from qwenvl_jax.train.setup import setup
from qwenvl_jax.train.batch import SyntheticIterator
from qwenvl_jax.train.loop import TrainingDiverged, WorkdirError, make_iterator, train
from qwenvl_jax.train.metrics import read_metrics
from tests.train.helpers import (initial_state, initial_train_state, mesh_of, stage_config, tiny_run,
                                 write_init_checkpoint)


class NanImagesAt:
  """Delegates to a synthetic iterator; the `at`-th batch has NaN pixels (a poisoned sample)."""

  def __init__(self, it, at):
    self.it, self.at, self.n = it, at, 0

  def __iter__(self):
    return self

  def __next__(self):
    batch = next(self.it)
    self.n += 1
    if self.n == self.at:
      # float32 = already-normalised pixels (the contract's uint8 cannot hold a NaN)
      batch["images"] = np.full(batch["images"].shape, np.nan, np.float32)
    return batch

  def get_state(self):
    return self.it.get_state()

  def set_state(self, state):
    self.it.set_state(state)


@pytest.mark.slow  # ~90 s; the non-finite stop itself is covered fast in test_safety.py
def test_nan_stop_then_next_stage_init_at_higher_resolution(tmp_path):
  s1 = stage_config(1, "steps=6", "checkpoint_every=2")
  tcfg, mcfg1 = train_config_from_dict(s1), model_config_from_dict(s1.model)
  init = write_init_checkpoint(s1, tmp_path / "init")
  it = NanImagesAt(SyntheticIterator(mcfg1, tcfg.batch_size, tcfg.seq_len), at=5)
  with pytest.raises(TrainingDiverged, match=r"step 5: loss is nan.*not applied.*all finite, is step 4"):
    train(s1, tmp_path / "s1", iterator=it, init=str(init))
  steps = read_metrics(tmp_path / "s1")
  assert [r["step"] for r in steps] == [1, 2, 3, 4, 5] and np.isnan(steps[-1]["loss"])
  assert all(np.isfinite(r["loss"]) for r in steps[:4])
  assert {"lr", "lr/vit_block_0", "grad_norm", "tokens_per_s", "images_per_s", "mfu"} <= set(steps[0])
  assert "lr/llm" not in steps[0]  # frozen in stage 1
  assert list((tmp_path / "s1" / "tb").glob("events.out.tfevents.*"))
  ckpt = ckpt_lib.Checkpointer(tmp_path / "s1", 2, 3)
  assert ckpt.latest_step() == 4  # the NaN step was not saved
  ckpt.close()
  with pytest.raises(WorkdirError, match="--resume"):
    train(s1, tmp_path / "s1")

  # Stage 2 (56 px) from the stage-1 run (28 px): same tensors (the ViT's position table is resized
  # on the fly); the model configs differ only in vision.image_size.
  s2 = stage_config(2, "steps=2")
  run1, run2 = tiny_run(s1), tiny_run(s2)
  abs1, abs2, mcfg2 = run1.abstract_state.model_state(), run2.abstract_state.model_state(), run2.model_cfg
  assert (mcfg1.vision.image_size, mcfg2.vision.image_size) == (28, 56)
  assert jax.tree.map(lambda x: x.shape, abs1) == jax.tree.map(lambda x: x.shape, abs2)
  logs = []
  loaded = ckpt_lib.load_params(tmp_path / "s1", abs2, mcfg2, log=logs.append)
  assert "['vision.image_size']" in logs[0]
  restored = ckpt_lib.Checkpointer(tmp_path / "s1", 2, 3)
  saved, _, data_state = restored.restore(4, abs1, run1.abstract_state.opt_state)
  restored.close()
  assert data_state == {"step": 4}
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(saved)):
    assert np.array_equal(np.asarray(a), np.asarray(b)) and np.isfinite(np.asarray(a)).all()
  result = train(s2, tmp_path / "s2", init=str(tmp_path / "s1"))
  assert result["status"] == "done" and len(result["losses"]) == 2
  assert json.loads((tmp_path / "s2" / "model_config.json").read_text())["vision"]["image_size"] == 56


def test_init_from_an_incompatible_model_names_the_field(tmp_path):
  mcfg = model_config_from_dict(stage_config(2).model)
  other = dataclasses.replace(mcfg, llm=dataclasses.replace(mcfg.llm, hidden=64, head_dim=16))
  with pytest.raises(ConfigError, match=r"model\.llm\.hidden: 64 in the checkpoint vs 32"):
    ckpt_lib.check_compatible(other, mcfg, "x")
  assert ckpt_lib.check_compatible(dataclasses.replace(mcfg, dtype="bfloat16"), mcfg, "x") == ["dtype"]


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")
def test_checkpoint_restores_onto_another_mesh(tmp_path):
  config = stage_config(2)
  run = setup(config, mesh_of((8, 1, 1)), workdir=tmp_path)
  state = initial_train_state(run)
  # Non-trivial moments, counters and step.
  state = state.replace(step=state.step + 7, opt_state=jax.tree.map(lambda x: x + 1, state.opt_state))
  run.save(7, state, {"step": 7}, force=True)
  run.checkpointer.close()
  other = setup(config, mesh_of((2, 2, 2)), workdir=tmp_path)
  restored, data = other.restore_latest()
  other.checkpointer.close()
  assert data == {"step": 7} and int(restored.step) == 7
  kernel = restored.params["llm"]["blocks"]["mlp"]["w1"]["kernel"]
  assert kernel.sharding == other.abstract_state.params["llm"]["blocks"]["mlp"]["w1"]["kernel"].sharding
  host_params, host_buffers = initial_state(run.model_cfg)
  for a, b in zip(jax.tree.leaves((restored.params, restored.buffers)),
                  jax.tree.leaves((host_params, host_buffers))):
    assert np.array_equal(np.asarray(a), b)
  for a, b, sh in zip(jax.tree.leaves(restored.opt_state), jax.tree.leaves(state.opt_state),
                      jax.tree.leaves(other.abstract_state.shardings().opt_state)):
    assert a.sharding == sh and np.array_equal(np.asarray(a), np.asarray(b))


def test_real_data_sources_go_through_the_pipeline_hook(tmp_path, monkeypatch):
  import qwenvl_jax.data.pipeline as pipeline
  config = stage_config(1, "data.source='jsonl'")
  tcfg, mcfg = train_config_from_dict(config), model_config_from_dict(config.model)
  monkeypatch.delattr(pipeline, "make_train_iterator", raising=False)
  with pytest.raises(ConfigError, match="make_train_iterator"):
    make_iterator(config, tcfg, mcfg, 0, 1)
  calls = []
  monkeypatch.setattr(pipeline, "make_train_iterator",
                      lambda cfg, i, n: calls.append((cfg.data.source, i, n)) or "it", raising=False)
  assert make_iterator(config, tcfg, mcfg, 1, 2) == "it" and calls == [("jsonl", 1, 2)]
