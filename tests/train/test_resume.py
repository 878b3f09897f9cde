"""Resume exactness through the real CLI: 10 straight steps vs SIGTERM at 3 -> resume -> SIGKILL at 7
(last checkpoint 5) -> resume to 10. Same per-step losses and the same final parameters."""

import pathlib
import select
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from qwenvl_jax.train.metrics import read_metrics
from tests.train.helpers import stage_config, write_init_checkpoint
from tests.cli_subprocess import cli_env

ROOT = pathlib.Path(__file__).resolve().parents[2]
CLI = "import sys; from qwenvl_jax.cli import main; sys.exit(main(sys.argv[1:]))"


def start(workdir, init, env, *overrides, resume=False):
  args = [sys.executable, "-c", CLI, "train", "--config", "stage2:tiny",
          "--workdir", str(workdir), "--init", str(init), "--set", "steps=10",
          "--set", "checkpoint_every=5"]
  for o in overrides:
    args += ["--set", o]
  if resume:
    args.append("--resume")
  return subprocess.Popen(args, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)


def wait_for(proc, marker, timeout=240):
  """Reads the child's stderr until a line contains `marker`."""
  deadline, seen = time.time() + timeout, []
  while time.time() < deadline:
    ready, _, _ = select.select([proc.stderr], [], [], 1.0)
    if ready:
      line = proc.stderr.readline()
      seen.append(line)
      if marker in line:
        return
      if not line and proc.poll() is not None:
        break
  proc.kill()
  raise AssertionError(f"never saw {marker!r}; child said:\n{''.join(seen)[-3000:]}")


def finish(proc, timeout=240):
  _, err = proc.communicate(timeout=timeout)
  return proc.returncode, err


def final_params(workdir):
  with ocp.StandardCheckpointer() as c:
    return c.restore(pathlib.Path(workdir) / "checkpoints" / "10" / "params")


def test_resume_after_sigterm_and_sigkill_is_exact(tmp_path):
  init = write_init_checkpoint(stage_config(2), tmp_path / "init")
  env = cli_env(tmp_path)
  straight = start(tmp_path / "straight", init, env)

  run = tmp_path / "run"
  a = start(run, init, env, "pause_after_step=3")
  wait_for(a, "PAUSED after step 3")
  a.send_signal(signal.SIGTERM)  # preemption: saves step 3 and exits 143
  rc, err = finish(a)
  assert rc == 143, err[-2000:]
  assert "preempted: saved step 3" in err

  b = start(run, init, env, "pause_after_step=7", resume=True)
  wait_for(b, "PAUSED after step 7")  # step 5 was saved on schedule; 6 and 7 are not
  b.send_signal(signal.SIGKILL)
  b.wait()
  assert sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())[-1] == 5

  c = start(run, init, env, resume=True)
  rc, err = finish(c)
  assert rc == 0, err[-2000:]
  rc, err = finish(straight)
  assert rc == 0, err[-2000:]

  ref, got = read_metrics(tmp_path / "straight"), read_metrics(run)
  assert [r["step"] for r in got] == list(range(1, 11))  # the killed run's steps 6-7 were replaced
  np.testing.assert_allclose([r["loss"] for r in got], [r["loss"] for r in ref], rtol=1e-6, atol=0)
  diffs = [np.abs(np.asarray(x) - np.asarray(y)).max()
           for x, y in zip(jax.tree.leaves(final_params(run)),
                           jax.tree.leaves(final_params(tmp_path / "straight")))]
  assert max(diffs) < 1e-6, max(diffs)
