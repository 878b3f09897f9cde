"""Two processes x 4 CPU devices (jax.distributed on localhost) give the losses of one process with
8 devices: per-host data shards assembled into the same global batch, same sharded step."""

import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from qwenvl_jax.train.metrics import read_metrics
from tests.train.helpers import stage_config, write_init_checkpoint

ROOT = pathlib.Path(__file__).resolve().parents[2]
CLI = "import sys; from qwenvl_jax.cli import main; sys.exit(main(sys.argv[1:]))"


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _cmd(workdir, init, *extra):
  return [sys.executable, "-c", CLI, "train", "--config", "stage2:tiny",
          "--workdir", str(workdir), "--init", str(init), "--set", "steps=4",
          "--set", "checkpoint_every=2", *extra]


def _env(tmp_path, devices):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu")
  return env


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
  init = write_init_checkpoint(stage_config(2), tmp_path / "init")
  one = subprocess.run(_cmd(tmp_path / "one", init), cwd=ROOT, env=_env(tmp_path, 8),
                       capture_output=True, text=True, timeout=600)
  assert one.returncode == 0, one.stderr[-3000:]

  port = _free_port()
  procs = [subprocess.Popen(_cmd(tmp_path / "two", init, "--coordinator-address", f"localhost:{port}",
                                 "--num-processes", "2", "--process-id", str(i)),
                            cwd=ROOT, env=_env(tmp_path, 4), stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  errs = [p.communicate(timeout=600)[1] for p in procs]
  for p, err in zip(procs, errs):
    assert p.returncode == 0, err[-3000:]

  ref = [r["loss"] for r in read_metrics(tmp_path / "one")]
  got = [r["loss"] for r in read_metrics(tmp_path / "two")]
  assert len(ref) == len(got) == 4
  np.testing.assert_allclose(got, ref, rtol=1e-5)
  # Each process saved its own data-iterator state next to the shared arrays.
  names = sorted(p.name for p in (tmp_path / "two/checkpoints/4/data_state").iterdir())
  assert "process_0-of-2.json" in names and "process_1-of-2.json" in names
