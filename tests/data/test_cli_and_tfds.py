"""`qwenvl-jax data synth|pack` end to end, and the TFDS builder round trip (no TensorFlow needed)."""

import json

import numpy as np

from qwenvl_jax.cli import main
from qwenvl_jax.data import sources, synth
from qwenvl_jax.data.preprocess import load_image


def test_synth_then_pack(tmp_path, capsys):
  out = tmp_path / "shapes"
  assert main(["data", "synth", "--kind", "shapes", "--n", "5", "--out", str(out), "--seed", "3", "--size", "96"]) == 0
  for name in ("shapes.jsonl", "shapes_chat.jsonl", "shapes.array_record", "preview.png"):
    assert (out / name).is_file(), name
  assert len(list((out / "images").glob("*.png"))) == 5
  raw = list(sources.read_raw(out / "shapes.jsonl"))
  want = list(synth.generate("shapes", 5, seed=3, size=96))
  assert [r["id"] for r in raw] == [r["id"] for r in want]
  assert list(sources.ArrayRecordSource(out / "shapes.array_record")) == want
  chat = [json.loads(line) for line in (out / "shapes_chat.jsonl").read_text().splitlines()]
  assert chat[0]["conversations"][0]["value"].startswith("Picture 1: <img>images/shapes-3-00000000.png</img>\n")

  dst = tmp_path / "chat.array_record"
  assert main(["data", "pack", "--src", str(out / "shapes_chat.jsonl"), "--out", str(dst)]) == 0
  assert "wrote 5 records" in capsys.readouterr().out
  assert len(sources.ArrayRecordSource(dst)) == 5


def test_cli_rejects_bad_args(tmp_path, capsys):
  assert main(["data", "synth", "--kind", "shapes", "--n", "0", "--out", str(tmp_path)]) == 2
  assert main(["data", "pack", "--src", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "x")]) == 2
  assert "no such file" in capsys.readouterr().err


def test_tfds_builder_round_trip(tmp_path):
  import tensorflow_datasets as tfds

  from qwenvl_jax.data import tfds_source

  b = tfds_source.make_builder("shapes", 4, 2, seed=7, size=64, data_dir=str(tmp_path))
  b.download_and_prepare()
  want = {r["id"]: r for r in synth.generate("shapes", 6, seed=7, size=64)}
  for split, n in (("train", 4), ("test", 2)):
    src = tfds.data_source("qwenvl_synth_shapes", split=split, data_dir=str(tmp_path))
    assert len(src) == n
    for i in range(n):
      got = tfds_source.from_example(src[i])
      ref = want[got["id"]]
      assert got["caption"] == ref["caption"] and got["qa"] == ref["qa"]
      assert got["objects"] == [{k: o[k] for k in ("phrase", "box", "span")} for o in ref["objects"]]
      assert np.array_equal(np.asarray(load_image(got["image"])), np.asarray(load_image(ref["image"])))
  recs = list(tfds_source.read_prepared("qwenvl_synth_shapes", split="test", data_dir=str(tmp_path)))
  assert len(recs) == 2 and all(r["caption"] and r["width"] == 64 for r in recs)
