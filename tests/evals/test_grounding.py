"""Grounding accuracy: box parsing, /999 scaling and IoU against hand-computed cases."""

import pytest

from qwenvl_jax.evals.metrics.grounding import (box_iou, grounding_accuracy, grounding_correct, parse_box,
                                                to_pixels)


def test_iou_hand_cases():
  assert box_iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
  assert box_iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
  assert box_iou([0, 0, 10, 10], [0, 0, 10, 5]) == 0.5  # no +1 in areas: 50 / 100
  assert box_iou([0, 0, 10, 10], [20, 20, 30, 30]) == 0.0
  assert box_iou([0, 0, 0, 0], [0, 0, 0, 0]) == 0.0  # empty union: never correct


def test_parse_box():
  assert parse_box("<ref>dog</ref><box>(10,20),(300,400)</box>") == (10, 20, 300, 400)
  assert parse_box("(1,2),(3,4) and (5,6),(7,8)") == (1, 2, 3, 4)  # the first pair
  assert parse_box("( 10, 20),(30 ,40)") == (10, 20, 30, 40)
  assert parse_box("a dog on the left") == (0, 0, 0, 0)  # no box
  assert parse_box("(1,2,3),(4,5)") == (0, 0, 0, 0)  # malformed
  assert parse_box("(a,b),(c,d)") == (0, 0, 0, 0)


def test_scaling_and_accuracy():
  assert to_pixels((0, 0, 999, 999), 640, 480) == (0, 0, 640, 480)
  assert to_pixels((999, 0, 0, 0), 640, 480)[0] == 640.0
  assert grounding_correct("(0,0),(999,999)", [0, 0, 640, 480], 640, 480)
  # half the image's width: IoU exactly 0.5 passes
  assert grounding_correct("(0,0),(999,999)", [0, 0, 320, 480], 640, 480)
  assert not grounding_correct("no box here", [0, 0, 320, 480], 640, 480)
  res = grounding_accuracy(["(0,0),(999,999)", "nothing"], [[0, 0, 100, 100], [0, 0, 100, 100]],
                           [(100, 100), (100, 100)])
  assert res.score == 50.0 and res.n == 2 and res.variant == "qwenvl"
