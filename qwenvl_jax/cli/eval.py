"""`qwenvl-jax eval`: the paper's benchmarks on a checkpoint, or scoring of an existing predictions file.

  qwenvl-jax eval --task textvqa --data DIR --ckpt CKPT [--shots k] [--limit n]
  qwenvl-jax eval --task textvqa --data DIR --predictions preds.jsonl     (no model; JSON on last line)
  qwenvl-jax eval --task all --data ROOT --ckpt CKPT     (ROOT/{task name}/ per benchmark, e.g. ROOT/refcoco+)
  qwenvl-jax eval --task list
"""

from __future__ import annotations


def register(subparsers):
  p = subparsers.add_parser("eval", help="evaluate on the paper's benchmarks or score a predictions file",
                            description=__doc__.splitlines()[0])
  p.add_argument("--task", required=True, help="task name, 'all' (ROOT/{task}/ layout), or 'list'")
  p.add_argument("--data", help="the benchmark's folder (with --task all: the root holding one per task)")
  p.add_argument("--ckpt", help="checkpoint directory to evaluate")
  p.add_argument("--predictions", nargs="+", metavar="FILE",
                 help="score these predictions JSONL files (one, or the shards of a run) instead of running a "
                      "model; with --task all: one folder of {task}_{split}_{k}shot.predictions.jsonl")
  p.add_argument("--split", help="split to evaluate (default: the paper's)")
  p.add_argument("--shots", type=int, default=0, help="in-context examples per query (default 0)")
  p.add_argument("--shot-data", help="where the few-shot split lives if not under --data (single task)")
  p.add_argument("--seed", type=int, default=0, help="few-shot sampling seed")
  p.add_argument("--limit", type=int, help="only the first n items")
  p.add_argument("--batch-size", type=int, default=8)
  p.add_argument("--variant", help="metric variant (default: the one that reproduces the paper)")
  p.add_argument("--out", default="eval_out", help="folder for predictions and metrics (default eval_out)")
  p.add_argument("--shard", help="I/N: run only the I-th of N interleaved shards (score them together later)")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  p.add_argument("--quantize", choices=("int8", "int4", "nf4"), default=None,
                 help="weight-only quantisation of the model's linear kernels")
  p.set_defaults(handler=run)


def _load_model(ckpt: str, quantize: str | None = None):
  """(predict_fn, score_fn) from the inference package's `load_predictor(ckpt_dir)`."""
  from qwenvl_jax.cli import UserError
  try:
    from qwenvl_jax.infer import api
    load = api.load_predictor
  except (ModuleNotFoundError, AttributeError) as e:
    if isinstance(e, ModuleNotFoundError) and e.name not in ("qwenvl_jax.infer.api", "qwenvl_jax.infer"):
      raise
    raise UserError("model-based eval needs the inference package (qwenvl_jax.infer.api.load_predictor), "
                    "which this tree does not have yet; score existing outputs with --predictions FILE") from e
  from qwenvl_jax.evals.adapters import from_predictor
  return from_predictor(load(ckpt, quantize=quantize))


def _shard(text):
  from qwenvl_jax.cli import UserError
  if not text:
    return (0, 1)
  try:
    i, n = (int(v) for v in text.split("/"))
  except ValueError:
    raise UserError(f"--shard wants I/N, got {text!r}") from None
  if not 0 <= i < n:
    raise UserError(f"--shard {text}: need 0 <= I < N")
  return (i, n)


def _variant_for(task, variant):
  return variant if variant in task.variants else None


def _one(args, task, data, split, predict, score_fn, predictions=None, quiet_variant=False):
  from qwenvl_jax.evals import runner

  variant = _variant_for(task, args.variant) if quiet_variant else args.variant
  if predictions is not None:
    return runner.score_predictions(task, data, predictions, split=split, variant=variant, limit=args.limit)
  return runner.evaluate(task, data, predict, out_dir=args.out, shots=args.shots, limit=args.limit,
                         batch_size=args.batch_size, split=split, score_fn=score_fn, variant=variant,
                         seed=args.seed, shot_data_path=args.shot_data, shard=_shard(args.shard),
                         progress=not args.no_progress)


def _run_all(args, predict, score_fn):
  import pathlib

  from qwenvl_jax.cli import UserError
  from qwenvl_jax.evals import runner
  from qwenvl_jax.evals.tasks import TASKS

  if args.shot_data:
    raise UserError("--shot-data applies to a single task; with --task all each task's folder holds its own")
  if args.predictions and len(args.predictions) != 1:
    raise UserError("with --task all, --predictions takes one folder")
  root = pathlib.Path(args.data)
  results = []
  for task in TASKS.values():
    folder = root / task.name
    if not folder.is_dir():
      continue
    if args.shots and (task.shot_split is None or task.likelihood):
      print(f"skip {task.name}: no few-shot setting")
      continue
    splits = [args.split] if args.split else list(task.paper_splits)
    for split in splits:
      preds = None
      if args.predictions:
        preds = pathlib.Path(args.predictions[0]) / f"{runner.output_stem(task, split, args.shots)}.predictions.jsonl"
        if not preds.is_file():
          print(f"skip {task.name}/{split}: no {preds.name}")
          continue
      m = _one(args, task, folder, split, predict, score_fn, preds, quiet_variant=True)
      results.append(m)
      score = "n/a" if m["score"] is None else f"{m['score']:.2f}"
      print(f"{task.name:<16} {split:<16} {m['metric']:<20} {m['variant']:<10} {score:>8}  n={m['n']}")
  if not results:
    raise UserError(f"no task folders (or prediction files) found under {root}")
  return results


def run(args):
  import json

  from qwenvl_jax.cli import UserError
  from qwenvl_jax.evals.tasks import TASKS, get_task

  if args.task == "list":
    for t in TASKS.values():
      print(f"{t.name:<16} {t.metric:<20} splits={','.join(t.splits):<34} {t.description}")
    return 0
  if not args.data:
    raise UserError("--data is required")
  if args.shots < 0 or (args.limit is not None and args.limit < 1):
    raise UserError("--shots must be >= 0 and --limit >= 1")
  task = None if args.task == "all" else get_task(args.task)  # a typo fails before any model loads
  predict = score_fn = None
  if args.predictions is None:
    if not args.ckpt:
      raise UserError("give --ckpt DIR to run a model, or --predictions FILE to score existing outputs")
    predict, score_fn = _load_model(args.ckpt, args.quantize)

  if task is None:
    result = _run_all(args, predict, score_fn)
  else:
    result = _one(args, task, args.data, args.split, predict, score_fn, args.predictions)
  print(json.dumps(result, ensure_ascii=False))  # the machine-readable result: always the last line
  return 0
