"""`qwenvl-jax tokenize --train-sp DATASET.jsonl --model-vocab N`: a vocabulary trained on a dataset's
training texts, its ids sized for a model config (image ids at the top of N)."""

import argparse
import json

import pytest

from qwenvl_jax.cli import UserError
from qwenvl_jax.cli import tokenize as cli
from qwenvl_jax.data import sources, synth
from qwenvl_jax.data.chat_format import to_conversation
from qwenvl_jax.text.tokenizer import load_tokenizer


def run(argv):
  parser = argparse.ArgumentParser()
  cli.register(parser.add_subparsers(dest="command", required=True))
  args = parser.parse_args(["tokenize", *argv])
  return args.handler(args)


def test_records_corpus_and_model_vocab(tmp_path, capsys):
  raw = tmp_path / "shapes.jsonl"
  sources.write_raw(synth.generate("shapes", 30, seed=0, size=64), raw)
  chat = tmp_path / "chat.jsonl"
  chat.write_text("".join(json.dumps(to_conversation(r, r["image"])) + "\n" for r in sources.read_raw(raw)))

  texts = list(cli.corpus_texts(raw)) + list(cli.corpus_texts(chat))
  first = next(sources.read_raw(raw))
  assert any(first["caption"] in t for t in texts)
  assert any(t.startswith("(") and "),(" in t for t in texts)  # box bodies stay, as the model sees them
  assert not any(tag in t for t in texts for tag in ("<img>", "<ref>", "<box>", "images/"))

  run(["--train-sp", str(raw), "--train-sp", str(chat), "--vocab-size", "340", "--model-vocab", "420",
       "--out", str(tmp_path / "tok" / "tokenizer"), "--json"])
  info = json.loads(capsys.readouterr().out)
  assert info["vocab_size"] == 420 and info["image_pad_id"] == 419 and info["image_start_id"] == 417
  tok = load_tokenizer(tmp_path / "tok" / "tokenizer.model")  # the sidecar keeps the sizing
  assert tok.vocab_size == 420
  with pytest.raises(UserError, match="SentencePiece"):  # below the corpus alphabet: a one-line error
    run(["--train-sp", str(raw), "--vocab-size", "50", "--out", str(tmp_path / "t2" / "tok")])
  assert tok.decode(tok.encode(first["caption"])) == first["caption"]
