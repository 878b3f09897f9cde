"""`qwenvl-jax params --config NAME`: parameter counts by component (abstract shapes only)."""


def register(subparsers):
  p = subparsers.add_parser("params", help="print parameter counts of a model config")
  p.add_argument("--config", required=True, help="config file or name, e.g. qwen_vl_7b or configs/tiny.py")
  p.add_argument("--json", action="store_true", help="print the counts as JSON")
  p.set_defaults(handler=run)


def run(args):
  import json

  from qwenvl_jax.config import load_model_config
  from qwenvl_jax.model.params import count_parameters, format_counts

  counts = count_parameters(load_model_config(args.config))
  print(json.dumps(counts) if args.json else format_counts(counts))
