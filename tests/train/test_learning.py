"""The tiny stage-2 config learns: the loss on one fixed synthetic batch drops below 10% of its start
within 200 steps (the text is a fixed bigram chain whose first token names the image's class, so
getting there needs both the LLM and the vision path)."""

import pytest

from qwenvl_jax.config import model_config_from_dict, train_config_from_dict
from qwenvl_jax.train.batch import SyntheticIterator
from qwenvl_jax.train.loop import train
from qwenvl_jax.train.metrics import read_metrics
from tests.train.helpers import stage_config, write_init_checkpoint


@pytest.mark.slow
def test_tiny_config_learns_a_fixed_batch(tmp_path):
  config = stage_config(2, "steps=200", "optim.peak_lr=3e-3", "optim.warmup_steps=10",
                        "checkpoint_every=200")
  tcfg, mcfg = train_config_from_dict(config), model_config_from_dict(config.model)
  it = SyntheticIterator(mcfg, tcfg.batch_size, tcfg.seq_len, max_images=2, packed=True, fixed=True)
  init = write_init_checkpoint(config, tmp_path / "init")
  result = train(config, tmp_path / "run", iterator=it, init=str(init))
  losses = [r["loss"] for r in read_metrics(tmp_path / "run")]
  assert len(losses) == 200 and losses == result["losses"]
  assert losses[-1] < 0.1 * losses[0], (losses[0], losses[-1])
