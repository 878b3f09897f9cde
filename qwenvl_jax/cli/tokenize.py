"""`qwenvl-jax tokenize`: encode / decode with a tokenizer file, or train a SentencePiece tokenizer.

  qwenvl-jax tokenize --tokenizer ckpt_dir --text "Hello <img>"        ids (plain text: no specials)
  qwenvl-jax tokenize --tokenizer qwen.tiktoken --decode 151644,872,198
  qwenvl-jax tokenize --train-sp corpus.txt --vocab-size 2000 --out tok/tokenizer
"""


def register(subparsers):
  p = subparsers.add_parser("tokenize", help="encode/decode text, or train a SentencePiece tokenizer")
  p.add_argument("--tokenizer", help="a .tiktoken / .model file or a directory holding one")
  p.add_argument("--text", help="plain text to encode (special-token strings stay plain text)")
  p.add_argument("--decode", help="comma-separated ids to decode")
  p.add_argument("--skip-special", action="store_true", help="drop special tokens when decoding")
  p.add_argument("--train-sp", metavar="CORPUS", help="train SentencePiece on a text file (one doc a line)")
  p.add_argument("--vocab-size", type=int, default=2000, help="SentencePiece pieces (before specials)")
  p.add_argument("--n-extra", type=int, default=None, help="number of <|extra_N|> specials")
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
    corpus = pathlib.Path(args.train_sp)
    if not corpus.is_file():
      raise FileNotFoundError(f"corpus file not found: {corpus}")
    with corpus.open(encoding="utf-8") as f:
      tok = SentencePieceTokenizer.train(
          f, args.vocab_size, args.out, n_extra=SP_N_EXTRA if args.n_extra is None else args.n_extra)
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
