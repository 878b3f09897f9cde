"""`qwenvl-jax data synth|pack`: write synthetic sets, pack JSONL datasets into ArrayRecord."""


def register(subparsers):
  p = subparsers.add_parser("data", help="synthetic data and dataset packing")
  sub = p.add_subparsers(dest="data_command", required=True)

  s = sub.add_parser("synth", help="generate a synthetic set (JSONL + images, chat JSONL, ArrayRecord, preview)")
  s.add_argument("--kind", required=True, choices=("shapes", "text", "docs"))
  s.add_argument("--n", type=int, required=True, help="number of images")
  s.add_argument("--out", required=True, help="output directory")
  s.add_argument("--seed", type=int, default=0)
  s.add_argument("--size", type=int, default=None,
                 help="image size in pixels, 32..2048 (default: 224 shapes, 448 text/docs)")
  s.add_argument("--workers", type=int, default=1, help="generator processes")
  s.add_argument("--max-objects", type=int, default=None, help="shapes: at most this many shapes per image (default 5)")
  s.add_argument("--radius", type=float, nargs=2, default=None, metavar=("MIN", "MAX"),
                 help="shapes: range of shape radii as fractions of the side (default 0.06 0.15)")
  s.add_argument("--single-turns", action="store_true",
                 help="also write {kind}_single.jsonl: a one-turn chat per object's box and per question, "
                      "worded as the chat evaluations ask")
  s.set_defaults(handler=run_synth)

  k = sub.add_parser("pack", help="JSONL (raw or conversations) -> ArrayRecord with the images embedded")
  k.add_argument("--src", required=True, help="JSONL or JSON file; image paths relative to it")
  k.add_argument("--out", required=True, help="output .array_record file")
  k.add_argument("--no-verify", action="store_true", help="do not decode images while packing")
  k.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
  k.set_defaults(handler=run_pack)


def run_synth(args):
  from qwenvl_jax.cli import UserError
  from qwenvl_jax.data.export import export_synth

  if args.n < 1:
    raise UserError("--n must be at least 1")
  options = {}
  if args.max_objects is not None or args.radius is not None:
    if args.kind != "shapes":
      raise UserError("--max-objects and --radius apply to --kind shapes")
    if args.max_objects is not None:
      if args.max_objects < 1:
        raise UserError("--max-objects must be at least 1")
      options["max_objects"] = args.max_objects
    if args.radius is not None:
      lo, hi = args.radius
      if not 0 < lo <= hi < 0.5:
        raise UserError("--radius wants 0 < MIN <= MAX < 0.5 (fractions of the image side)")
      options["radius"] = (lo, hi)
  res = export_synth(args.kind, args.n, args.out, seed=args.seed, size=args.size, workers=args.workers,
                     progress=True, single_turns=args.single_turns, **options)
  print(f"wrote {res.n} {args.kind} samples in {res.seconds:.1f}s ({res.images_per_s:.0f} images/s)")
  for name, path in res.paths.items():
    print(f"  {name:<13} {path}")


def run_pack(args):
  import pathlib

  from qwenvl_jax.data.skips import SkipCounter
  from qwenvl_jax.data.sources import pack

  if not pathlib.Path(args.src).is_file():
    raise FileNotFoundError(f"no such file: {args.src}")
  counter = SkipCounter()
  n = pack(args.src, args.out, verify=not args.no_verify, counter=counter, progress=True,
           overwrite=args.overwrite)
  print(f"wrote {n} records to {args.out}; {counter.summary()}")
  for reason, names in counter.examples.items():
    print(f"  {reason}: {', '.join(names)}{' ...' if counter.counts[reason] > len(names) else ''}")
  return 1 if n == 0 else 0
