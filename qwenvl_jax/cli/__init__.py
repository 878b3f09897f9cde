"""The `qwenvl-jax` command. Each module in this package adds one subcommand via `register()`.

Subcommand modules only parse arguments and call the importable API (`qwenvl_jax.*`); they import
their heavy dependencies inside the handler so `qwenvl-jax --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pathlib
import pkgutil
import sys


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="qwenvl-jax", description=__doc__.splitlines()[0])
  subparsers = parser.add_subparsers(dest="command", required=True)
  for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
    module = importlib.import_module(f"{__name__}.{info.name}")
    if hasattr(module, "register"):
      module.register(subparsers)
  _add_debug_flag(parser)
  return parser


def _add_debug_flag(parser: argparse.ArgumentParser):
  """`--debug` (tracebacks instead of one-line errors) on every subcommand that lacks it, nested
  ones (`data pack`) included. SUPPRESS keeps a nested parser's default from hiding a given flag."""
  for action in parser._actions:
    if isinstance(action, argparse._SubParsersAction):
      for sub in action.choices.values():
        if not any("--debug" in a.option_strings for a in sub._actions):
          sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                           help="show tracebacks instead of one-line errors")
        _add_debug_flag(sub)


class UserError(Exception):
  """An error caused by the user's input: printed as one line, no traceback."""


def quiet_library_logs():
  """Orbax reports through absl every parameter it reads or writes ("ParamInfo(...) created with
  ts_context=None", "Metadata file does not exist"), dozens of WARNING lines per command that say
  nothing to a user; TensorFlow (tfds) adds its C++ start-up lines. Only errors pass; --debug or
  QWENVL_JAX_LIBRARY_LOGS=1 keeps everything."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.ERROR)


GPU_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin")


def skip_absent_tpu(dev: str = "/dev") -> bool:
  """On a host without a TPU, the pinned libtpu (installed for `aot`'s TPU topologies) still tries to
  find one when JAX starts and prints half a dozen lines about hostnames and accelerator types before
  falling back to the CPU. When the user chose no platform, libtpu is installed, no TPU device node
  exists (/dev/accel* on v2-v5e, /dev/vfio/N on v5p and later) and no GPU plugin is installed, run on
  the CPU directly. -> whether JAX_PLATFORMS was set."""
  import importlib.util
  if "JAX_PLATFORMS" in os.environ or importlib.util.find_spec("libtpu") is None:
    return False
  root = pathlib.Path(dev)
  if any(root.glob("accel*")) or any(p.name.isdigit() for p in root.glob("vfio/*")):
    return False
  if any(importlib.util.find_spec(name) for name in GPU_PLUGINS):
    return False
  os.environ["JAX_PLATFORMS"] = "cpu"
  return True


def main(argv=None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  if not getattr(args, "debug", False) and os.environ.get("QWENVL_JAX_LIBRARY_LOGS") != "1":
    quiet_library_logs()
  skip_absent_tpu()
  try:
    return int(args.handler(args) or 0)
  except (UserError, OSError, ValueError, KeyError) as e:  # OSError: missing, unwritable, disk full
    if getattr(args, "debug", False):
      raise
    msg = e.args[0] if isinstance(e, KeyError) and e.args else e
    if isinstance(e, OSError) and e.filename is not None and str(e.filename) not in str(msg):
      msg = f"{msg}: {e.filename}"
    msg = str(msg).strip().splitlines()[0] if str(msg).strip() else type(e).__name__
    print(f"qwenvl-jax {args.command}: error: {msg}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
