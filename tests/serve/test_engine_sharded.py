"""The batching engine on a tensor-parallel mesh (8 fake CPU devices: data 4 x tensor 2) decodes the
same greedy tokens as on one device, for several concurrent requests."""

import threading

import pytest

from qwenvl_jax.config import MeshConfig
from qwenvl_jax.infer.api import load_predictor
from qwenvl_jax.serve.engine import BatchEngine, Request
from qwenvl_jax.sharding import create_mesh


def _run(pred, prompts, n=8):
  engine = BatchEngine(pred.generator, slots=4, chunk=4)
  outs = [[] for _ in prompts]
  events = [threading.Event() for _ in prompts]
  try:
    for k, text in enumerate(prompts):
      ids, pics = pred.chat_prompt([], [{"text": text}])

      def emit(new, reason, k=k):
        outs[k].extend(new)
        if reason:
          events[k].set()

      engine.submit(Request(ids, pics, n, emit))
    assert all(e.wait(300) for e in events)
  finally:
    engine.close()
  return outs


@pytest.mark.slow  # minutes on 2 cores; sharded generation is checked by default in tests/infer
def test_tensor_parallel_engine_matches_single_device(ckpt_dir):
  prompts = ["one", "two words", "three more words"]
  want = _run(load_predictor(ckpt_dir), prompts)
  mesh = create_mesh(MeshConfig(data=-1, fsdp=1, tensor=2))
  assert _run(load_predictor(ckpt_dir, mesh=mesh), prompts) == want
