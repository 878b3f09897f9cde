"""Raw records -> fine-tuning conversations (paper B.2 layout), against hand-written conversations."""

import pytest

from qwenvl_jax.data import tasks
from qwenvl_jax.data.chat_format import to_conversation

RECORD = {"id": "r1", "image": "img/r1.png", "width": 200, "height": 100,
          "caption": "a red circle above a blue square",
          "qa": [{"question": "What colour is the circle?", "answer": "red"}],
          "objects": [{"phrase": "the red circle", "box": [20, 10, 60, 50]}],
          "words": [{"text": "STOP", "box": [0, 0, 10, 10]}]}


def test_conversation_matches_the_hand_written_one():
  # "r1" rotates the four turns by crc32("r1") % 4 = 1: the question opens, the caption comes last.
  want = [
      ("Picture 1: <img>img/r1.png</img>\nWhat colour is the circle?", "red"),
      ("Output the bounding box of the red circle.", "<ref>the red circle</ref><box>(100,100),(300,500)</box>"),
      ("Read all the text in the image.", "STOP"),
      ("Describe the image.", "a red circle above a blue square"),
  ]
  conv = to_conversation(RECORD, "img/r1.png")
  assert conv["id"] == "r1"
  assert [(conv["conversations"][i]["value"], conv["conversations"][i + 1]["value"])
          for i in range(0, len(want) * 2, 2)] == want
  assert [t["from"] for t in conv["conversations"]] == ["user", "assistant"] * 4


def test_every_request_kind_opens_some_conversation():
  firsts = set()
  for i in range(40):
    conv = to_conversation({**RECORD, "id": f"rec-{i}"}, "x.png")
    firsts.add(conv["conversations"][0]["value"].split("\n", 1)[1].split(" ")[0])
  assert firsts == {"What", "Output", "Read", "Describe"}


def test_a_record_with_nothing_to_say_is_not_applicable():
  with pytest.raises(tasks.TaskNotApplicable, match="r9"):
    to_conversation({"id": "r9", "image": "x.png", "width": 4, "height": 4})
