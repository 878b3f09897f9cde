"""The batch contract: the synthetic source follows it, host shards tile the global batch, and
malformed batches fail with the field's name."""

import numpy as np
import pytest

from qwenvl_jax.config import load_model_config
from qwenvl_jax.train.batch import BatchError, SyntheticIterator, make_synthetic_batch, validate_batch


@pytest.fixture(scope="module")
def cfg():
  return load_model_config("tiny")


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("max_images", [0, 1, 3])
def test_synthetic_batches_follow_the_contract(cfg, packed, max_images):
  b = make_synthetic_batch(cfg, 6, 64, max_images=max_images, packed=packed, step=2)
  validate_batch(b, 6, 64, cfg, check_spans=True)  # also checks every <img> span holds Q tokens
  assert ("images" in b) == (max_images > 0)
  seg, pos = b["segment_ids"], b["positions"]
  for r in range(6):
    for s in set(seg[r]) - {0}:
      np.testing.assert_array_equal(pos[r][seg[r] == s], np.arange((seg[r] == s).sum()))
  assert not b["loss_mask"][seg == 0].any()
  if packed:
    assert seg.max() > 1


def test_hosts_tile_the_global_batch(cfg):
  whole = next(SyntheticIterator(cfg, 8, 32))
  parts = [next(SyntheticIterator(cfg, 8, 32, process_index=i, process_count=2)) for i in range(2)]
  for k in whole:
    np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), whole[k])


def test_iterator_state_round_trip(cfg):
  it = SyntheticIterator(cfg, 4, 32)
  next(it), next(it)
  state = it.get_state()
  expected = next(it)
  other = SyntheticIterator(cfg, 4, 32)
  other.set_state(state)
  for k, v in next(other).items():
    np.testing.assert_array_equal(v, expected[k])


def test_malformed_batches_name_the_field(cfg):
  b = make_synthetic_batch(cfg, 2, 32)
  with pytest.raises(BatchError, match=r"missing \['tokens'\]"):
    validate_batch({k: v for k, v in b.items() if k != "tokens"}, 2, 32)
  with pytest.raises(BatchError, match=r"batch\['segment_ids'\] has dtype int64"):
    validate_batch({**b, "segment_ids": b["segment_ids"].astype(np.int64)}, 2, 32)
  with pytest.raises(BatchError, match="28px, the model expects 56px"):
    validate_batch(make_synthetic_batch(cfg, 2, 32, image_size=28), 2, 32, cfg)
  with pytest.raises(BatchError, match="both 'images' and 'num_images'"):
    validate_batch({k: v for k, v in b.items() if k != "num_images"}, 2, 32)
