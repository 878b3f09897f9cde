"""Box strings: normalise/format/parse round trips (property-based) and a parser that never raises."""

import math

import pytest
from hypothesis import given, settings, strategies as st

from qwenvl_jax.text import boxes as B

SIZES = st.integers(1, 8000) | st.floats(1.0, 8000.0, allow_nan=False)


@st.composite
def image_and_box(draw):
  w, h = draw(SIZES), draw(SIZES)
  xs = sorted(draw(st.floats(0, 1)) * w for _ in range(2))
  ys = sorted(draw(st.floats(0, 1)) * h for _ in range(2))
  return w, h, (xs[0], ys[0], xs[1], ys[1])


@settings(max_examples=300, deadline=None)
@given(image_and_box(), st.text(st.characters(blacklist_characters="<>"), max_size=20))
def test_round_trip_within_one_unit(wh_box, phrase):
  w, h, box = wh_box
  norm = B.normalize_box(box, w, h)
  assert all(isinstance(v, int) and 0 <= v < 1000 for v in norm)
  text = "The answer: " + B.format_ref(phrase) + B.format_box(norm) + " done"
  parsed = B.parse_boxes(text)
  assert parsed == [B.ParsedBox(phrase, norm)]
  back = B.denormalize_box(parsed[0].box, w, h)
  for v, b, size in zip(box, back, (w, h, w, h)):
    assert abs(v - b) * 1000 / size <= 1 + 1e-9
  # Mapped to pixels per image (the answer has no image marker: the latest image).
  per_image = B.parse_boxes_per_image(text, [(10, 10), (w, h)])
  assert per_image[0] == [] and per_image[1] == [B.PixelBox(phrase, back)]


def test_rounding_is_documented_half_up_and_clamped():
  assert B.normalize_box((0, 0, 100, 100), 100, 100) == (0, 0, 999, 999)
  assert B.normalize_box((0.05, 0.0499, 0.5, 0.25), 100, 100) == (1, 0, 5, 3)  # 0.5 -> 1, 0.499 -> 0
  assert B.normalize_box((-5, -1, 150, 120), 100, 100) == (0, 0, 999, 999)
  with pytest.raises(ValueError):
    B.normalize_box((10, 0, 5, 5), 100, 100)
  with pytest.raises(ValueError):
    B.normalize_box((0, 0, math.nan, 5), 100, 100)
  with pytest.raises(ValueError):
    B.normalize_box((0, 0, 1, 1), 0, 100)


def test_denormalize_divisors():
  assert B.denormalize_box((0, 0, 500, 999), 200, 100) == (0, 0, 100, 99.9)
  assert B.denormalize_box((0, 0, 999, 999), 200, 100, divisor=999) == (0, 0, 200, 100)


def test_format():
  assert B.format_box((1, 2, 30, 400)) == "<box>(1,2),(30,400)</box>"
  assert B.format_ref("a red car") == "<ref>a red car</ref>"
  assert B.format_quad([(1, 2), (3, 4), (5, 6), (7, 8)]) == "<quad>(1,2),(3,4),(5,6),(7,8)</quad>"
  for bad in [(0, 0, 1000, 5), (5, 0, 4, 5), (0.5, 0, 1, 1), (-1, 0, 1, 1), (1, 2, 3)]:
    with pytest.raises(ValueError):
      B.format_box(bad)


def test_parse_examples():
  text = ("<ref>two dogs</ref><box>(1,2),(3,4)</box><box>(5,6),(7,8)</box> and a "
          "<ref>cat</ref> <box>( 10 , 20 ),(30,40)</box> lone <box>(0,0),(999,999)</box>"
          "<box>(9,9),(1,1)</box><box>(1,2),(3,1000)</box><box>(a,b),(c,d)</box>"
          "<box>(1,2),(3,4)<ref>open<box>(2,2),(3,3)</box><box>(4,4),(5,5)")
  assert B.parse_boxes(text) == [
      B.ParsedBox("two dogs", (1, 2, 3, 4)), B.ParsedBox("two dogs", (5, 6, 7, 8)),
      B.ParsedBox("cat", (10, 20, 30, 40)), B.ParsedBox(None, (0, 0, 999, 999)),
      B.ParsedBox(None, (2, 2, 3, 3))]
  assert B.parse_quads("<ref>It is</ref><quad>(568,121),(625,131),(624,182),(567,172)</quad>") == [
      B.ParsedQuad("It is", ((568, 121), (625, 131), (624, 182), (567, 172)))]
  assert B.parse_first_box("(12,34),(56,78)</box>") == (12, 34, 56, 78)
  assert B.parse_first_box("no box here") is None


def test_parse_boxes_per_image_follows_image_markers():
  text = ("Picture 1: <img>a.jpg</img>\n<box>(0,0),(500,500)</box> Picture 2: <img>b.jpg</img>\n"
          "<ref>it</ref><box>(100,100),(200,200)</box>")
  per = B.parse_boxes_per_image(text, [(1000, 2000), (10, 10)])
  assert per == [[B.PixelBox(None, (0, 0, 500, 1000))], [B.PixelBox("it", (1, 1, 2, 2))]]
  assert B.parse_boxes_per_image(text, []) == []
  assert B.parse_boxes_per_image(text, [(10, 10)])[0] == [B.PixelBox(None, (0, 0, 5, 5))]


FRAGMENTS = ["<box>", "</box>", "<ref>", "</ref>", "<quad>", "</quad>", "<img>", "</img>", "(", ")",
             ",", "12", "999", "1000", "-3", "1e5", "abc", " ", "\n", "狗", "99999999999999999999"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=5), max_size=40).map("".join)
       | st.text() | st.binary().map(lambda b: b.decode("latin-1")))
def test_parser_never_raises_and_returns_only_valid(text):
  for b in B.parse_boxes(text):
    x1, y1, x2, y2 = b.box
    assert 0 <= x1 <= x2 < 1000 and 0 <= y1 <= y2 < 1000
  for q in B.parse_quads(text):
    assert len(q.points) == 4 and all(0 <= v < 1000 for p in q.points for v in p)
  B.parse_boxes_per_image(text, [(640, 480), (100, 100)])
  B.parse_first_box(text)


@pytest.mark.parametrize("junk", [None, 123, b"<box>(1,2),(3,4)</box>"])
def test_parser_tolerates_non_strings(junk):
  assert B.parse_boxes(junk) == [] and B.parse_first_box(junk) is None
