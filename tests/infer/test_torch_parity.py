"""Greedy generation equals the independent PyTorch reference on the same random tiny weights.

The JAX side loads the HF directory through `load_model` (converted to Orbax on the way); the
PyTorch side (`testing/torch_reference.py`) loads the same files directly. 32 new tokens, token ids equal.
Prompts cross the tiny model's training length (64) so log-n scaling and dynamic NTK are exercised.
"""

import numpy as np
import pytest

from qwenvl_jax.data.preprocess import normalize
from qwenvl_jax.infer.api import load_predictor
from qwenvl_jax.infer.generate import SamplingConfig

torch_model = pytest.importorskip("qwenvl_jax.testing.torch_reference")

N_NEW = 32


@pytest.fixture(scope="module")
def both(hf_dir):
  return load_predictor(hf_dir), torch_model.TorchQwenVL.from_hf_dir(hf_dir)


def _prompt(pred, picture_paths, n_words):
  words = ("the red dog sits on a bench near the blue car in the street " * 8).split()
  segments = [{"image": picture_paths[0]}, {"text": " ".join(words[:n_words])},
              {"image": picture_paths[1]}, {"text": " what is it?"}]
  ids, sources = pred.encode(segments)
  return ids, [pred.image_array(s) for s in sources]


def _torch_greedy(ref, ids, pics, stop):
  # The predictor's pixels are uint8 (normalised on the device); the reference takes the released
  # pipeline's host-normalised floats.
  pics = np.stack([normalize(p) for p in pics])
  out = ref.greedy(np.asarray([ids]), pics[None], max_new_tokens=N_NEW, stop_ids=stop)
  new = out[0, len(ids):].tolist()
  return new[: next((i for i, t in enumerate(new) if t in stop), len(new))]


@pytest.mark.parametrize("n_words", [6, 40])  # alpha 1 with log-n during decoding; alpha 3
def test_greedy_equals_pytorch_reference(both, tok, picture_paths, n_words):
  pred, ref = both
  ids, pics = _prompt(pred, picture_paths, n_words)
  stop = [tok.special("<|extra_7|>")]  # a stop the random model will not hit: all 32 tokens
  ours = pred.generator.generate_ids([ids], [pics], SamplingConfig(temperature=0, max_new_tokens=N_NEW),
                                     stop_ids=stop)[0]
  want = _torch_greedy(ref, ids, pics, stop)
  assert len(want) == N_NEW and ours == want
  if n_words == 40:
    assert ref.ntk_alpha(len(ids)) == 3.0


def test_left_padded_batch_equals_unpadded_reference_runs(both, tok, picture_paths):
  pred, ref = both
  prompts = [_prompt(pred, picture_paths, n) for n in (2, 10)]
  stop = [tok.im_end_id, tok.eod_id]
  ours = pred.generator.generate_ids([p[0] for p in prompts], [p[1] for p in prompts],
                                     SamplingConfig(temperature=0, max_new_tokens=N_NEW),
                                     stop_ids=stop)
  # NTK alpha is per batch (from its longest prompt) as in the reference; both are 1 here.
  assert all(ref.ntk_alpha(len(p[0])) == 1.0 for p in prompts)
  assert ours == [_torch_greedy(ref, p[0], p[1], stop) for p in prompts]
