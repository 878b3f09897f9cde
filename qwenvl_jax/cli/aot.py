"""`qwenvl-jax aot --config configs/stage2.py --topology v5p:2x2x1`: compile a step for a TPU slice
that is not here and print per-chip memory, FLOPs and the predicted step time (`perf/aot.py`)."""


def register(subparsers):
  p = subparsers.add_parser(
      "aot", help="compile the train (or inference) step for a TPU topology; print memory and speed")
  p.add_argument("--config", required=True,
                 help="stage config, e.g. configs/stage2.py (7B) or stage2:tiny")
  p.add_argument("--topology", required=True,
                 help="<generation>:<chips>, generation v4 | v5p | v5e | v6e, e.g. v5p:2x2x1, v5e:4x4; "
                      "or 'cpu' for the local devices")
  p.add_argument("--mesh", default=None,
                 help="mesh override, e.g. data=1,fsdp=4,tensor=1 (default: the config's mesh)")
  p.add_argument("--microbatch", type=int, default=None, metavar="N",
                 help="number of microbatches per step (overrides the config's grad_accum)")
  p.add_argument("--batch-size", type=int, default=None,
                 help="global batch override (default: the config's, i.e. the paper's)")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="override a config field, e.g. --set model.remat=dots")
  p.add_argument("--inference", action="store_true",
                 help="compile prefill and one decode step instead of the train step")
  p.add_argument("--infer-batch", type=int, default=8, help="inference batch (rows)")
  p.add_argument("--prompt-len", type=int, default=1024, help="inference prompt length")
  p.add_argument("--gen-len", type=int, default=512, help="new tokens (KV cache = prompt + gen)")
  p.add_argument("--images", type=int, default=None,
                 help="images per row (default: the data section's max_images; 1 for inference)")
  p.add_argument("--mfu", type=float, default=0.4,
                 help="assumed MFU for the step time estimate (default 0.4)")
  p.add_argument("--json", default=None, metavar="PATH", help="also write the report(s) as JSON")
  p.add_argument("--debug", action="store_true", help="show tracebacks")
  p.set_defaults(handler=run)


def run(args):
  import os

  # Compile-only: the local backend stays on the CPU even where libtpu is installed.
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import json
  import pathlib
  import sys

  from qwenvl_jax.cli import UserError
  from qwenvl_jax.config import apply_overrides, load_config_dict
  from qwenvl_jax.perf import aot

  if not 0 < args.mfu <= 1:
    raise UserError(f"--mfu must be in (0, 1], got {args.mfu}")
  cfg = apply_overrides(load_config_dict(args.config), args.set)
  log = lambda msg: print(msg, file=sys.stderr, flush=True)
  if args.inference:
    reports = aot.compile_inference(cfg, args.topology, mesh=args.mesh, batch=args.infer_batch,
                                    prompt_len=args.prompt_len, gen_len=args.gen_len,
                                    images_per_row=1 if args.images is None else args.images,
                                    assumed_mfu=args.mfu, log=log)
  else:
    reports = [aot.compile_train(cfg, args.topology, mesh=args.mesh, microbatches=args.microbatch,
                                 batch_size=args.batch_size, images_per_row=args.images,
                                 assumed_mfu=args.mfu, log=log)]
  print("\n\n".join(aot.format_report(r) for r in reports))
  if args.json:
    path = pathlib.Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(reports if args.inference else reports[0], indent=1))
    log(f"wrote {path}")
  return 0 if all(r["memory"]["fits"] is not False for r in reports) else 1
