"""`qwenvl-jax tokenize` (parsed with only this subcommand registered, so other modules don't matter)."""

import argparse
import json

import pytest

from qwenvl_jax.cli import tokenize as cli
from tests.text.helpers import synthetic_corpus


def run(argv):
  parser = argparse.ArgumentParser()
  cli.register(parser.add_subparsers(dest="command", required=True))
  args = parser.parse_args(["tokenize", *argv])
  return args.handler(args)


def test_encode_decode_and_train(tmp_path, tiny_vocab_path, capsys):
  run(["--tokenizer", str(tiny_vocab_path), "--text", "<img>x", "--json"])
  ids = json.loads(capsys.readouterr().out)
  run(["--tokenizer", str(tiny_vocab_path), "--decode", ",".join(map(str, ids))])
  assert capsys.readouterr().out == "<img>x\n"
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("\n".join(synthetic_corpus(300)))
  run(["--train-sp", str(corpus), "--vocab-size", "350", "--out", str(tmp_path / "sp" / "tok"),
       "--json"])
  info = json.loads(capsys.readouterr().out)
  assert info["image_pad_id"] == info["vocab_size"] - 1
  run(["--tokenizer", str(tmp_path / "sp"), "--json"])
  assert json.loads(capsys.readouterr().out)["vocab_size"] == info["vocab_size"]
  with pytest.raises(FileNotFoundError, match="nope"):
    run(["--tokenizer", str(tmp_path / "nope.model")])
