"""VQA accuracy against hand computations from the published definition (eval-metrics.md)."""

import pytest

from qwenvl_jax.evals.metrics.vqa_accuracy import (digits_and_articles, normalize_answer, strip_punctuation,
                                                    vqa_accuracy, vqa_score)


@pytest.mark.parametrize("variant,expected", [("qwenvl", 1.0), ("official", 0.0), ("lmms", 1.0)])
def test_two_against_ten_2(variant, expected):
  assert vqa_score("Two", ["2"] * 10, variant) == expected


@pytest.mark.parametrize("pred", ["yes.", "Yes", "YES", " yes "])
@pytest.mark.parametrize("variant,expected", [("qwenvl", 1.0), ("official", 0.0), ("lmms", 1.0)])
def test_trailing_period_and_case_on_unanimous_answers(pred, variant, expected):
  if pred == " yes ":
    expected = 1.0  # surrounding whitespace is stripped by every variant
  assert vqa_score(pred, ["yes"] * 10, variant) == expected


@pytest.mark.parametrize("variant,expected", [("qwenvl", 0.0), ("official", 0.0), ("lmms", 1.0)])
def test_unanimous_answers_keep_their_punctuation(variant, expected):
  # Qwen-VL and the official script process the answers only when the humans disagree.
  assert vqa_score("yes", ["yes."] * 10, variant) == expected


@pytest.mark.parametrize("k,expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_leave_one_out_average(k, expected):
  # k humans said "cat": annotators who said cat see k-1 matches among the other 9, the rest see k.
  answers = ["cat"] * k + ["dog"] * (10 - k)
  hand = (k * min(1, (k - 1) / 3) + (10 - k) * min(1, k / 3)) / 10
  assert hand == pytest.approx(expected)
  for variant in ("qwenvl", "official", "lmms"):
    assert vqa_score("cat", answers, variant) == pytest.approx(expected)


def test_numbers_in_words():
  assert vqa_score("three", ["3"] * 10) == 1.0
  assert vqa_score("none", ["0"] * 10) == 1.0
  assert vqa_score("ten", ["10"] * 10) == 1.0
  assert vqa_score("eleven", ["11"] * 10) == 0.0  # only none/zero..ten are mapped


def test_answers_only_get_punctuation_in_qwenvl():
  # Non-unanimous answers: Qwen-VL strips their punctuation but does not map number words.
  answers = ["two"] * 8 + ["2"] * 2
  assert vqa_score("2", answers, "qwenvl") == pytest.approx(0.6)
  assert vqa_score("2", answers, "official") == 1.0
  assert vqa_score("2", answers, "lmms") == 1.0


def test_articles_and_contractions():
  assert vqa_score("a dog", ["dog"] * 10, "qwenvl") == 1.0
  assert vqa_score("a dog", ["dog"] * 10, "official") == 0.0
  assert vqa_score("dont", ["don't"] * 10, "qwenvl") == 1.0
  assert digits_and_articles("The Two dogs arent here") == "2 dogs aren't here"


def test_punctuation_rules():
  assert strip_punctuation("hello-world") == "hello world"  # no space next to '-': becomes a space
  assert strip_punctuation("hello - world") == "hello  world"  # next to a space: deleted
  assert strip_punctuation("1,000") == "1000"  # digit,digit anywhere: every mark deleted
  assert strip_punctuation("a,b") == "a b"
  assert strip_punctuation("3.5 ft.") == "3.5 ft"  # periods go unless a digit follows
  assert strip_punctuation("e.g.") == "eg"
  assert strip_punctuation("(yes)!") == " yes  "
  assert normalize_answer("  Yes! ") == "yes"
  assert strip_punctuation("." * 40) == "." * 8  # the official count=re.UNICODE (32) quirk


def test_tabs_newlines_and_non_unanimous_normalisation():
  answers = ["Yes!"] * 9 + ["yes"]
  assert vqa_score("yes\n", answers, "official") == 1.0  # answers differ, so both sides normalised
  assert vqa_score("yes", answers, "lmms") == 1.0
  # Qwen-VL only strips the answers' punctuation: "Yes!" -> "Yes" keeps its capital, so just the one
  # "yes" annotator matches: k = 1 -> 0.3.
  assert vqa_score("yes", answers, "qwenvl") == pytest.approx(0.3)


def test_aggregate_records_variant():
  res = vqa_accuracy(["Two", "cat"], [["2"] * 10, ["dog"] * 10], variant="official")
  assert res.variant == "official" and res.n == 2 and res.score == 0.0
  assert vqa_accuracy(["Two"], [["2"] * 10]).variant == "qwenvl"
  with pytest.raises(ValueError):
    vqa_accuracy(["x"], [["x"]], variant="nope")
