"""`python -m qwenvl_jax ...` = the `qwenvl-jax` command."""

import sys

from qwenvl_jax.cli import main

if __name__ == "__main__":
  sys.exit(main())
