"""`qwenvl-jax eval`: the paper's benchmarks on a checkpoint, or scoring of an existing predictions file.

  qwenvl-jax eval --task textvqa --data DIR --ckpt CKPT [--shots k] [--limit n]
  qwenvl-jax eval --task textvqa --data DIR --ckpt CKPT --mesh data=2,fsdp=1,tensor=4 --dtype bfloat16
  qwenvl-jax eval --task textvqa --data DIR --predictions preds.jsonl     (no model; JSON on last line)
  qwenvl-jax eval --task all --data ROOT --ckpt CKPT     (ROOT/{task name}/ per benchmark, e.g. ROOT/refcoco+)
  qwenvl-jax eval --task list [--verbose]       qwenvl-jax eval --task textvqa --describe
"""

from __future__ import annotations


def register(subparsers):
  p = subparsers.add_parser("eval", help="evaluate on the paper's benchmarks or score a predictions file",
                            description=__doc__.splitlines()[0])
  p.add_argument("--task", required=True,
                 help="task name, 'all' (every task with a folder under ROOT/{task}/), or 'list'")
  p.add_argument("--describe", action="store_true",
                 help="print the files the task expects under --data, its splits, prompt and metric variants")
  p.add_argument("--verbose", action="store_true", help="with --task list: also each task's expected files")
  p.add_argument("--data", help="the benchmark's folder (with --task all: the root holding one per task)")
  p.add_argument("--ckpt", help="checkpoint directory to evaluate (Orbax, a training workdir, or an HF dir "
                                "converted on load)")
  p.add_argument("--predictions", nargs="+", metavar="FILE",
                 help="score these predictions JSONL files (one, or the shards of a run) instead of running a "
                      "model; with --task all: one folder of {task}_{split}_{k}shot.predictions.jsonl")
  p.add_argument("--split", help="split to evaluate (default: the paper's)")
  p.add_argument("--shots", type=int, default=0, help="in-context examples per query (default 0)")
  p.add_argument("--shot-data", help="where the few-shot split lives if not under --data (single task)")
  p.add_argument("--seed", type=int, default=0, help="few-shot sampling seed (default 0)")
  p.add_argument("--limit", type=int, help="only the first n items")
  p.add_argument("--batch-size", type=int, default=8,
                 help="requests per model call (default 8); spread over the mesh's data x fsdp devices, so "
                      "make it a multiple of that")
  p.add_argument("--max-new-tokens", type=int,
                 help="override the task's decoding budget (default: the paper's per task; changes the numbers)")
  p.add_argument("--variant", help="metric variant (default: the one that reproduces the paper; --describe lists)")
  p.add_argument("--out", default="eval_out", help="folder for predictions and metrics (default eval_out)")
  p.add_argument("--log-samples", action="store_true",
                 help="each prediction line also holds the prompt text and the references")
  p.add_argument("--shard", help="I/N: run only the I-th of N interleaved shards (score them together later)")
  p.add_argument("--mesh", metavar="data=D,fsdp=F,tensor=T",
                 help="shard the model over a device mesh (one size may be -1: the rest); batches split over "
                      "data x fsdp, weights over fsdp and tensor (default: one device)")
  p.add_argument("--tensor-parallel", type=int, metavar="N",
                 help="shorthand for --mesh data=-1,fsdp=1,tensor=N")
  p.add_argument("--tokenizer", help="tokenizer file, for checkpoints that hold none (a training workdir's)")
  p.add_argument("--dtype", choices=("float32", "bfloat16"),
                 help="parameter/compute dtype (default: the checkpoint's; bfloat16 halves the memory)")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  p.add_argument("--quantize", choices=("int8", "int4", "nf4"), default=None,
                 help="weight-only quantisation of the model's linear kernels")
  p.set_defaults(handler=run)


def _mesh(args):
  """--mesh / --tensor-parallel -> a jax Mesh over the visible devices, or None (one device)."""
  from qwenvl_jax.cli import UserError

  if args.mesh and args.tensor_parallel:
    raise UserError("give --mesh or --tensor-parallel, not both")
  if args.tensor_parallel is not None and args.tensor_parallel < 1:
    raise UserError("--tensor-parallel must be >= 1")
  text = args.mesh or (f"data=-1,fsdp=1,tensor={args.tensor_parallel}" if args.tensor_parallel else None)
  if not text:
    return None
  from qwenvl_jax.perf.aot import parse_mesh
  from qwenvl_jax.sharding import create_mesh

  try:
    return create_mesh(parse_mesh(text))
  except ValueError as e:
    raise UserError(f"--mesh {text}: {e}") from None


def _load_model(args):
  """(predict_fn, score_fn) from `qwenvl_jax.infer.api.load_predictor`, sharded over --mesh."""
  from qwenvl_jax.cli import UserError
  from qwenvl_jax.evals.adapters import from_predictor
  from qwenvl_jax.infer import api

  mesh = _mesh(args)
  if mesh is not None:
    from qwenvl_jax.config import ConfigError
    from qwenvl_jax.sharding import check_batch_rows
    try:
      check_batch_rows(mesh, args.batch_size, "--batch-size")
    except ConfigError as e:
      raise UserError(str(e)) from None
  try:
    pred = api.load_predictor(args.ckpt, mesh=mesh, dtype=args.dtype, batch_size=args.batch_size,
                              tokenizer=args.tokenizer, quantize=args.quantize)
  except FileNotFoundError as e:
    raise UserError(str(e)) from None
  return from_predictor(pred)


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


def _with_budget(task, args):
  import dataclasses
  if args.max_new_tokens is None or task.likelihood:
    return task
  return dataclasses.replace(task, max_new_tokens=args.max_new_tokens,
                             min_new_tokens=min(task.min_new_tokens, args.max_new_tokens))


def _one(args, task, data, split, predict, score_fn, predictions=None, quiet_variant=False):
  from qwenvl_jax.evals import runner

  variant = _variant_for(task, args.variant) if quiet_variant else args.variant
  if predictions is not None:
    return runner.score_predictions(task, data, predictions, split=split, variant=variant, limit=args.limit)
  return runner.evaluate(_with_budget(task, args), data, predict, out_dir=args.out, shots=args.shots,
                         limit=args.limit, batch_size=args.batch_size, split=split, score_fn=score_fn,
                         variant=variant, seed=args.seed, shot_data_path=args.shot_data,
                         shard=_shard(args.shard), progress=not args.no_progress,
                         log_samples=args.log_samples)


def _run_all(args, predict, score_fn):
  """Every task with a folder under --data, each split the paper reports; a failing task is reported and
  the rest still run. -> (results, failures [(task/split, message)], skipped [str])."""
  import pathlib

  from qwenvl_jax.cli import UserError
  from qwenvl_jax.evals import runner
  from qwenvl_jax.evals.tasks import TASKS

  if args.shot_data:
    raise UserError("--shot-data applies to a single task; with --task all each task's folder holds its own")
  if args.predictions and len(args.predictions) != 1:
    raise UserError("with --task all, --predictions takes one folder")
  root = pathlib.Path(args.data)
  results, failures, skipped = [], [], []
  for task in TASKS.values():
    folder = root / task.name
    if not folder.is_dir():
      skipped.append(f"{task.name}: no folder {folder}")
      continue
    if args.shots and (task.shot_split is None or task.likelihood):
      skipped.append(f"{task.name}: no few-shot setting")
      continue
    splits = [args.split] if args.split else list(task.paper_splits)
    for split in splits:
      preds = None
      if args.predictions:
        preds = pathlib.Path(args.predictions[0]) / f"{runner.output_stem(task, split, args.shots)}.predictions.jsonl"
        if not preds.is_file():
          print(f"skip {task.name}/{split}: no {preds.name}")
          skipped.append(f"{task.name}/{split}: no {preds.name}")
          continue
      try:
        m = _one(args, task, folder, split, predict, score_fn, preds, quiet_variant=True)
      except Exception as e:  # noqa: BLE001 -- one broken benchmark must not hide the others' numbers
        if getattr(args, "debug", False):
          raise
        msg = (str(e).splitlines() or [""])[0]
        failures.append((f"{task.name}/{split}", f"{type(e).__name__}: {msg}"))
        print(f"{task.name:<16} {split:<16} FAILED: {type(e).__name__}: {msg}")
        continue
      results.append(m)
      score = "n/a" if m["score"] is None else f"{m['score']:.2f}"
      print(f"{task.name:<16} {split:<16} {m['metric']:<20} {m['variant']:<10} {score:>8}  n={m['n']}")
  if not results and not failures:
    raise UserError(f"no task folders (or prediction files) found under {root}")
  return results, failures, skipped


def describe(task) -> str:
  """What `--describe` prints: expected files, splits, decoding, metric and its variants."""
  decoding = ("scored by likelihood of ' A', ' B', ..." if task.likelihood else
              f"greedy, {task.min_new_tokens}..{task.max_new_tokens} new tokens" + (", ChatML turn" if task.chat else ""))
  variants = ", ".join(v + (f" (= {task.metric_variant(v)})" if task.metric_variant(v) != v else "")
                       for v in task.variants)
  return "\n".join([f"{task.name}: {task.description}",
                    f"  splits:   {', '.join(task.splits)} (default {task.default_split}; --task all runs "
                    f"{', '.join(task.paper_splits)})",
                    f"  decoding: {decoding}",
                    f"  metric:   {task.metric}; variants: {variants} (first = default)",
                    "  files under --data:",
                    *("    " + line for line in (task.files or "(see the reader's docstring)").splitlines())])


def run(args):
  import json

  from qwenvl_jax.cli import UserError
  from qwenvl_jax.evals.tasks import TASKS, get_task

  if args.task == "list":
    for t in TASKS.values():
      print(describe(t) + "\n" if args.verbose else
            f"{t.name:<16} {t.metric:<20} splits={','.join(t.splits):<34} {t.description}")
    return 0
  if args.describe:
    tasks = TASKS.values() if args.task == "all" else [get_task(args.task)]
    print("\n\n".join(describe(t) for t in tasks))
    return 0
  if not args.data:
    raise UserError("--data is required")
  if args.shots < 0 or (args.limit is not None and args.limit < 1):
    raise UserError("--shots must be >= 0 and --limit >= 1")
  if args.max_new_tokens is not None and args.max_new_tokens < 1:
    raise UserError("--max-new-tokens must be >= 1")
  task = None if args.task == "all" else get_task(args.task)  # a typo fails before any model loads
  predict = score_fn = None
  if args.predictions is None:
    if not args.ckpt:
      raise UserError("give --ckpt DIR to run a model, or --predictions FILE to score existing outputs")
    predict, score_fn = _load_model(args)

  if task is not None:
    result = _one(args, task, args.data, args.split, predict, score_fn, args.predictions)
    print(json.dumps(result, ensure_ascii=False))  # the machine-readable result: always the last line
    return 0
  results, failures, skipped = _run_all(args, predict, score_fn)
  for line in skipped:
    print(f"skipped {line}")
  for name, msg in failures:
    print(f"FAILED {name}: {msg}")
  if failures:
    print(f"{len(failures)} of {len(failures) + len(results)} task splits failed")
  print(json.dumps(results, ensure_ascii=False))
  return 1 if failures else 0
