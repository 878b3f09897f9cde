"""The grain pipeline as the training loop's data source (`pipeline.make_train_iterator`): batches in the
`train/batch.py` contract, determinism, exact resume, disjoint process shards, clear config errors, and
(slow) real training runs through `train.loop.train`."""

import json

import numpy as np
import pytest
from PIL import Image

from qwenvl_jax.config import ConfigError, apply_overrides, load_config_dict, model_config_from_dict
from qwenvl_jax.data import pipeline, sources, synth
from qwenvl_jax.text.tokenizer import load_tokenizer
from qwenvl_jax.train.batch import validate_batch
from tests.data.helpers import assert_same, take


@pytest.fixture(scope="module")
def shapes_jsonl(tmp_path_factory):
  path = tmp_path_factory.mktemp("shapes") / "shapes.jsonl"
  sources.write_raw(synth.generate("shapes", 24, seed=0, size=64), path)
  return str(path)


@pytest.fixture(scope="module")
def numbered_jsonl(tmp_path_factory):
  """12 records whose captions name them ("item 7"), so a batch row tells which record it came from."""
  d = tmp_path_factory.mktemp("numbered")
  Image.new("RGB", (32, 32), (200, 30, 30)).save(d / "red.png")
  with (d / "items.jsonl").open("w") as f:
    for i in range(12):
      f.write(json.dumps({"id": f"r{i}", "image": "red.png", "width": 32, "height": 32,
                          "caption": f"item {i}"}) + "\n")
  return str(d / "items.jsonl")


def stage_config(stage, vocab, paths, *overrides, variant="tiny"):
  """A stage config reading `paths` with the byte vocabulary; the model's image ids are moved to the
  tokenizer's (the tiny model puts them at the top of its 512 ids, the byte vocabulary has 473)."""
  tok = load_tokenizer(vocab)
  config = load_config_dict(f"configs/stage{stage}.py:{variant}")
  base = ["data.source=jsonl", f"data.paths={tuple(paths)!r}", f"data.tokenizer={vocab}",
          "seq_len=128", "batch_size=4", "grad_accum=1"]
  base += [f"model.{k}={v}" for k, v in tok.model_config_ids().items()]
  return apply_overrides(config, base + list(overrides))


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_batches_follow_the_training_contract(byte_vocab, shapes_jsonl, tmp_path, stage):
  paths = [shapes_jsonl]
  if stage == 3:  # ChatML records
    chat = tmp_path / "chat.jsonl"
    from qwenvl_jax.data.chat_format import to_conversation
    with chat.open("w") as f:
      for rec in sources.read_raw(shapes_jsonl):
        f.write(json.dumps(to_conversation(rec, rec["image"])) + "\n")
    paths = [str(chat)]
  config = stage_config(stage, byte_vocab, paths, "seq_len=1024" if stage == 3 else "seq_len=256")
  model_cfg = model_config_from_dict(config.model)
  it = pipeline.make_train_iterator(config, 0, 1)
  batch = next(it)
  validate_batch(batch, 4, config.seq_len, model_cfg, check_spans=True)
  assert batch["images"].shape == (4, config.data.max_images, model_cfg.vision.image_size,
                                   model_cfg.vision.image_size, 3)
  assert batch["num_images"].min() >= 1 and batch["loss_mask"].any(axis=1).all()
  if stage == 2:  # packed: several samples in a row
    assert batch["segment_ids"].max() > 1


def test_same_seed_same_batches(byte_vocab, shapes_jsonl):
  a = take(pipeline.make_train_iterator(stage_config(2, byte_vocab, [shapes_jsonl]), 0, 1), 3)
  b = take(pipeline.make_train_iterator(stage_config(2, byte_vocab, [shapes_jsonl]), 0, 1), 3)
  c = take(pipeline.make_train_iterator(stage_config(2, byte_vocab, [shapes_jsonl], "seed=5"), 0, 1),
           3)
  assert_same(a, b)
  assert any(not np.array_equal(x["tokens"], y["tokens"]) for x, y in zip(a, c))


@pytest.mark.parametrize("stage", [1, 2])  # unpacked, packed
def test_restored_state_gives_the_next_batch(byte_vocab, shapes_jsonl, stage):
  config = stage_config(stage, byte_vocab, [shapes_jsonl])
  it = pipeline.make_train_iterator(config, 0, 1)
  take(it, 7)  # crosses the 24-record epoch boundary when unpacked
  state = json.loads(json.dumps(it.get_state()))  # what the checkpoint stores
  want = take(it, 2)
  resumed = pipeline.make_train_iterator(config, 0, 1)
  resumed.set_state(state)
  assert_same(take(resumed, 2), want)


def _captions(batches, tok):
  """The record number of every row ("item N" is the caption the loss is on)."""
  out = []
  for b in batches:
    for row, mask in zip(b["tokens"], b["loss_mask"]):
      text = tok.decode(row[mask].tolist(), skip_special=True).strip()
      out.append(int(text.removeprefix("item ")))
  return out


def test_process_shards_are_disjoint_and_cover_the_epoch(byte_vocab, numbered_jsonl):
  tok = load_tokenizer(byte_vocab)
  config = stage_config(1, byte_vocab, [numbered_jsonl], "seq_len=64")
  config.data.num_epochs = 1
  single = _captions(list(pipeline.make_train_iterator(config, 0, 1)), tok)
  per_process = [_captions(list(pipeline.make_train_iterator(config, i, 2)), tok) for i in range(2)]
  assert sorted(single) == list(range(12))
  assert [len(p) for p in per_process] == [6, 6]  # batch_size / 2 rows per step, 3 steps each
  assert not set(per_process[0]) & set(per_process[1])
  assert sorted(per_process[0] + per_process[1]) == sorted(single)
  # record i goes to process i % 2
  assert {i % 2 for i in per_process[0]} == {0} and {i % 2 for i in per_process[1]} == {1}


@pytest.mark.parametrize("overrides, field", [
    (["data.source=tfrecord"], "data.source"),
    (["data.paths=()"], "data.paths"),
    (["data.paths=('missing.jsonl',)"], "data.paths"),
    (["data.paths=('x.array_record',)"], "data.paths"),
    (["data.tokenizer="], "data.tokenizer"),
    (["data.tokenizer=/nonexistent/tok.model"], "data.tokenizer"),
    (["data.layout=rolled"], "data.layout"),
    (["data.tasks=('captions',)"], "data.tasks"),
    (["data.max_images=-1"], "data.max_images"),
    (["model.image_pad_id=511"], "data.tokenizer"),  # the tokenizer's <imgpad> is 472
    (["model.llm.vocab_size=400", "model.image_start_id=397", "model.image_end_id=398",
      "model.image_pad_id=399"], "data.tokenizer"),  # the tokenizer has 473 ids
])
def test_config_errors_name_the_field(byte_vocab, shapes_jsonl, overrides, field):
  # A wrong type or value fails as the override is applied; what needs the disk, when the data opens.
  with pytest.raises(ConfigError, match=f"'{field}'"):
    pipeline.make_train_iterator(stage_config(1, byte_vocab, [shapes_jsonl], *overrides), 0, 1)


def test_unknown_data_field(byte_vocab, shapes_jsonl):
  config = stage_config(1, byte_vocab, [shapes_jsonl])
  config.data.shuffle_buffer = 10
  with pytest.raises(ConfigError, match="'data.shuffle_buffer'"):
    pipeline.make_train_iterator(config, 0, 1)


def test_data_that_never_fits_fails_instead_of_spinning(byte_vocab, shapes_jsonl):
  it = pipeline.make_train_iterator(stage_config(1, byte_vocab, [shapes_jsonl], "seq_len=16"), 0, 1)
  with pytest.raises(pipeline.NoUsableSamplesError, match="too_long"):
    next(it)


# ------------------------------------------------------------------------------------------------
# Real training runs (compile + steps: tens of seconds each on a CPU).


def _train_config(byte_vocab, shapes_jsonl, *overrides):
  return stage_config(2, byte_vocab, [shapes_jsonl], "seq_len=128", "model.llm.seq_length=128", "batch_size=16", "grad_accum=2",
                      "optim.warmup_steps=2", "optim.peak_lr=3e-3", "checkpoint_every=2", *overrides)


class _StopAfter:
  """The real iterator, raising KeyboardInterrupt when asked for batch n + 1 (a crash mid-run)."""

  def __init__(self, it, n):
    self.it, self.n = it, n

  def __next__(self):
    if self.n == 0:
      raise KeyboardInterrupt
    self.n -= 1
    return next(self.it)

  def get_state(self):
    return self.it.get_state()

  def set_state(self, state):
    self.it.set_state(state)


@pytest.mark.slow
def test_training_on_the_pipeline_lowers_the_loss(byte_vocab, shapes_jsonl, tmp_path):
  from qwenvl_jax.train.loop import train

  result = train(_train_config(byte_vocab, shapes_jsonl, "steps=16"), tmp_path / "run")
  losses = result["losses"]
  assert result["status"] == "done" and len(losses) == 16
  assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.5, losses
  assert (tmp_path / "run" / "checkpoints" / "16").is_dir()


@pytest.mark.slow
def test_resume_continues_the_data_stream(byte_vocab, shapes_jsonl, tmp_path):
  """6 straight steps == a run that dies asking for batch 6 (last checkpoint: step 4) + --resume."""
  from qwenvl_jax.train.loop import train

  config = _train_config(byte_vocab, shapes_jsonl, "steps=6")
  straight = train(config, tmp_path / "a")["losses"]
  with pytest.raises(KeyboardInterrupt):
    train(config, tmp_path / "b", iterator=_StopAfter(pipeline.make_train_iterator(config, 0, 1), 5))
  resumed = train(config, tmp_path / "b", resume=True)
  assert len(resumed["losses"]) == 2
  np.testing.assert_allclose(resumed["losses"], straight[4:], rtol=1e-5)


def test_train_command_keeps_the_tokenizer_with_the_checkpoints(byte_vocab, shapes_jsonl, tmp_path):
  """`qwenvl-jax train` copies data.tokenizer to WORKDIR/tokenizer/, where chat / eval / convert look."""
  from qwenvl_jax.ckpt.checkpoint import CheckpointRef
  from qwenvl_jax.cli.train import save_tokenizer

  save_tokenizer(stage_config(1, byte_vocab, [shapes_jsonl]), tmp_path / "run")
  ref = CheckpointRef(tmp_path / "run", tmp_path / "run" / "checkpoints", tmp_path / "run" / "x.json")
  assert ref.tokenizer_path.read_bytes() == open(byte_vocab, "rb").read()
  save_tokenizer(load_config_dict("configs/stage1.py:tiny"), tmp_path / "synthetic")  # no tokenizer
  assert not (tmp_path / "synthetic").exists()


def test_prepared_tfds_datasets_feed_training(byte_vocab, tmp_path):
  from qwenvl_jax.data import tfds_source
  tfds_source.make_builder("shapes", 6, 0, seed=3, size=64, data_dir=str(tmp_path)).download_and_prepare()
  tfds_source.make_builder("text", 4, 0, seed=3, size=64, data_dir=str(tmp_path)).download_and_prepare()
  config = stage_config(1, byte_vocab, ["qwenvl_synth_shapes:train", "qwenvl_synth_text"],
                        "data.source=tfds", f"data.tfds_dir={str(tmp_path)!r}", "data.tasks=('caption',)")
  source = pipeline.open_source(pipeline.pipeline_config_for_training(config).paths, str(tmp_path))
  assert len(source) == 10
  want = {r["id"]: r for r in list(synth.generate("shapes", 6, seed=3, size=64)) +
          list(synth.generate("text", 4, seed=3, size=64))}
  got = [source[i] for i in range(len(source))]
  assert sorted(r["id"] for r in got) == sorted(want)
  assert all(r["caption"] == want[r["id"]]["caption"] for r in got)
  it = pipeline.make_train_iterator(config, 0, 1)
  cfg = model_config_from_dict(config.model)
  for batch in take(it, 3):
    validate_batch(batch, 4, 128, cfg, check_spans=True)

  missing = apply_overrides(config, ["data.paths=('qwenvl_synth_docs:train',)"])
  with pytest.raises(ConfigError, match="data.paths.*qwenvl_synth_docs"):
    pipeline.make_train_iterator(missing, 0, 1)
