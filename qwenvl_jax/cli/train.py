"""`qwenvl-jax train --config configs/stage1.py:tiny --workdir DIR [--set k=v ...] [--resume] [--init CKPT]`.

Multi-host: every process runs the same command. `jax.distributed.initialize` is called when
--coordinator-address / JAX_COORDINATOR_ADDRESS is given (with --num-processes / JAX_NUM_PROCESSES and
--process-id / JAX_PROCESS_ID), or with --distributed for JAX's auto-detection (Cloud TPU, SLURM, ...).
With a record source (`--set data.source=jsonl --set "data.paths=('train.jsonl',)" --set
data.tokenizer=tok.model`) the tokenizer is copied to WORKDIR/tokenizer/, so `qwenvl-jax chat / eval /
convert` find it in the workdir.
Exit codes: 0 done, 2 bad input (one line), 3 diverged (a non-finite step: not applied, not saved), 143
preempted (SIGTERM, state saved: rerun with --resume).
"""

from __future__ import annotations

import os
import sys

EXIT_DIVERGED, EXIT_PREEMPTED = 3, 143


def register(subparsers):
  p = subparsers.add_parser("train", help="train a stage config (Table 8 of the paper)")
  p.add_argument("--config", required=True, help="stage config, e.g. configs/stage1.py:tiny")
  p.add_argument("--workdir", required=True, help="checkpoints, metrics.jsonl, TensorBoard events")
  p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                 help="override a config field, e.g. --set steps=10 --set optim.peak_lr=1e-4")
  p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in WORKDIR")
  p.add_argument("--init", default=None, help="initialise parameters from a workdir / checkpoint "
                                              "(e.g. the previous stage's)")
  p.add_argument("--distributed", action="store_true",
                 help="call jax.distributed.initialize() with auto-detection")
  p.add_argument("--coordinator-address", default=os.environ.get("JAX_COORDINATOR_ADDRESS"))
  p.add_argument("--num-processes", type=int, default=_env_int("JAX_NUM_PROCESSES"))
  p.add_argument("--process-id", type=int, default=_env_int("JAX_PROCESS_ID"))
  p.add_argument("--debug", action="store_true", help="show tracebacks")
  p.set_defaults(handler=run)


def _env_int(name):
  value = os.environ.get(name)
  return int(value) if value else None


def init_distributed(args):
  """Starts jax.distributed when asked to; must run before anything touches the devices."""
  import jax

  if args.coordinator_address:
    if jax.config.jax_platforms == "cpu" or os.environ.get("JAX_PLATFORMS") == "cpu":
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
  elif args.distributed:
    jax.distributed.initialize()


def run(args):
  from qwenvl_jax.config import apply_overrides, load_config_dict

  init_distributed(args)
  from qwenvl_jax.train.loop import TrainingDiverged, train

  config = apply_overrides(load_config_dict(args.config), args.overrides)
  try:
    result = train(config, args.workdir, resume=args.resume, init=args.init)
  except TrainingDiverged as e:
    print(f"qwenvl-jax train: {e}", file=sys.stderr)
    return EXIT_DIVERGED
  save_tokenizer(config, args.workdir)  # after train(): it refuses a workdir holding another run
  return EXIT_PREEMPTED if result["status"] == "preempted" else 0


def save_tokenizer(config, workdir):
  """Copies the data's tokenizer file(s) into WORKDIR/tokenizer/ (process 0), where checkpoint readers
  look for it."""
  import pathlib

  import jax

  from qwenvl_jax.ckpt.checkpoint import copy_tokenizer

  data = config.get("data") or {}
  path = data.get("tokenizer")
  if data.get("source", "synthetic") == "synthetic" or not path or jax.process_index() != 0:
    return
  path = pathlib.Path(path)
  files = [path] if path.is_file() else sorted(path.glob("*.tiktoken")) + sorted(path.glob("*.model"))
  if not files:
    raise FileNotFoundError(f"config field 'data.tokenizer': no tokenizer file at {path}")
  for f in files:
    copy_tokenizer(f, workdir)
