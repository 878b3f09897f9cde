"""experiments.grounding_errors on chat answers: whether the name before the box is the asked phrase."""

import pytest

from experiments import grounding_errors

RECORD = {"id": "scene", "width": 100, "height": 100,
          "objects": [{"box": [10, 10, 30, 30], "category": "circle", "phrase": "the red circle"},
                      {"box": [60, 60, 90, 90], "category": "star", "phrase": "the blue star"}]}


def test_a_chat_answer_naming_another_object_is_told_apart():
  predictions = [  # decoded answers: the eval strips special tokens, so both spellings occur
      {"question_id": "scene/obj0", "answer": "<ref>the red circle</ref><box>(100,100),(300,300)</box>"},
      {"question_id": "scene/obj0", "answer": "the blue star(600,600),(900,900)"},  # names and boxes the star
      {"question_id": "scene/obj1", "answer": "The Blue Star (600,600),(900,900)"}]
  out = grounding_errors.breakdown([RECORD], predictions)["all"]
  assert out["named"] == 3 and out["named_asked_phrase"] == pytest.approx(2 / 3)
  assert out["accuracy"] == pytest.approx(2 / 3) and out["chose_asked_object"] == pytest.approx(2 / 3)


def test_box_only_answers_name_nothing():
  out = grounding_errors.breakdown([RECORD], [{"question_id": "scene/obj1", "answer": "(600,600),(900,900)"},
                                              {"question_id": "scene/obj0", "answer": "<box>(1,1),(3,3)</box>"}])
  assert "named_asked_phrase" not in out["all"] and out["all"]["accuracy"] == pytest.approx(0.5)
