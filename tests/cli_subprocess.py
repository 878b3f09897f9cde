"""Running the real `qwenvl-jax` command in a child process, for tests of what a user sees."""

import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def run_cli(*args, timeout: float = 120) -> subprocess.CompletedProcess:
  """`qwenvl-jax ARGS` (this tree's code, one CPU device); returns the finished process."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  env.pop("XLA_FLAGS", None)
  argv = [sys.executable, "-c", "import sys; from qwenvl_jax.cli import main; sys.exit(main())",
          *map(str, args)]
  return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)


def error_line(proc: subprocess.CompletedProcess) -> str:
  """The one stderr line of a refused command (asserting there is exactly one, and no traceback)."""
  lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("WARNING:absl")]
  assert proc.returncode == 2, (proc.returncode, proc.stderr)
  assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
  return lines[0]


def tree_bytes(path) -> dict:
  """{relative path: bytes} of every file under `path`: to show a command left it untouched."""
  path = pathlib.Path(path)
  if path.is_file():
    return {".": path.read_bytes()}
  return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def cli_env(tmp_path) -> dict:
  """This environment plus a persistent compilation cache under `tmp_path`: training subprocesses
  share compiled executables (the same step compiles once, not once per child)."""
  env = dict(os.environ)
  env.update(JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  return env
