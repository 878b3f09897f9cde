"""The batching engine on a tensor-parallel mesh (8 fake CPU devices: data 4 x tensor 2) decodes the
same greedy tokens as on one device, for several concurrent requests, for their next turns, which
reuse the first turns' prompts and answers from the prefix cache, and across a ring shrink and a
row moved down."""

import pytest

from qwenvl_jax.config import MeshConfig
from qwenvl_jax.infer.api import load_predictor
from qwenvl_jax.serve.engine import BatchEngine
from qwenvl_jax.sharding import create_mesh
from tests.serve.helpers import burst


def _run(pred, texts, n=20):
  """-> (first turns' tokens, second turns' tokens, a mixed burst's tokens, engine stats). (Second
  turns stay within the tiny model's 64-token seq_length: a longer one gets another NTK alpha and
  reuses nothing.) The mixed burst: a 112-token prompt (bucket 128 + 4 tokens: a 256-column ring)
  ends first, so the ring shrinks to 128 columns and the row in slot 2 moves to slot 0."""
  engine = BatchEngine(pred.generator, slots=4, chunk=4)
  try:
    first = [(pred.tokenizer.encode(text) * 16)[:16] for text in texts]
    answers = burst(engine, first, max_tokens=n)
    second = [ids + answer + ids[-4:] for ids, answer in zip(first, answers)]
    assert max(map(len, second)) <= pred.cfg.llm.seq_length
    got_second = burst(engine, second, max_tokens=n)
    mixed = burst(engine, [first[0] * 7, *first[1:]], max_tokens=[4, n, n])
  finally:
    engine.close()  # (after the last chunk's answer blocks are stored)
  return answers, got_second, mixed, engine.stats


@pytest.mark.slow  # minutes on 2 cores; sharded generation is checked by default in tests/infer
def test_tensor_parallel_engine_matches_single_device(ckpt_dir):
  texts = ["one", "two words", "three more words"]
  *want, _ = _run(load_predictor(ckpt_dir), texts)
  mesh = create_mesh(MeshConfig(data=-1, fsdp=1, tensor=2))
  *got, stats = _run(load_predictor(ckpt_dir, mesh=mesh), texts)
  assert got == want
  # 16 + 20 tokens, then 40 + 20: each turn's answer fills one more block, stored from the ring;
  # each second turn reuses its first prompt (block 0, stored by its prefill) and that block 1.
  # (The mixed burst reuses nothing and stores no new answer block: its short rows repeat the
  # first turns, its long row fills no block past its prompt's.)
  assert stats.answer_blocks == 2 * len(texts) and stats.prefix_tokens == 32 * len(texts)
  assert (stats.ring_shrinks, stats.rows_moved) == (1, 1)
