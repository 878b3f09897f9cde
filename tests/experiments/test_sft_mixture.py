"""The stage-3 data mixture (experiments/sft_mixture.py): counts, wording, answers and images, checked
against the evaluations that ask the chat model (synth_*_chat) and the training records themselves."""

import collections
import pathlib

import pytest

from experiments import easy_text, prepare_data, sft_mixture
from qwenvl_jax.data import sources
from qwenvl_jax.data.synth import shapes
from qwenvl_jax.evals.tasks import get_task
from qwenvl_jax.evals.tasks.scoring import score_items

N_SHAPES, N_WORDS = 6, 4


def _make_train(root: pathlib.Path) -> pathlib.Path:
  """A training split as prepare_data writes it (records, images, 1-2 turn dialogues), no tokenizer."""
  s = prepare_data.DataSettings()
  prepare_data.write_set((shapes.generate(i, seed=5, size=96, max_objects=3, n_questions=3) for i in range(N_SHAPES)),
                         root / "train" / "shapes.jsonl", root / "train" / "chat_shapes.jsonl", 2, 0)
  prepare_data.write_set((easy_text.generate(i, seed=5, size=96, n_words=20, font_px=(20, 20), jitter=2, n_fonts=1)
                          for i in range(N_WORDS)), root / "train" / "words.jsonl",
                         root / "train" / "chat_words.jsonl", s.chat_turns, 1)
  return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  return _make_train(tmp_path_factory.mktemp("sft_data"))


def _records(path):
  return list(sources.read_jsonl(path))


def _raw(data):
  return [r for name in sft_mixture.RAW_RECORDS for r in _records(data / "train" / name)]


def _kind(conv_id: str) -> str:
  return conv_id.rsplit("/", 1)[1].rstrip("0123456789") if "/" in conv_id else "dialogue"


def test_counts_are_the_mixture(data):
  mix = sft_mixture.SftMix(dialogues=5, grounding=7, vqa=4, replay=3)
  chat, replay = sft_mixture.build(data, mix)
  assert chat.parent.name == "sft-d5-g7-v4-r3"
  kinds = collections.Counter(_kind(c["id"]) for c in _records(chat))
  assert kinds == {"dialogue": 5, "ground": 7, "qa": 4}
  assert len(_records(replay)) == 3 and all("conversations" not in r for r in _records(replay))
  assert sft_mixture.paths(data, mix) == (str(chat), str(replay))
  assert sft_mixture.paths(data, sft_mixture.SftMix(3, 2, 2, 0)) == (  # nothing to replay: chat only
      str(data / "train" / "sft-d3-g2-v2-r0" / "chat.jsonl"),)


def test_single_turns_ask_as_the_chat_evaluations_do_and_their_answers_score_full_marks(data):
  """Each single turn is a fresh chat with the picture, the request worded as synth_grounding_chat /
  synth_vqa_chat word it for the same training item, and an answer those tasks score 100%."""
  objects = sum(len(r["objects"]) for r in _raw(data))
  questions = sum(len(r["qa"]) for r in _raw(data) if r["objects"])
  chat, _ = sft_mixture.build(data, sft_mixture.SftMix(dialogues=0, grounding=objects, vqa=questions, replay=0))
  convs = {c["id"]: c["conversations"] for c in _records(chat)}
  for task_name, kind in (("synth_grounding_chat", "ground"), ("synth_vqa_chat", "qa")):
    task = get_task(task_name)
    items = task.read(data / "train" / "shapes.jsonl", "test")
    outputs = {}
    for item in items:
      record_id, index = item["id"].rsplit(f"/{'obj' if kind == 'ground' else 'qa'}", 1)
      user, answer = convs[f"{record_id}/{kind}{index}"]
      asked = next(seg["text"] for seg in task.prompt(item) if "text" in seg)
      assert user["from"] == "user" and user["value"].split("\n", 1)[1] == asked
      assert user["value"].startswith("Picture 1: <img>") and answer["from"] == "assistant"
      outputs[item["id"]] = answer["value"]
    assert len(outputs) == len(items) > 0
    assert score_items(task, items, outputs).score == pytest.approx(100.0)


def test_every_item_is_drawn_once_before_any_repeats(data):
  objects = sum(len(r["objects"]) for r in _raw(data))
  for times in (1, 2):
    chat, _ = sft_mixture.build(data, sft_mixture.SftMix(dialogues=0, grounding=times * objects, vqa=0, replay=0))
    counts = collections.Counter(c["id"] for c in _records(chat))
    assert len(counts) == objects and set(counts.values()) == {times}


def test_images_are_the_training_images(data):
  train = {r["id"]: r["image"] for r in _raw(data)}  # absolute after read_jsonl
  chat, replay = sft_mixture.build(data, sft_mixture.SftMix(dialogues=10, grounding=4, vqa=4, replay=10))
  for conv in _records(chat):
    assert conv["images"] == [train[conv["id"].split("/")[0]]]
    assert pathlib.Path(conv["images"][0]).is_file()
  for rec in _records(replay):
    assert rec["image"] == train[rec["id"]]


def test_the_same_mix_gives_the_same_files_and_another_seed_another_order(data, tmp_path):
  mix = sft_mixture.SftMix(dialogues=6, grounding=5, vqa=5, replay=5)
  first = [p.read_bytes() for p in sft_mixture.build(data, mix)]
  other = _make_train(tmp_path)
  assert [p.read_bytes() for p in sft_mixture.build(other, mix)] == first
  reseeded = sft_mixture.build(other, sft_mixture.SftMix(6, 5, 5, 5, seed=1))
  assert reseeded[0].parent.name.endswith("-s1") and reseeded[0].read_bytes() != first[0]


def test_a_finished_mixture_is_reused_not_rewritten(data):
  mix = sft_mixture.SftMix(dialogues=2, grounding=2, vqa=2, replay=2)
  chat, _ = sft_mixture.build(data, mix)
  chat.write_text(chat.read_text() + "")
  stamp = chat.stat().st_mtime_ns
  assert sft_mixture.build(data, mix)[0].stat().st_mtime_ns == stamp
  assert not list(chat.parent.glob("*.tmp"))


def test_parse_names_the_bad_part():
  assert sft_mixture.SftMix.parse("grounding=5,replay=0") == sft_mixture.SftMix(grounding=5, replay=0)
  assert sft_mixture.SftMix.parse("") == sft_mixture.SftMix()
  for bad in ("groundin=5", "vqa=-1", "vqa"):
    with pytest.raises(ValueError, match=bad.split("=")[0]):
      sft_mixture.SftMix.parse(bad)


def test_a_mix_without_conversations_is_refused(data):
  with pytest.raises(ValueError, match="no conversation"):
    sft_mixture.build(data, sft_mixture.SftMix(dialogues=0, grounding=0, vqa=0, replay=3))
