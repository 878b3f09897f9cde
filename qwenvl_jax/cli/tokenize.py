"""`qwenvl-jax tokenize`: encode / decode with a tokenizer file, or train a SentencePiece tokenizer.

  qwenvl-jax tokenize --tokenizer ckpt_dir --text "Hello <img>"        ids (plain text: no specials)
  qwenvl-jax tokenize --tokenizer qwen.tiktoken --decode 151644,872,198
  qwenvl-jax tokenize --train-sp corpus.txt --vocab-size 2000 --out tok/tokenizer
  qwenvl-jax tokenize --train-sp data/shapes.jsonl --train-sp data/text.jsonl --vocab-size 400 \
      --model-vocab 512 --out tok/tokenizer     (records: their task texts; ids sized for configs/tiny.py)
"""

from __future__ import annotations

import re
from typing import Iterator


def register(subparsers):
  p = subparsers.add_parser("tokenize", help="encode/decode text, or train a SentencePiece tokenizer")
  p.add_argument("--tokenizer", help="a .tiktoken / .model file or a directory holding one")
  p.add_argument("--text", help="plain text to encode (special-token strings stay plain text)")
  p.add_argument("--decode", help="comma-separated ids to decode")
  p.add_argument("--skip-special", action="store_true", help="drop special tokens when decoding")
  p.add_argument("--train-sp", metavar="CORPUS", action="append",
                 help="train SentencePiece on a text file (one doc a line) or on the texts of a JSONL "
                      "dataset's records (raw or conversations); repeatable")
  p.add_argument("--vocab-size", type=int, default=2000, help="SentencePiece pieces (before specials)")
  p.add_argument("--n-extra", type=int, default=None, help="number of <|extra_N|> specials")
  p.add_argument("--model-vocab", type=int, default=None, metavar="N",
                 help="--train-sp: size the <|extra_N|> block so the tokenizer has exactly N ids, its "
                      "image ids at the top as the tiny/small model configs expect (vocab_size=N)")
  p.add_argument("--out", help="model prefix for --train-sp (writes PREFIX.model)")
  p.add_argument("--json", action="store_true", help="print JSON")
  p.set_defaults(handler=run)


def run(args):
  import json
  import pathlib

  from qwenvl_jax.cli import UserError
  from qwenvl_jax.text.tokenizer import SP_N_EXTRA, SentencePieceTokenizer, load_tokenizer

  if args.train_sp:
    if not args.out:
      raise UserError("--train-sp needs --out PREFIX")
    if args.model_vocab is not None and args.n_extra is not None:
      raise UserError("give --model-vocab or --n-extra, not both")
    for corpus in args.train_sp:
      if not pathlib.Path(corpus).is_file():
        raise FileNotFoundError(f"corpus file not found: {corpus}")
    texts = [line for corpus in args.train_sp for line in corpus_texts(corpus)]

    def train(n_extra):
      try:
        return SentencePieceTokenizer.train(texts, args.vocab_size, args.out, n_extra=n_extra)
      except RuntimeError as e:  # SentencePiece's own checks, e.g. a --vocab-size below the alphabet
        raise UserError(f"SentencePiece training failed: {str(e).splitlines()[0]}") from None

    tok = train(SP_N_EXTRA if args.n_extra is None else args.n_extra)
    if args.model_vocab is not None:
      n_extra = args.model_vocab - (tok.vocab_size - SP_N_EXTRA)
      if n_extra < 0:
        raise UserError(f"--model-vocab {args.model_vocab} is smaller than the trained tokenizer "
                        f"({tok.vocab_size - SP_N_EXTRA} ids without extras): lower --vocab-size")
      if n_extra != SP_N_EXTRA:
        tok = train(n_extra)
      if tok.vocab_size != args.model_vocab:  # SentencePiece training is deterministic
        raise UserError(f"retraining gave {tok.vocab_size} ids, not {args.model_vocab}")
    info = {"model": f"{args.out}.model", "vocab_size": tok.vocab_size, **tok.model_config_ids()}
    print(json.dumps(info) if args.json else "\n".join(f"{k}: {v}" for k, v in info.items()))
    return 0

  if not args.tokenizer:
    raise UserError("give --tokenizer PATH (or --train-sp)")
  tok = load_tokenizer(args.tokenizer, n_extra=args.n_extra)
  if args.text is not None:
    ids = tok.encode(args.text)
    print(json.dumps(ids) if args.json else " ".join(map(str, ids)))
  elif args.decode is not None:
    try:
      ids = [int(x) for x in args.decode.replace(" ", "").split(",") if x]
    except ValueError:
      raise UserError(f"--decode takes comma-separated integers, got {args.decode!r}") from None
    text = tok.decode(ids, skip_special=args.skip_special)
    print(json.dumps(text, ensure_ascii=False) if args.json else text)
  else:
    info = {"vocab_size": tok.vocab_size, "n_base": tok.n_base,
            "padded_vocab_size": tok.padded_vocab_size(), **tok.model_config_ids()}
    print(json.dumps(info) if args.json else "\n".join(f"{k}: {v}" for k, v in info.items()))
  return 0


_TAGS = re.compile(r"</?(?:ref|box|quad)>")
_IMAGE = re.compile(r"<img>.*?</img>", re.S)


def corpus_texts(path) -> Iterator[str]:
  """The lines of a text file, or for a .jsonl/.json dataset the plain text its records train on:
  every pre-training task's prompt and target (`data.tasks`) or the conversation turns, with image
  spans dropped and <ref>/<box>/<quad> tags removed (their bodies, e.g. box coordinates, are text)."""
  import pathlib

  from qwenvl_jax.data import tasks
  from qwenvl_jax.data.sources import read_jsonl
  from qwenvl_jax.text.conversation import DEFAULT_SYSTEM

  path = pathlib.Path(path)
  if path.suffix not in (".jsonl", ".json"):
    with path.open(encoding="utf-8") as f:
      yield from f
    return
  yield DEFAULT_SYSTEM
  for record in read_jsonl(path):
    if "conversations" in record:
      texts = [turn["value"] for turn in record["conversations"]]
    else:
      texts = [t for _, prompt, target in tasks.examples(record) for t in (prompt, target)]
    for text in texts:
      plain = _TAGS.sub("", _IMAGE.sub("", text)).strip()
      if plain:
        yield plain
