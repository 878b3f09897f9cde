"""ANLS, relaxed accuracy, exact match / GQA clean-up, MME and choice metrics against hand-computed cases."""

import math

import pytest

from qwenvl_jax.evals.metrics.anls import anls, anls_score, levenshtein
from qwenvl_jax.evals.metrics.exact_match import exact_match, exact_match_accuracy, gqa_postprocess
from qwenvl_jax.evals.metrics.mme import mme_scores, parse_yes_no
from qwenvl_jax.evals.metrics.multiple_choice import choice_accuracy, choose, choose_letter, option_targets
from qwenvl_jax.evals.metrics.relaxed_accuracy import relaxed_accuracy, relaxed_score


@pytest.mark.parametrize("gt,pred,expected", [
  ("Hello World", "hello  world ", 1.0), ("hello", "helo", 0.8), ("abcd", "ab", 0.5), ("abcd", "a", 0.0)])
def test_anls_reference_examples(gt, pred, expected):
  assert anls_score(pred, [gt]) == pytest.approx(expected)


def test_anls_edges():
  assert levenshtein("kitten", "sitting") == 3 and levenshtein("", "abc") == 3
  assert anls_score("", [""]) == 1.0  # both empty: distance 0 / length 0 -> 0
  assert anls_score("", ["abc"]) == 0.0
  assert anls_score("HELLO", ["hello"]) == 1.0
  assert anls_score("abcde", ["abcdefghij"]) == 0.5  # exactly at the threshold: kept
  assert anls_score("abcd", ["abcdefghi"]) == 0.0  # 1 - 5/9 = 0.44 < 0.5
  assert anls_score("helo", ["zzzz", "hello"]) == pytest.approx(0.8)  # best answer wins
  # The divisor uses the raw lengths: "ab   " counts 5, so one edit costs 1/5, not 1/2.
  assert anls_score("ac", ["ab   "]) == pytest.approx(0.8)
  res = anls(["hello", "x"], [["hello"], ["abcd"]])
  assert res.score == pytest.approx(50.0) and res.details["threshold"] == 0.5


def test_relaxed_accuracy_variants():
  assert relaxed_score("95.1", ["100"], "correct") == 1.0  # 4.9 / 100 <= 5%
  assert relaxed_score("95.1", ["100"], "qwenvl") == 0.0  # 4.9 / 95.1 > 5%
  assert relaxed_score("105", ["100"]) == 1.0  # exactly 5%
  assert relaxed_score("106", ["100"]) == 0.0
  assert relaxed_score("12%", ["0.12"]) == 1.0  # percent parses as a fraction
  assert relaxed_score("12%", ["12"]) == 0.0
  assert relaxed_score(" Yes ", ["yes"]) == 1.0  # non-numeric: case-insensitive equality
  assert relaxed_score("0", ["0"]) == 1.0 and relaxed_score("0.0", ["0"]) == 0.0  # zero target: string
  assert relaxed_score("0", ["0.0"], "qwenvl") == 0.0  # qwenvl needs a non-zero prediction instead
  assert relaxed_score("3", ["7", "3.1"]) == 1.0  # max over annotations
  res = relaxed_accuracy(["95.1", "7"], [["100"], ["7"]], variant="qwenvl")
  assert res.score == 50.0 and res.variant == "qwenvl"
  assert relaxed_accuracy(["95.1"], [["100"]]).variant == "correct"


def test_exact_match_and_gqa_postprocess():
  assert exact_match(" Yes ", ["yes"]) == 1.0 and exact_match("yes.", ["yes"]) == 0.0
  assert gqa_postprocess("Yes.") == "yes"
  assert gqa_postprocess("The cat is on the table") == "table"
  assert gqa_postprocess("It is a red car, parked") == "red car"
  assert gqa_postprocess("top of the box") == "box"
  assert gqa_postprocess("the color of the sky") == "color"
  assert gqa_postprocess("banana split") == "split"  # the substring quirk, kept on purpose
  res = exact_match_accuracy(["It is a red car."], [["red car"]], variant="qwenvl")
  assert res.score == 100.0
  assert exact_match_accuracy(["It is a red car."], [["red car"]]).score == 0.0


def test_mme_parsing_and_scores():
  assert [parse_yes_no(t) for t in ("Yes", "no", "Yes, there is.", "No.", "There is a dog", "Not sure")] == \
      ["yes", "no", "yes", "no", "other", "no"]
  rows = [("existence", "1.jpg", "Yes", "Yes"), ("existence", "1.jpg", "No", "No"),
          ("existence", "2.jpg", "Yes", "Yes"), ("existence", "2.jpg", "Yes", "No"),
          ("code_reasoning", "a.png", "yes", "Yes"), ("code_reasoning", "a.png", "no", "No")]
  res = mme_scores(rows)
  ex = res.details["subtasks"]["existence"]
  assert ex["acc"] == 75.0 and ex["acc_plus"] == 50.0 and ex["score"] == 125.0  # 100 (3/4 + 1/2)
  assert res.details["perception"] == 125.0 and res.details["cognition"] == 200.0
  assert res.details["perception_complete"] is False
  assert res.score == 325.0


def test_multiple_choice():
  assert option_targets(3) == [" A", " B", " C"]
  assert choose([1.2, 0.7, 0.7, 2.0]) == 1  # first of a tie
  assert choose([math.nan, 3.0]) == 1
  assert choose_letter([2.0, 1.0, 0.5]) == "C"
  assert choice_accuracy(["A", "c"], ["A", "B"]).score == 50.0


def test_pope_parsing_and_scores():
  from qwenvl_jax.evals.metrics.pope import parse_yes_no, pope_scores
  # POPE's own rule: first sentence, ',' deleted, any of No/no/not among the words -> no
  assert parse_yes_no("No, there is not.") == "no"
  assert parse_yes_no("Yes. No dog though.") == "yes"  # only the first sentence counts
  assert parse_yes_no("There is not a dog") == "no"
  assert parse_yes_no("NO") == "yes"  # case-sensitive in the official script
  assert parse_yes_no("Nothing") == "yes"
  # 3 yes + 2 no labels; predictions yes, yes, no | yes, no -> TP 2, FN 1, FP 1, TN 1
  res = pope_scores(["Yes", "yes", "No", "yes", "no"], ["yes", "yes", "yes", "no", "no"])
  d = res.details
  assert (d["tp"], d["fn"], d["fp"], d["tn"]) == (2, 1, 1, 1)
  assert d["accuracy"] == res.score == pytest.approx(60.0)
  assert d["precision"] == pytest.approx(200 / 3) and d["recall"] == pytest.approx(200 / 3)
  assert d["f1"] == pytest.approx(200 / 3) and d["yes_ratio"] == pytest.approx(60.0)


def test_circular_accuracy_needs_every_rotation():
  from qwenvl_jax.evals.metrics.multiple_choice import circular_accuracy
  rows = [(1, "A", "A"), (1, "D", "D"), (1, "C", "C"), (1, "B", "B"),  # all 4 rotations right
          (2, "A", "A"), (2, "A", "B")]  # one rotation wrong: the question fails
  res = circular_accuracy(rows)
  assert res.score == 50.0 and res.details["per_rotation_accuracy"] == pytest.approx(500 / 6)
  assert res.details["questions"] == 2 and res.n == 6
