"""`python -m experiments.train_stage ARGS` = `qwenvl-jax train ARGS` (kept so the commands recorded in
experiments/results/*.json replay as they were run; the drivers now call `qwenvl-jax train`)."""

import sys

from qwenvl_jax.cli import main

if __name__ == "__main__":
  sys.exit(main(["train", *sys.argv[1:]]))
