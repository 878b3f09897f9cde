"""A non-editable install works from any directory: configs ship inside the package, `python -m`."""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_install_finds_packaged_configs(tmp_path):
  target = tmp_path / "site"
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                  "--target", str(target), str(ROOT)], check=True, cwd=tmp_path)
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env.update(PYTHONPATH=str(target), JAX_PLATFORMS="cpu")
  run = lambda *args: subprocess.run([sys.executable, "-m", "qwenvl_jax", *args], cwd=tmp_path, env=env,
                                     capture_output=True, text=True)
  out = run("params", "--config", "qwen_vl_7b")
  assert out.returncode == 0, out.stderr
  assert "9,656,935,168" in out.stdout
  for spec in ("stage2:tiny", "configs/stage2.py:tiny"):
    assert run("params", "--config", spec).returncode == 0
  probe = subprocess.run([sys.executable, "-c", "import qwenvl_jax; print(qwenvl_jax.__file__)"],
                         cwd=tmp_path, env=env, capture_output=True, text=True)
  assert probe.stdout.startswith(str(target))  # the installed copy, not the checkout
