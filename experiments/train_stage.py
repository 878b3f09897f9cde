"""`qwenvl-jax train` for the experiments: same flags, plus the tokenizer copied into the workdir.

  python -m experiments.train_stage --config configs/experiments.py:stage2 --workdir W --init W1 \
      --set data.paths="('d/shapes.jsonl','d/words.jsonl')" --set data.tokenizer=d/tokenizer/sp.model

Data: `qwenvl_jax.data.pipeline.make_train_iterator` when the package has it (what `qwenvl-jax train`
uses), else this folder's adapter over the same grain pipeline (`experiments/data_iter.py`). The
tokenizer is copied to W/tokenizer/ so `qwenvl-jax eval --ckpt W` and `qwenvl-jax chat` can load W.
"""

from __future__ import annotations

import argparse
import json
import sys


def iterator_for(config):
  """None (the train loop builds the pipeline's own iterator) or the stop-gap adapter."""
  from qwenvl_jax.data import pipeline
  if config.data.source == "synthetic" or hasattr(pipeline, "make_train_iterator"):
    return None
  from experiments import data_iter
  return data_iter.make_iterator(config)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", required=True)
  p.add_argument("--workdir", required=True)
  p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
  p.add_argument("--init", default=None)
  args = p.parse_args(argv)

  from qwenvl_jax.ckpt.orbax_io import copy_tokenizer
  from qwenvl_jax.config import apply_overrides, load_config_dict
  from qwenvl_jax.train.loop import train

  config = apply_overrides(load_config_dict(args.config), args.overrides)
  if config.data.get("tokenizer"):
    copy_tokenizer(config.data.tokenizer, args.workdir)
  result = train(config, args.workdir, init=args.init, iterator=iterator_for(config))
  print(json.dumps({"status": result["status"], "step": result["step"],
                    "final_loss": result["losses"][-1] if result["losses"] else None}))
  return 0 if result["status"] == "done" else 1


if __name__ == "__main__":
  sys.exit(main())
