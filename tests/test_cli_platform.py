"""`qwenvl-jax` on a host without a TPU: the pinned libtpu's start-up noise is skipped, and the user's
own platform choice (or a real TPU / GPU) is never overridden."""

import importlib.util
import os
import subprocess
import sys

import pytest

from qwenvl_jax import cli

# Every line libtpu prints when it looks for a TPU and finds none names a TPU_* variable to set (which
# lines appear varies from run to run: TPU_ACCELERATOR_TYPE always, TPU_WORKER_HOSTNAMES at times).
LIBTPU_NOISE = "TPU_"
START_JAX = "import jax; print(jax.devices()[0].platform)"


def _python(code: str) -> subprocess.CompletedProcess:
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def no_platform(monkeypatch):
  monkeypatch.delenv("JAX_PLATFORMS", raising=False)
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: object() if name == "libtpu" else None)


def test_cpu_chosen_without_tpu_device_nodes(no_platform, tmp_path):
  (tmp_path / "null").touch()
  assert cli.skip_absent_tpu(str(tmp_path)) is True
  assert os.environ["JAX_PLATFORMS"] == "cpu"


@pytest.mark.parametrize("node", ["accel0", "vfio/0"])
def test_tpu_host_left_alone(no_platform, tmp_path, node):
  (tmp_path / node).parent.mkdir(parents=True, exist_ok=True)
  (tmp_path / node).touch()
  assert cli.skip_absent_tpu(str(tmp_path)) is False
  assert "JAX_PLATFORMS" not in os.environ


def test_users_choice_and_gpu_plugins_left_alone(monkeypatch, tmp_path):
  monkeypatch.setenv("JAX_PLATFORMS", "tpu")
  assert cli.skip_absent_tpu(str(tmp_path)) is False and os.environ["JAX_PLATFORMS"] == "tpu"
  monkeypatch.delenv("JAX_PLATFORMS")
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: object() if name in ("libtpu", "jax_cuda12_plugin") else None)
  assert cli.skip_absent_tpu(str(tmp_path)) is False and "JAX_PLATFORMS" not in os.environ


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None or any(
    p.startswith("accel") or p == "vfio" for p in os.listdir("/dev")), reason="needs libtpu on a host without a TPU")
def test_jax_starts_quietly_through_the_cli():
  plain = _python(START_JAX)
  assert plain.returncode == 0 and LIBTPU_NOISE in plain.stderr  # what users saw before
  through_cli = _python("from qwenvl_jax import cli; cli.skip_absent_tpu(); " + START_JAX)
  assert through_cli.returncode == 0, through_cli.stderr
  assert through_cli.stdout.strip() == "cpu"
  assert LIBTPU_NOISE not in through_cli.stderr and "libtpu" not in through_cli.stderr
