"""Fuzzing the readers of untrusted text: model output (box markup) and predictions files.

Properties, on arbitrary input. Each drawn example is checked whole, doubled, and cut at 8 places
(model output stopped mid-tag, a file torn mid-write): 10 inputs per example, 10,400 inputs in all
(500 x 10 + 300 + 500 x 10 + 100) for the price of 1,400 drawn examples (drawing is what costs):
  * the box/quad parsers never raise, and everything they return is in range and well ordered;
  * formatting a parsed box and parsing it again gives it back;
  * the predictions reader raises nothing but `PredictionsError`; `repair` either refuses (file
    unchanged) or leaves a file whose records are exactly what `read_records` saw, ready to append.
"""

import pathlib
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qwenvl_jax.evals import predictions as P
from qwenvl_jax.text import boxes

# Text that often looks like markup: tags, coordinates, separators, noise.
_PIECES = st.sampled_from(["<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>", "<img>", "</img>",
                           "(", ")", ",", " ", "\n", "0", "999", "1000", "12", "-3", "1e3", "a dog",
                           "(10,20),(30,40)", "(0,0),(999,999)", "(5,5),(1,1)", "；", "٣"])
MARKUP = st.lists(st.one_of(_PIECES, st.text(max_size=6)), max_size=40).map("".join)
_FAST = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check_box(b):
  x1, y1, x2, y2 = b
  assert all(isinstance(v, int) and 0 <= v < boxes.SCALE for v in b)
  assert x1 <= x2 and y1 <= y2


def _cuts(x, n: int = 8):
  """x; n pieces of it (prefixes up to the first n/2 cut points, suffixes from the rest); x twice."""
  points = sorted({len(x) * (i + 1) // (n + 1) for i in range(n)})
  pieces = [x[:p] for p in points[: n // 2]] + [x[p:] for p in points[n // 2:]]
  pieces += [x[:0]] * (n - len(pieces))  # short inputs: pad with the empty input
  return [x, *pieces, x + x]


@settings(max_examples=500, **_FAST)
@given(st.one_of(MARKUP, st.text()))
def test_box_parsers_never_raise(text):
  for piece in _cuts(text):
    _check_parsers(piece)


def _check_parsers(text):
  for pb in boxes.parse_boxes(text):
    _check_box(pb.box)
    assert pb.ref is None or isinstance(pb.ref, str)
    assert boxes.read_box_body(boxes.box_text(pb.box)) == pb.box  # format -> parse round trip
  for pq in boxes.parse_quads(text):
    assert len(pq.points) == 4 and all(0 <= v < boxes.SCALE for p in pq.points for v in p)
  per_image = boxes.parse_boxes_per_image(text, [(640, 480), (100, 50)])
  assert len(per_image) == 2
  for i, (w, h) in enumerate([(640, 480), (100, 50)]):
    assert all(0 <= b.box[0] <= b.box[2] <= w and 0 <= b.box[1] <= b.box[3] <= h for b in per_image[i])
  first = boxes.parse_first_box(text)
  assert first is None or (len(first) == 4 and all(isinstance(v, int) for v in first))


@settings(max_examples=300, **_FAST)
@given(st.lists(st.tuples(st.integers(0, 999), st.integers(0, 999), st.integers(0, 999),
                          st.integers(0, 999)), max_size=4), st.text(max_size=8))
def test_formatted_boxes_parse_back(raw, phrase):
  phrase = phrase.replace("<", "")  # a ref phrase holds no tags
  norm = [(min(a, c), min(b, d), max(a, c), max(b, d)) for a, b, c, d in raw]
  text = boxes.format_ref(phrase) + "".join(boxes.format_box(b) for b in norm)
  assert [(p.ref, p.box) for p in boxes.parse_boxes(text)] == [(phrase, b) for b in norm]


_RECORD_LINES = st.sampled_from([b'{"question_id": 1, "answer": "a"}', b'{"image_id": 7, "caption": "x"}',
                                 b"{}", b"", b" ", b"[1]", b'"s"', b"{", b'{"a": "\xff"}', b"\xc3",
                                 b"nan", b"[[[[", b'{"q": 1}\r'])
PRED_BYTES = st.one_of(st.binary(max_size=200),
                       st.lists(st.one_of(_RECORD_LINES, st.binary(max_size=12)), max_size=8).map(b"\n".join),
                       st.lists(_RECORD_LINES, max_size=8).map(lambda ls: b"".join(x + b"\n" for x in ls)))


@settings(max_examples=500, **_FAST)
@given(PRED_BYTES)
def test_predictions_reader_raises_only_its_error(blob):
  blobs = _cuts(blob)
  for data in blobs:
    try:
      records = P.parse_records(data, "fuzz.jsonl")
    except P.PredictionsError as e:
      assert str(e).startswith("fuzz.jsonl: line ")
      try:
        P.repaired_bytes(data, "fuzz.jsonl")
        raise AssertionError("repair accepted what the reader refused")
      except P.PredictionsError:
        continue
    assert all(isinstance(r, dict) for r in records)
    fixed = P.repaired_bytes(data)
    assert data.startswith(fixed) or fixed == data + b"\n"  # only a torn tail cut / a newline added
    assert P.parse_records(fixed) == records
    appended = fixed + b'{"question_id": "new", "answer": "z"}\n'  # what Writer appends next
    assert P.parse_records(appended) == records + [{"question_id": "new", "answer": "z"}]


@settings(max_examples=100, **_FAST)
@given(PRED_BYTES)
def test_repair_on_disk_matches_repaired_bytes(data):
  with tempfile.TemporaryDirectory() as d:
    path = pathlib.Path(d) / "p.jsonl"
    path.write_bytes(data)
    try:
      want = P.repaired_bytes(data, path)
    except P.PredictionsError:
      with pytest.raises(P.PredictionsError, match=str(path)):
        P.repair(path)
      assert path.read_bytes() == data  # refused: untouched
      return
    assert P.repair(path) == len(P.read_records(path)) and path.read_bytes() == want
