"""Each cleaning rule removes (or rewrites) exactly what it should, and the report counts it."""

import io

import numpy as np
from PIL import Image

from qwenvl_jax.data import cleaning as C


def cap(caption, i=0, w=300, h=300, **kw):
  return {"id": f"r{i}", "image": b"", "width": w, "height": h, "caption": caption, **kw}


def run(rule, records):
  out, report = C.clean_list(records, [rule])
  return out, report.rules[0]


def test_image_size_and_aspect():
  recs = [cap("a b", 0, 300, 300), cap("a b", 1, 100, 400), cap("a b", 2, 1000, 250), cap("a b", 3, 224, 224)]
  out, s = run(C.min_image_size(224), recs)
  assert [r["id"] for r in out] == ["r0", "r2", "r3"] and s.removed == 1 and s.seen == 4
  out, s = run(C.max_aspect_ratio(3.0), recs)
  assert [r["id"] for r in out] == ["r0", "r3"] and s.removed == 2


def test_image_size_from_header_when_missing():
  buf = io.BytesIO()
  Image.new("RGB", (50, 60)).save(buf, "PNG")
  out, s = run(C.min_image_size(55), [{"id": "a", "image": buf.getvalue(), "caption": "x y"}])
  assert out == [] and s.removed == 1


def test_caption_length():
  recs = [cap("dog"), cap("a dog runs"), cap(" ".join(["word"] * 200)), cap("一只猫在睡觉"), cap(None)]
  out, s = run(C.caption_length(2, 128), recs)
  assert [r["caption"] for r in out] == ["a dog runs", "一只猫在睡觉"] and s.removed == 3


def test_special_tags_before_html():
  recs = [cap("<PERSON> at the beach"), cap("<b>A dog</b> &amp; a cat"), cap("<br/>")]
  out, report = C.clean_list(recs, [C.special_tags(), C.strip_html()])
  assert [r["caption"] for r in out] == ["A dog & a cat"]
  assert report["special_tags"].removed == 1
  assert report["strip_html"].removed == 1 and report["strip_html"].modified == 1


def test_irregular_patterns():
  out, s = run(C.irregular_patterns(), [cap("see  http://x.com/a?b=1 now!!!!"), cap("fine text")])
  assert [r["caption"] for r in out] == ["see now!", "fine text"] and s.modified == 1 and s.removed == 0


def test_emoji_and_language():
  texts = ["nice dog 😀", "love ❤️ it", "café au lait", "Привет мир", "一只猫 and a cat", "“quoted” — dash…",
           "plain english, 100% ok!"]
  out, s = run(C.no_emoji(), [cap(t) for t in texts])
  assert s.removed == 2 and all("😀" not in r["caption"] for r in out)
  out, s = run(C.english_or_chinese(), [cap(t) for t in texts[2:]])
  assert [r["caption"] for r in out] == texts[4:] and s.removed == 2


def _png(arr, level=6):
  buf = io.BytesIO()
  Image.fromarray(arr).save(buf, "PNG", compress_level=level)
  return buf.getvalue()


def test_dedup_by_hash():
  a = np.zeros((8, 8, 3), np.uint8)
  b = np.full((8, 8, 3), 200, np.uint8)
  recs = [{"id": "1", "image": _png(a)}, {"id": "2", "image": _png(b)}, {"id": "3", "image": _png(a)},
          {"id": "4", "image": _png(a, level=0)}]  # same pixels, different bytes
  out, s = run(C.dedup_images("bytes"), recs)
  assert [r["id"] for r in out] == ["1", "2", "4"] and s.removed == 1
  out, s = run(C.dedup_images("pixels"), recs)
  assert [r["id"] for r in out] == ["1", "2"] and s.removed == 2


def test_longest_caption_per_image():
  a, b = _png(np.zeros((4, 4, 3), np.uint8)), _png(np.ones((4, 4, 3), np.uint8))
  recs = [{"id": "1", "image": a, "caption": "a dog"}, {"id": "2", "image": b, "caption": "x"},
          {"id": "3", "image": a, "caption": "a brown dog on grass"}, {"id": "4", "image": a, "caption": "dog"}]
  out, s = run(C.longest_caption_per_image(), recs)
  assert [r["id"] for r in out] == ["3", "2"] and s.removed == 2 and s.seen == 4


def _page(*texts, i=0):
  return {"id": f"p{i}", "image": b"", "width": 500, "height": 500,
          "words": [{"text": t, "box": [0, 0, 1, 1], "quad": [[0, 0]] * 4} for t in texts]}


def test_ocr_rules():
  pages = [_page("short", i=0), _page("a long enough page", "of words", i=1), _page("Łódź city centre", i=2),
           _page("private \ue000 glyph here", i=3), _page("plane 15 \U000F0001 glyph", i=4)]
  out, s = run(C.ocr_char_count(10, 100), pages)
  assert [p["id"] for p in out] == ["p1", "p2", "p3", "p4"] and s.removed == 1
  out, s = run(C.no_latin_extended(), pages)
  assert "p2" not in [p["id"] for p in out] and s.removed == 1
  out, s = run(C.no_private_use(), pages)
  assert [p["id"] for p in out] == ["p0", "p1", "p2"] and s.removed == 2


def test_remove_nested_refs_keeps_most_spans():
  objs = [{"phrase": "a man with a red hat", "box": [0, 0, 9, 9], "span": [0, 20]},
          {"phrase": "a red hat", "box": [1, 1, 3, 3], "span": [11, 20]},
          {"phrase": "a man", "box": [0, 0, 5, 9], "span": [0, 5]},
          {"phrase": "dogs", "box": [5, 5, 9, 9], "span": [25, 29]},
          {"phrase": "dogs", "box": [6, 6, 9, 9], "span": [25, 29]},
          {"phrase": "free", "box": [2, 2, 4, 4]}]
  r = cap("a man with a red hat and dogs", objects=objs)
  out, s = run(C.remove_nested_refs(), [r, cap("no objects")])
  assert [o["phrase"] for o in out[0]["objects"]] == ["a red hat", "a man", "dogs", "dogs", "free"]
  assert s.modified == 1 and s.removed == 0


def test_most_confident_answer():
  r = cap("x", qa=[{"question": "q?", "answers": [{"answer": "red", "confidence": "maybe"},
                                                 {"answer": "blue", "confidence": "yes"},
                                                 {"answer": "green", "confidence": "yes"},
                                                 {"answer": "green", "confidence": "yes"}]},
                   {"question": "p?", "answer": "kept"}])
  out, s = run(C.most_confident_answer(), [r])
  assert out[0]["qa"] == [{"question": "q?", "answer": "green"}, {"question": "p?", "answer": "kept"}]


def test_recipe_report_counts_everything():
  recs = [cap("A dog on the grass", 0), cap("tiny", 1, 50, 50), cap("<PERSON> smiling at camera", 2),
          cap("a cat 😀 sleeping", 3), cap("ein schöner Tag heute", 4), cap("ok", 5)]
  for i, r in enumerate(recs):
    r["image"] = _png(np.full((4, 4, 3), i, np.uint8))
  out, report = C.clean_list(recs, C.paper_caption_rules())
  assert [r["id"] for r in out] == ["r0"]
  assert report.input == 6 and report.output == 1
  assert sum(r.removed for r in report.rules) == 5
  assert report["min_image_size"].removed == 1 and report["special_tags"].removed == 1
  assert report["no_emoji"].removed == 1 and report["english_or_chinese"].removed == 1
  assert report["caption_length"].removed == 1
  assert "kept 1 of 6" in str(report)
