"""Every task's reader on a fixture in its benchmark's published format; prompts; scoring wiring."""

import os

import pytest

from qwenvl_jax.evals.tasks import TASKS, get_task, prompts, score_items
from tests.evals.fixtures import BUILDERS, _json


def _perfect(task, items):
  out = {}
  for it in items:
    if task.family == "caption":
      out[str(it["id"])] = it["captions"][0]
    elif task.family == "vqa":
      out[str(it["id"])] = it["answers"][0]
    elif task.family == "rec":
      x1, y1, x2, y2 = it["box"]
      w, h = it["width"], it["height"]
      out[str(it["id"])] = "({},{}),({},{})".format(*(round(v * 999) for v in (x1 / w, y1 / h, x2 / w, y2 / h)))
    else:
      out[str(it["id"])] = it["answer"]
  return out


def test_every_task_has_a_fixture():
  assert set(BUILDERS) == set(TASKS)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_reader_prompt_and_perfect_score(name, tmp_path):
  task = get_task(name)
  root = tmp_path / name
  split, n = BUILDERS[name](root)
  items = task.read(root, split)
  assert len(items) == n
  for it in items:
    assert os.path.isabs(it["image"]) and it["image"].startswith(str(tmp_path))
    segs = task.prompt(it)
    assert segs[0] == {"image": it["image"]}
    if task.family == "rec" and not task.chat:  # tags are structured segments, never text the tokenizer could promote
      assert segs[1:] == [{"ref": it["expression"]}, {"special": "<box>"}]
    else:
      assert all("text" in s for s in segs[1:])
  res = score_items(task, items, _perfect(task, items))
  assert res.n == n and res.variant == task.default_variant and res.metric == task.metric
  if task.family == "caption":
    assert res.score > 0
  elif task.family == "mme":
    assert res.score == 400.0  # two subtasks, each 100 (acc) + 100 (acc+)
  else:
    assert res.score == pytest.approx(100.0)


def _read(name, tmp_path, split=None):
  root = tmp_path / name
  default_split, _ = BUILDERS[name](root)
  return root, get_task(name).read(root, split or default_split)


def test_reader_details(tmp_path):
  root, items = _read("vqav2", tmp_path)
  assert items[0]["image"] == str(root / "val2014" / "COCO_val2014_000000000042.jpg")
  assert items[0]["answers"] == ["2"] * 10 and items[0]["shot_answer"] == "2"
  assert prompts.render(get_task("vqav2").prompt(items[0])) == f"<img>{items[0]['image']}</img>How many dogs? Answer:"

  _, items = _read("refcoco", tmp_path)
  assert items[0]["box"] == [10, 20, 110, 220] and items[0]["id"] == "0/0"  # COCO xywh -> xyxy
  assert prompts.render(get_task("refcoco").prompt(items[0])).endswith("<ref>person 0 left</ref><box>")
  _, items = _read("refcoco", tmp_path, "testB")
  assert [it["expression"] for it in items] == ["person 2 left", "guy 2"]

  _, items = _read("scienceqa_img", tmp_path)
  text = get_task("scienceqa_img").prompt(items[0])[1]["text"]
  assert text == "Context: N/A\nQuestion: Which animal is a mammal?\nOptions: A. frog\nB. dog\nAnswer:"
  assert items[0]["answer"] == "B" and items[1]["hint"] == "Look at the map."

  _, items = _read("seed_bench", tmp_path)
  text = get_task("seed_bench").prompt(items[0])[1]["text"]
  assert text.startswith("\nQuestion: Where is this?\nOptions: A. a park\n")
  assert items[1]["category"] == "Instance Identity"

  root, items = _read("chartqa", tmp_path)
  assert items[0]["image"] == str(root / "test" / "png" / "41699051005347.png")
  assert [it["subset"] for it in items] == ["human", "augmented", "augmented"]

  root, items = _read("docvqa", tmp_path)
  assert items[0]["image"] == str(root / "val" / "documents" / "pybv0228_81.png")

  root, items = _read("ocrvqa", tmp_path)
  assert items[0]["image"] == str(root / "images" / "1234567.jpg") and items[0]["id"] == "1234567_0"

  _, items = _read("ai2d", tmp_path)
  assert items[0]["question"] == "Which stage comes after egg?\nOptions: A. larva\nB. adult\nC. pupa"
  assert items[0]["answers"] == ["A", "larva"]

  _, items = _read("grit", tmp_path)
  assert (items[0]["width"], items[0]["height"]) == (64, 48)  # read from the image header

  _, items = _read("mme", tmp_path)
  assert items[0]["id"] == "existence/000000006040.jpg/0" and items[1]["id"].endswith("/1")
  assert get_task("mme").chat and get_task("mme").prompt(items[0])[1]["text"].startswith("\nIs there a train")

  _, items = _read("synth_vqa", tmp_path)
  assert [it["id"] for it in items] == ["shapes-0-00000000/qa0", "shapes-0-00000000/qa1"]


def test_decoding_settings():
  assert (get_task("nocaps").max_new_tokens, get_task("nocaps").min_new_tokens) == (30, 8)
  assert (get_task("refcoco").max_new_tokens, get_task("refcoco").min_new_tokens) == (28, 10)
  assert get_task("textvqa").max_new_tokens == 10 and get_task("docvqa").max_new_tokens == 100
  assert get_task("chartqa").max_new_tokens == 100 and get_task("ocrvqa").max_new_tokens == 100
  assert get_task("gqa").default_variant == "qwenvl" and get_task("chartqa").default_variant == "correct"
  assert get_task("refcoco").paper_splits == ("val", "testA", "testB")


def test_splits_without_ground_truth_and_errors(tmp_path):
  root = tmp_path / "vizwiz"
  _json(root / "Annotations" / "test.json", [{"image": "VizWiz_test_00000000.jpg", "question": "What?"}])
  task = get_task("vizwiz")
  items = task.read(root, "test")
  res = score_items(task, items, {items[0]["id"]: "soup"})
  assert res.score is None and "no public ground truth" in res.details["note"]
  with pytest.raises(ValueError, match="unknown split"):
    task.read(root, "nope")
  with pytest.raises(FileNotFoundError):
    task.read(tmp_path / "missing")
  with pytest.raises(KeyError):
    get_task("nope")


def test_metric_variants_are_selectable(tmp_path):
  root, items = _read("chartqa", tmp_path)
  task = get_task("chartqa")
  outputs = {"human/0": "3", "augmented/0": "100", "augmented/1": "2019"}  # 100 vs 95.1: 5.15% / 4.9%
  correct = score_items(task, items, outputs)
  qwen = score_items(task, items, outputs, "qwenvl")
  assert correct.details["subsets"] == {"human": 100.0, "augmented": 50.0} and correct.score == 75.0
  assert qwen.variant == "qwenvl" and qwen.details["subsets"]["augmented"] == 100.0
  with pytest.raises(ValueError):
    score_items(task, items, outputs, "official")


def test_synthetic_captions_are_asked_with_the_training_prompt():
  from qwenvl_jax.data.tasks import CAPTION_PROMPT
  segs = get_task("synth_caption").prompt({"image": "/x.png"})
  assert segs == [{"image": "/x.png"}, {"text": CAPTION_PROMPT}]
  assert get_task("nocaps").prompt({"image": "/x.png"})[1] == {"text": "Describe the image in English:"}


def test_chat_tasks_ask_in_the_stage3_wording(tmp_path):
  """The *_chat tasks pose the ChatML training data's own requests (data/chat_format.py), as chat turns."""
  from qwenvl_jax.data import chat_format
  from qwenvl_jax.text.chat_requests import DESCRIBE_REQUEST, grounding_request
  record = {"id": "r", "width": 96, "height": 96, "caption": "a red star.", "words": [],
            "objects": [{"phrase": "the red star", "box": [1, 2, 30, 40]}],
            "qa": [{"question": "What color is the star?", "answer": "red"}]}
  users = [m["value"].split("\n", 1)[-1] for m in chat_format.to_conversation(record, "x")["conversations"]
           if m["from"] == "user"]
  for name in ("synth_grounding_chat", "synth_caption_chat", "synth_vqa_chat", "synth_ocr_chat"):
    task = get_task(name)
    assert task.chat
    root, items = _read(name, tmp_path)
    for it in items:
      text = task.prompt(it)[1]["text"]
      if name == "synth_grounding_chat":
        assert text == grounding_request(it["expression"])
      elif name == "synth_caption_chat":
        assert text == DESCRIBE_REQUEST
      else:
        assert text == it["question"]
  assert grounding_request("the red star") in users and DESCRIBE_REQUEST in users
