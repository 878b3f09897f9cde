"""VQA accuracy (VQAv2, OK-VQA, VizWiz, TextVQA) with the official answer normalisation.

A prediction scores min(1, #matching humans / 3), averaged over the 10 leave-one-annotator-out subsets.
The three published evaluators disagree on *when* they normalise, so each is offered by name:

  qwenvl    (default; the paper's numbers) prediction always normalised; the answers only get the
            punctuation pass, and only when they are not unanimous.
  official  nothing is normalised when the answers are unanimous; otherwise both sides are.
  lmms      both sides are always normalised (lmms-eval's VQAv2 anchor).
  lmms-evalai  lmms-eval's TextVQA / OK-VQA / VizWiz scoring: both sides always go through its
            EvalAIAnswerProcessor, which first lower-cases, deletes every ',' and '?' and splits "'s" off
            ("what's" -> "what 's") before the official normalisation. So "whats" (-> "what's" by the
            contractions table) no longer matches "what's", and "red,white" becomes "redwhite". Those
            tasks offer it under the name `lmms` (tasks/__init__.py maps it).

E.g. `Two` against ten `2`: 1 (qwenvl), 0 (official), 1 (lmms).
"""

from __future__ import annotations

import re
from typing import Sequence

from qwenvl_jax.evals.metrics.base import MetricResult, check_variant, mean

VARIANTS = ("qwenvl", "official", "lmms", "lmms-evalai")

_NUMBER_WORDS = {w: str(i) for i, w in enumerate(
  ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"))}
_NUMBER_WORDS["none"] = "0"
_ARTICLES = frozenset(("a", "an", "the"))
_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
          ",", "?", "!")
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
# The official pattern is "(?!<=\d)(\.)(?!\d)": its first group is a look-*ahead*, always true before a
# '.', so it reduces to "a period not followed by a digit".
_PERIOD = re.compile(r"\.(?!\d)")
# ... and it passes re.UNICODE (== 32) as `count`, so at most 32 periods go. Kept for parity.
_PERIOD_COUNT = 32


def _contractions() -> dict[str, str]:
  """The official table: apostrophe-less spellings -> the apostrophe form.

  Single-apostrophe forms are keyed by the form with the apostrophe dropped; forms with several
  apostrophes by each spelling with exactly one of them dropped. Entries keyed by capitalised words
  ("Im", "Ive", ...) are left out: lookups happen after lower-casing, so they can never match.
  """
  single = """ain't aren't can't could've couldn't didn't doesn't don't hadn't hasn't haven't he'd he's
    how'd how'll how's isn't it'd it'll ma'am mightn't might've mustn't must've needn't not've o'clock
    oughtn't shan't should've shouldn't somebody'll somebody's someone'd someone'll someone's something'd
    something'll that's there'd there're there's they'd they'll they're they've 'twas wasn't we've
    weren't what'll what're what's what've when's where'd where's where've who'd who'll who's who've
    why'll why're why's won't would've wouldn't y'all you'd you'll you're you've""".split()
  multi = """couldn't've hadn't've he'd've it'd've mightn't've shouldn't've somebody'd've someone'd've
    something'd've there'd've they'd've we'd've she'd've who'd've wouldn't've you'd've y'all'll
    y'all'd've 'ow's'at""".split()
  table = {w.replace("'", ""): w for w in single}
  for w in multi:
    for i, ch in enumerate(w):
      if ch == "'":
        table[w[:i] + w[i + 1:]] = w
  table["somebody'd"] = "somebodyd"  # sic: the official table has this entry reversed
  return table


_CONTRACTIONS = _contractions()


def strip_punctuation(text: str) -> str:
  """The official `processPunctuation`.

  Decided per mark over the whole string: a mark touching a space anywhere (or any `digit,digit` in the
  string) is deleted everywhere, otherwise it becomes a space; then periods not before a digit go.
  """
  has_digit_comma = _DIGIT_COMMA_DIGIT.search(text) is not None
  out = text
  for p in _PUNCT:
    if has_digit_comma or (p + " ") in text or (" " + p) in text:
      out = out.replace(p, "")
    else:
      out = out.replace(p, " ")
  return _PERIOD.sub("", out, count=_PERIOD_COUNT)


def digits_and_articles(text: str) -> str:
  """The official `processDigitArticle`: lower-case, number words -> digits, drop articles, contractions."""
  words = []
  for w in text.lower().split():
    w = _NUMBER_WORDS.get(w, w)
    if w not in _ARTICLES:
      words.append(_CONTRACTIONS.get(w, w))
  return " ".join(words)


def normalize_answer(text: str) -> str:
  return digits_and_articles(strip_punctuation(text))


def evalai_word_tokenize(text: str) -> str:
  """lmms-eval's EvalAIAnswerProcessor.word_tokenize, applied before the official normalisation."""
  return text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()


def _clean(text: str) -> str:
  return text.replace("\n", " ").replace("\t", " ").strip()


def vqa_score(prediction: str, answers: Sequence[str], variant: str = "qwenvl") -> float:
  """Accuracy in [0, 1] of one prediction against its human answers."""
  variant = check_variant(variant, VARIANTS, "vqa_accuracy")
  if not answers:
    raise ValueError("vqa_score needs at least one human answer")
  pred = _clean(prediction)
  answers = list(answers)
  if variant == "qwenvl":
    pred = normalize_answer(pred)
    if len(set(answers)) > 1:
      answers = [strip_punctuation(a) for a in answers]
  elif variant == "official":
    answers = [_clean(a) for a in answers]
    if len(set(answers)) > 1:
      answers = [normalize_answer(a) for a in answers]
      pred = normalize_answer(pred)
  elif variant == "lmms-evalai":
    answers = [normalize_answer(_clean(evalai_word_tokenize(a))) for a in answers]
    pred = normalize_answer(_clean(evalai_word_tokenize(pred)))
  else:  # lmms
    answers = [normalize_answer(_clean(a)) for a in answers]
    pred = normalize_answer(pred)
  per_subset = []
  for i in range(len(answers)):
    matches = sum(1 for j, a in enumerate(answers) if j != i and a == pred)
    per_subset.append(min(1.0, matches / 3))
  return mean(per_subset)


def vqa_accuracy(predictions: Sequence[str], answers: Sequence[Sequence[str]],
                 variant: str | None = None) -> MetricResult:
  variant = check_variant(variant, VARIANTS, "vqa_accuracy")
  scores = [vqa_score(p, a, variant) for p, a in zip(predictions, answers, strict=True)]
  return MetricResult("vqa_accuracy", variant, 100.0 * mean(scores), len(scores))
