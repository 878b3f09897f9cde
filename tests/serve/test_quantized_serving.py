"""`--quantize int8` through the load path (`load_predictor(quantize=...)`): int8 kernels in place,
fewer weight bytes, and the serving engine decodes the quantised model like `chat` does."""

import dataclasses
import threading

import numpy as np

from qwenvl_jax.infer.api import load_predictor
from qwenvl_jax.infer.chat import chat
from qwenvl_jax.infer.generate import GREEDY
from qwenvl_jax.model.quant import QuantValues, weight_bytes
from qwenvl_jax.serve.engine import BatchEngine, Request


def test_int8_predictor_loads_and_serves(ckpt_dir):
  plain = load_predictor(ckpt_dir)
  pred = load_predictor(ckpt_dir, quantize="int8")
  from flax import nnx

  q = [v for _, v in nnx.iter_graph(pred.model) if isinstance(v, QuantValues)]
  assert q and all(np.asarray(v.get_value()).dtype == np.int8 for v in q)
  assert weight_bytes(pred.model) < weight_bytes(plain.model)
  want, _ = chat(pred, "hello", sampling=dataclasses.replace(GREEDY, max_new_tokens=10))
  ids, pics = pred.chat_prompt([], [{"text": "hello"}])
  got, done = [], threading.Event()

  def emit(new, reason):
    got.extend(new)
    if reason:
      done.set()

  engine = BatchEngine(pred.generator, slots=2, chunk=4)
  try:
    engine.submit(Request(ids, pics, 10, emit))
    assert done.wait(300)
  finally:
    engine.close()
  assert pred.tokenizer.decode(got, skip_special=False).strip() == want
