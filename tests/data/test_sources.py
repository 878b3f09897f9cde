"""JSONL and ArrayRecord round trips, path resolution, and counted corrupt-image skips (97 of 100)."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from qwenvl_jax.data import sources, synth
from qwenvl_jax.data.skips import SkipCounter


def _png(value: int) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(np.full((12, 16, 3), value, np.uint8)).save(buf, "PNG")
  return buf.getvalue()


@pytest.fixture
def broken_set(tmp_path):
  """100 raw records with image files; #10 missing, #20 truncated, #30 not an image."""
  d = tmp_path / "set"
  (d / "img").mkdir(parents=True)
  lines = []
  for i in range(100):
    p = d / "img" / f"{i}.png"
    data = _png(i)
    if i == 20:
      data = data[: len(data) // 2]
    elif i == 30:
      data = b"GIF89a garbage"
    if i != 10:
      p.write_bytes(data)
    lines.append(json.dumps({"id": f"r{i}", "image": f"img/{i}.png", "width": 16, "height": 12,
                             "caption": f"image {i}"}))
  (d / "data.jsonl").write_text("\n".join(lines) + "\n")
  return d / "data.jsonl"


def test_corrupt_images_counted_97_of_100(broken_set):
  counter = SkipCounter()
  good = list(sources.decode_images(sources.read_raw(broken_set), counter, size=32))
  assert len(good) == 97
  assert counter.total == 3 and counter.counts == {"corrupt_image": 3}
  assert sorted(n.rsplit("/", 1)[-1] for n in counter.examples["corrupt_image"]) == ["10.png", "20.png", "30.png"]
  assert good[0]["pixels"][0].shape == (32, 32, 3)
  assert "skipped 3 samples" in counter.summary()


def test_corrupt_images_counted_through_array_record(broken_set, tmp_path):
  # Packing with verification drops all three at pack time ...
  c1 = SkipCounter()
  assert sources.pack(broken_set, tmp_path / "v.array_record", verify=True, counter=c1) == 97
  assert c1.total == 3
  # ... without it only the missing file; the other two are caught (and counted) when decoding.
  c2, c3 = SkipCounter(), SkipCounter()
  assert sources.pack(broken_set, tmp_path / "nv.array_record", verify=False, counter=c2) == 99
  src = sources.ArrayRecordSource(tmp_path / "nv.array_record")
  good = list(sources.decode_images(src, c3))
  assert len(good) == 97 and c2.total + c3.total == 3
  assert sorted(c3.examples["corrupt_image"]) == ["r20#image0", "r30#image0"]


def test_skip_counter_merges_and_pickles():
  import pickle
  a, b = SkipCounter(), SkipCounter()
  a.add("corrupt_image", "x")
  b.add("corrupt_image", "y")
  b.add("too_long", "z")
  a.merge(pickle.loads(pickle.dumps(b)).as_dict())
  assert a.counts == {"corrupt_image": 2, "too_long": 1} and a.total == 3


def test_raw_jsonl_round_trip(tmp_path):
  recs = list(synth.generate("shapes", 5, seed=9))
  assert sources.write_raw(recs, tmp_path / "out" / "s.jsonl") == 5
  back = list(sources.read_raw(tmp_path / "out" / "s.jsonl"))
  for a, b in zip(recs, back):
    assert open(b["image"], "rb").read() == a["image"]
    assert {**b, "image": None} == {**a, "image": None}
  line = json.loads((tmp_path / "out" / "s.jsonl").read_text().splitlines()[0])
  assert line["image"] == "images/shapes-9-00000000.png"  # stored relative


def test_conversations_resolve_paths(tmp_path):
  conv = {"id": "c1", "conversations": [
    {"from": "user", "value": "Picture 1: <img>imgs/a.png</img>\nPicture 2: <img>/abs/b.png</img>\nSame?"},
    {"from": "assistant", "value": "No."}]}
  (tmp_path / "d.jsonl").write_text(json.dumps(conv) + "\n")
  (tmp_path / "d.json").write_text(json.dumps([conv]))
  for name in ("d.jsonl", "d.json"):
    (rec,) = sources.read_conversations(tmp_path / name)
    a = str((tmp_path / "imgs" / "a.png").resolve())
    assert rec["images"] == [a, "/abs/b.png"]
    assert rec["conversations"][0]["value"] == f"Picture 1: <img>{a}</img>\nPicture 2: <img>/abs/b.png</img>\nSame?"
  (rec,) = sources.read_conversations(tmp_path / "d.jsonl", resolve_images=False)
  assert rec["images"] == ["imgs/a.png", "/abs/b.png"] and rec["conversations"] == conv["conversations"]
  assert sources.write_conversations([conv], tmp_path / "w.jsonl") == 1
  assert json.loads((tmp_path / "w.jsonl").read_text()) == conv


def test_malformed_sources_name_the_line(tmp_path):
  p = tmp_path / "bad.jsonl"
  p.write_text('{"id": "a", "conversations": [{"from": "user", "value": "hi"}]}\n{oops\n')
  with pytest.raises(sources.SourceError, match=r"bad.jsonl:2"):
    list(sources.read_conversations(p))
  p.write_text('{"id": "a", "conversations": [{"from": "human", "value": "hi"}]}\n')
  with pytest.raises(sources.SourceError, match=r"bad.jsonl:1.*'from'"):
    list(sources.read_conversations(p))


def test_record_encoding_round_trip():
  rec = {"id": "x", "image": b"\x89PNG...", "images": [b"a", b"", b"ccc"], "caption": "héllo 猫",
         "objects": [{"box": [1, 2, 3, 4]}], "empty": []}
  assert sources.decode_record(sources.encode_record(rec)) == rec
  with pytest.raises(sources.SourceError):
    sources.decode_record(b"nope")


def test_array_record_round_trip_raw(tmp_path):
  recs = list(synth.generate("text", 3, seed=1, size=128))
  assert sources.write_array_record(recs, tmp_path / "t.array_record") == 3
  src = sources.ArrayRecordSource(tmp_path / "t.array_record")
  assert len(src) == 3 and src[2] == recs[2] and list(src) == recs


def test_pack_conversations(tmp_path):
  (tmp_path / "imgs").mkdir()
  (tmp_path / "imgs" / "a.png").write_bytes(_png(1))
  (tmp_path / "imgs" / "b.png").write_bytes(_png(2))
  conv = {"id": "c", "conversations": [
    {"from": "user", "value": "Picture 1: <img>imgs/a.png</img>\nPicture 2: <img>imgs/b.png</img>\nDiff?"},
    {"from": "assistant", "value": "Brightness."}]}
  (tmp_path / "c.jsonl").write_text(json.dumps(conv) + "\n")
  assert sources.pack(tmp_path / "c.jsonl", tmp_path / "c.array_record") == 1
  (rec,) = sources.ArrayRecordSource(tmp_path / "c.array_record")
  assert rec["conversations"] == conv["conversations"]  # relative labels kept
  assert rec["images"] == [_png(1), _png(2)]
  imgs = sources.load_images(rec)
  assert [np.asarray(im)[0, 0, 0] for im in imgs] == [1, 2]
