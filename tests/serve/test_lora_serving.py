"""A LoRA run served as trained: `serve`, `generate` and `chat` load its workdir with the factors
kept apart (default) or folded into the weights (`--merge-lora`). The engine decodes through the
factors (its tokens equal the run decoded alone, and differ from the base's), and merging gives the
same logits."""

import dataclasses
import json

import jax
import numpy as np
import pytest
from flax import nnx

from qwenvl_jax.ckpt import lora_run, peft
from qwenvl_jax.cli import main
from qwenvl_jax.infer.api import load_predictor
from qwenvl_jax.infer.chat import chat
from qwenvl_jax.infer.generate import GREEDY
from qwenvl_jax.model.lora import linear_modules
from qwenvl_jax.serve.engine import BatchEngine
from qwenvl_jax.testing.random_checkpoint import write_random_lora_run
from tests.serve.helpers import alone, burst

SETTINGS = lora_run.LoRAConfig(enabled=True, rank=4, alpha=8.0, dropout=0.0,
                               targets=peft.RELEASED_TARGETS)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, ckpt_dir):
  return write_random_lora_run(tmp_path_factory.mktemp("lora") / "run", ckpt_dir, SETTINGS)


def _has_factors(pred) -> bool:
  return any(linear.lora_a is not None for linear in linear_modules(pred.model).values())


def test_the_engine_decodes_a_lora_run_through_its_factors(run_dir, ckpt_dir):
  run, base = load_predictor(run_dir), load_predictor(ckpt_dir)
  assert _has_factors(run)
  prompts = [run.chat_prompt([], [{"text": t}])[0] for t in ("one", "two words", "three more words")]
  engine = BatchEngine(run.generator, slots=4, chunk=3)
  try:
    got = burst(engine, prompts, max_tokens=8)
  finally:
    engine.close()
  assert got == alone(run.generator, prompts, max_tokens=8)
  assert got != alone(base.generator, prompts, max_tokens=8)  # the factors change the answers

  merged = load_predictor(run_dir, merge_lora=True)
  assert not _has_factors(merged)
  ids = np.asarray(prompts[:1], np.int32)
  logits = lambda pred: np.asarray(nnx.jit(lambda m, x: m(x))(pred.model, jax.numpy.asarray(ids)))
  np.testing.assert_allclose(logits(merged), logits(run), atol=1e-5, rtol=0)


def test_merge_lora_refuses_a_checkpoint_that_is_no_lora_run(ckpt_dir, capsys):
  assert main(["serve", "--ckpt", str(ckpt_dir), "--merge-lora"]) == 2
  err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
  assert len(err) == 1 and "is not a LoRA run" in err[0], err


def test_generate_merge_lora_answers_as_the_merged_run_does(run_dir, tmp_path):
  src, dst = tmp_path / "requests.jsonl", tmp_path / "answers.jsonl"
  src.write_text('{"id": "a", "prompt": "two words"}\n')
  assert main(["generate", "--ckpt", str(run_dir), "--merge-lora", "--input", str(src),
               "--output", str(dst), "--max-tokens", "8", "--no-progress"]) == 0
  merged = load_predictor(run_dir, merge_lora=True)
  want = chat(merged, "two words", sampling=dataclasses.replace(GREEDY, max_new_tokens=8))[0]
  assert json.loads(dst.read_text())["answer"] == want
