"""CIDEr-D against pycocoevalcap's Cider on the same tokenised captions (1e-6), and the Python PTB
tokenizer against pycocoevalcap's Java one."""

import random
import shutil

import pytest

from qwenvl_jax.evals.metrics.cider import cider, cider_d
from qwenvl_jax.evals.metrics.ptb_tokenize import ptb_tokenize

coco_cider = pytest.importorskip("pycocoevalcap.cider.cider", reason="pycocoevalcap not installed")
needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="Java not available for the PTB tokenizer")

REFS = {
  1: ["A man riding a wave on top of a surfboard.", "A surfer rides a large wave in the ocean.",
      "a person on a surfboard riding a wave", "A man is surfing on a big wave.",
      "Surfer in a black wetsuit catching a wave."],
  2: ["Two giraffes standing next to each other in a field.", "A pair of giraffes in the grass.",
      "two giraffes are standing near some trees", "Giraffes grazing in a grassy area.",
      "Two tall giraffes stand in a zoo enclosure."],
  3: ["A red double-decker bus driving down the street.", "A bus on a city street, near a building.",
      "The double decker bus is red and white.", "a large red bus going down a road",
      "A London bus drives past shops."],
  4: ["A plate of food with broccoli and rice.", "Food on a white plate, including broccoli.",
      "a dinner plate with meat, rice and vegetables", "Broccoli and chicken on a plate.",
      "A healthy meal served on a dish."],
  5: ["A woman's hand holding a smartphone.", "Someone is taking a picture with a cell phone.",
      "A person holds a phone up to take a photo.", "a hand holding a black cellphone",
      "Close-up of a phone in a woman's hand."],
  6: ["There is a cat sitting on top of the car's hood.", "A cat sits on a car.",
      "a gray cat on the hood of a vehicle", "The cat is resting on a parked car.",
      "A kitten on top of an automobile."],
}
CANDS = {1: "A man riding a wave on a surfboard.", 2: "Two giraffes standing in a field.",
         3: "A red bus driving down a city street.", 4: "a plate of food with broccoli",
         5: "A person holding a cell phone in their hand.", 6: "A dog sitting on a couch."}


def _oracle(cands, refs):
  return coco_cider.Cider().compute_score(refs, {k: [v] for k, v in cands.items()})


def test_matches_pycocoevalcap_on_random_corpora():
  vocab = "a the man dog cat red blue runs sits on in of with near big small".split()
  for seed in range(5):
    rng = random.Random(seed)
    refs = {i: [" ".join(rng.choices(vocab, k=rng.randint(3, 12))) for _ in range(rng.randint(1, 5))]
            for i in range(rng.randint(2, 12))}
    cands = {i: " ".join(rng.choices(vocab, k=rng.randint(1, 12))) for i in refs}
    ours, per_image = cider_d(cands, refs)
    theirs, per_theirs = _oracle(cands, refs)
    assert ours == pytest.approx(theirs, abs=1e-6)
    assert [per_image[k] for k in refs] == pytest.approx(list(per_theirs), abs=1e-6)


def test_single_image_corpus_is_zero():
  # log(1 image) = 0 weights every n-gram to zero, in both implementations.
  assert cider_d({0: "a b c"}, {0: ["a b c"]})[0] == 0.0 == _oracle({0: "a b c"}, {0: ["a b c"]})[0]


@pytest.fixture(scope="module")
def java_tokenised():
  from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
  texts = {f"r{k}": [{"caption": c} for c in v] for k, v in REFS.items()}
  texts.update({f"c{k}": [{"caption": v}] for k, v in CANDS.items()})
  texts["t"] = [{"caption": s} for s in TOKENIZER_CASES]
  return PTBTokenizer().tokenize(texts)


TOKENIZER_CASES = [
  "A man's hat, don't you think?", "He cannot go; gonna wanna", "Two dogs (brown) play.",
  "It costs $5.50 & 50% off!", 'She said "hello" there', "I'll we're they've it's", "3.5 ft. tall",
  "Mr. Smith's car.", "rock'n'roll 'quoted'", "{braces} [brackets]", "x+y=z", "10:30 a.m.",
  "snow-covered mountains", "two-way 1,000 people", "What?!", "can't won't", "o'clock",
  "A dog. A cat.", "dogs. Cats play", "St. Louis", "hello,world", "cats' toys", "one--two", "a - b",
  "\u201cquoted\u201d", "man\u2019s", "a\u2014b", "in the U.S.", "he said (yes).", "e-mail.", "a b. c",
  "A group of people standing around a table with food.", "  Leading and trailing spaces.  ",
]


@needs_java
def test_python_tokenizer_matches_java(java_tokenised):
  assert [ptb_tokenize(s) for s in TOKENIZER_CASES] == java_tokenised["t"]
  for k, refs in REFS.items():
    assert [ptb_tokenize(r) for r in refs] == java_tokenised[f"r{k}"]


@needs_java
def test_cider_on_java_tokens_and_end_to_end(java_tokenised):
  refs = {k: java_tokenised[f"r{k}"] for k in REFS}
  cands = {k: java_tokenised[f"c{k}"][0] for k in CANDS}
  ours, per_image = cider_d(cands, refs)
  theirs, per_theirs = _oracle(cands, refs)
  assert ours == pytest.approx(theirs, abs=1e-6)
  assert [per_image[k] for k in REFS] == pytest.approx(list(per_theirs), abs=1e-6)
  # Raw captions through the Python tokenizer give the same number (x100, the papers' scale).
  res = cider(CANDS, REFS)
  assert res.score == pytest.approx(100 * theirs, abs=1e-4) and res.n == len(CANDS)
