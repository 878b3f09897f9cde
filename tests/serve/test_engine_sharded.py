"""The batching engine on a tensor-parallel mesh (8 fake CPU devices: data 4 x tensor 2) decodes the
same greedy tokens as on one device, for several concurrent requests, and for their next turns,
which reuse the first turns' prompts and answers from the prefix cache."""

import threading

import pytest

from qwenvl_jax.config import MeshConfig
from qwenvl_jax.infer.api import load_predictor
from qwenvl_jax.serve.engine import BatchEngine, Request
from qwenvl_jax.sharding import create_mesh


def _burst(engine, prompts, n):
  outs = [[] for _ in prompts]
  events = [threading.Event() for _ in prompts]
  for k, ids in enumerate(prompts):

    def emit(new, reason, k=k):
      outs[k].extend(new)
      if reason:
        events[k].set()

    engine.submit(Request(ids, (), n, emit))
  assert all(e.wait(300) for e in events)
  return outs


def _run(pred, texts, n=20):
  """-> (first turns' tokens, second turns' tokens, engine stats). (Second turns stay within the
  tiny model's 64-token seq_length: a longer one gets another NTK alpha and reuses nothing.)"""
  engine = BatchEngine(pred.generator, slots=4, chunk=4)
  try:
    first = [(pred.tokenizer.encode(text) * 16)[:16] for text in texts]
    answers = _burst(engine, first, n)
    second = [ids + answer + ids[-4:] for ids, answer in zip(first, answers)]
    assert max(map(len, second)) <= pred.cfg.llm.seq_length
    return answers, _burst(engine, second, n), engine.stats
  finally:
    engine.close()


@pytest.mark.slow  # minutes on 2 cores; sharded generation is checked by default in tests/infer
def test_tensor_parallel_engine_matches_single_device(ckpt_dir):
  texts = ["one", "two words", "three more words"]
  *want, _ = _run(load_predictor(ckpt_dir), texts)
  mesh = create_mesh(MeshConfig(data=-1, fsdp=1, tensor=2))
  *got, stats = _run(load_predictor(ckpt_dir, mesh=mesh), texts)
  assert got == want
  # 16 + 20 tokens, then 40 + 20: each turn's answer fills one more block, stored from the ring;
  # each second turn reuses its first prompt (block 0, stored by its prefill) and that block 1
  assert stats.answer_blocks == 2 * len(texts) and stats.prefix_tokens == 32 * len(texts)
