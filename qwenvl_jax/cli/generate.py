"""`qwenvl-jax generate --ckpt DIR --input requests.jsonl --output answers.jsonl`: batch inference.

Each input line: {"id": ..., "messages": [OpenAI-style]} or {"id": ..., "images": [paths],
"prompt": "..."}; per-line max_tokens / temperature / top_p / seed / stop override the flags.
Requests run through the serving engine (continuous batching over --batch-size slots). Answers are
appended one line at a time; rerunning the same command skips the ids already answered.
"""


def register(subparsers):
  p = subparsers.add_parser("generate", help="batch inference: a JSONL of requests -> answers")
  p.add_argument("--ckpt", required=True, help="Orbax checkpoint directory (or an HF directory)")
  p.add_argument("--input", required=True, help="requests, one JSON object per line")
  p.add_argument("--output", required=True, help="answers JSONL (appended; a rerun resumes)")
  p.add_argument("--batch-size", type=int, default=16, metavar="N", help="requests decoded together")
  p.add_argument("--max-tokens", type=int, default=512, help="default new-token budget")
  p.add_argument("--temperature", type=float, default=0.0, help="default temperature (0 = greedy)")
  p.add_argument("--top-p", type=float, default=1.0, help="default top-p")
  p.add_argument("--seed", type=int, default=0)
  from qwenvl_jax.cli.chat import add_model_flags

  add_model_flags(p)
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  p.add_argument("--debug", action="store_true", help="show tracebacks")
  p.set_defaults(handler=run)


def run(args):
  import pathlib

  from qwenvl_jax.cli import UserError
  from qwenvl_jax.cli.chat import _load

  src, dst = pathlib.Path(args.input), pathlib.Path(args.output)
  if not src.is_file():
    raise UserError(f"--input {src} not found")
  if src.resolve() == dst.resolve():
    raise UserError("--output must differ from --input")
  if args.batch_size < 1 or args.max_tokens < 1:
    raise UserError("--batch-size and --max-tokens must be >= 1")
  predictor = _load(args)

  from qwenvl_jax.serve.batch import run_batch
  from qwenvl_jax.serve.engine import BatchEngine

  engine = BatchEngine(predictor.generator, slots=args.batch_size)
  defaults = {"max_tokens": args.max_tokens, "temperature": args.temperature, "top_p": args.top_p,
              "seed": args.seed}
  try:
    answered, failed = run_batch(predictor, engine, src, dst, defaults=defaults,
                                 window=4 * args.batch_size, progress=not args.no_progress)
  finally:
    engine.close()
  print(f"answered {answered} requests -> {dst}" + (f"; {failed} failed (see above)" if failed else ""))
  return 1 if failed else 0
