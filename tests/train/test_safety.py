"""Training never saves or applies a non-finite state, never breaks a run on a failed resume, and falls
back past unreadable checkpoints; bad config values and data files get one line naming them.

Fast tests drive the Checkpointer on small trees, the jitted step directly and the CLI's error paths
(no training step compiles); the real training runs through the CLI are marked slow."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from qwenvl_jax.ckpt import checkpoint as ckpt_lib
from qwenvl_jax.cli import main
from qwenvl_jax.config import model_config_from_dict
from tests.train.helpers import stage_config, write_init_checkpoint
from tests.cli_subprocess import cli_env

ROOT = pathlib.Path(__file__).resolve().parents[2]
CLI = "import sys; from qwenvl_jax.cli import main; sys.exit(main(sys.argv[1:]))"
MCFG = model_config_from_dict(stage_config(2).model)


def small_state(value: float):
  device = jax.devices()[0]
  params = {"w": jax.device_put(np.full((4, 3), value, np.float32), device),
            "b": {"bias": jax.device_put(np.arange(3, dtype=np.float32) + value, device)}}
  opt = {"count": jax.device_put(np.int32(value), device),
         "mu": jax.device_put(np.full((4, 3), value / 2, np.float32), device)}
  return params, opt


def abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def saved_run(tmp_path, steps=(1, 2)) -> ckpt_lib.Checkpointer:
  ckpt = ckpt_lib.Checkpointer(tmp_path, 1, 5, use_async=False)
  for s in steps:
    params, opt = small_state(float(s))
    assert ckpt.save(s, params, opt, {"step": s}, MCFG)
  return ckpt


def scramble(step_dir: pathlib.Path, seed=0):
  """Random bytes over every file of the step's params item (same sizes)."""
  rng = np.random.default_rng(seed)
  files = [p for p in (step_dir / "params").rglob("*") if p.is_file()]
  assert files
  for p in files:
    p.write_bytes(rng.integers(0, 256, max(p.stat().st_size, 16), dtype=np.uint8).tobytes())


@pytest.mark.parametrize("damage", ["random bytes", "params missing"])
def test_resume_falls_back_past_an_unreadable_latest_checkpoint(tmp_path, damage):
  ckpt = saved_run(tmp_path)
  if damage == "random bytes":
    scramble(tmp_path / "checkpoints" / "2")
  else:
    import shutil
    shutil.rmtree(tmp_path / "checkpoints" / "2" / "params")
  ckpt.close()
  params, opt = small_state(0.0)
  logs = []
  ckpt = ckpt_lib.Checkpointer(tmp_path, 1, 5, use_async=False)
  step, got_p, got_o, data = ckpt.restore_latest(abstract(params), abstract(opt), log=logs.append)
  want_p, want_o = small_state(1.0)
  assert step == 1 and data == {"step": 1}
  for a, b in zip(jax.tree.leaves((got_p, got_o)), jax.tree.leaves((want_p, want_o))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert len(logs) == 1 and "\n" not in logs[0]
  assert "checkpoint step 2" in logs[0] and "unreadable" in logs[0] and "falling back to step 1" in logs[0]
  aside = list((tmp_path / ckpt_lib.SET_ASIDE).iterdir())  # kept, not deleted
  assert len(aside) == 1 and aside[0].name.startswith("2-") and str(aside[0]) in logs[0]
  # The run continues: step 2 can be saved again and is the latest.
  p2, o2 = small_state(2.0)
  assert ckpt.save(2, p2, o2, {"step": 2}, MCFG)
  ckpt.wait()
  ckpt.verify(2)
  assert ckpt.restore_latest(abstract(params), abstract(opt))[0] == 2
  ckpt.close()


def test_no_readable_checkpoint_means_a_fresh_start(tmp_path):
  ckpt = saved_run(tmp_path, steps=(1,))
  scramble(tmp_path / "checkpoints" / "1")
  params, opt = small_state(0.0)
  logs = []
  assert ckpt.restore_latest(abstract(params), abstract(opt), log=logs.append) is None
  assert "no older checkpoint" in logs[0]
  ckpt.close()


@pytest.mark.parametrize("use_async", [False, True])
def test_a_full_disk_fails_the_save_in_one_line_and_keeps_earlier_checkpoints(tmp_path, use_async):
  """The file-size limit (RLIMIT_FSIZE) stands in for a full disk: writes fail with EFBIG."""
  import resource
  import signal

  device = jax.devices()[0]
  rng = np.random.default_rng(0)
  state = lambda: ({"w": jax.device_put(rng.standard_normal((256, 256)).astype(np.float32), device)},
                   {"count": jax.device_put(np.int32(1), device)})
  ckpt = ckpt_lib.Checkpointer(tmp_path, 1, 5, use_async=use_async)
  first = state()
  ckpt.save(1, *first, {"step": 1}, MCFG)
  ckpt.wait()
  previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
  soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
  resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, hard))  # the step-2 params need ~260 kB
  try:
    with pytest.raises(ckpt_lib.CheckpointError) as e:
      ckpt.save(2, *state(), {"step": 2}, MCFG)
      ckpt.wait()
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    signal.signal(signal.SIGXFSZ, previous)
  assert "\n" not in str(e.value) and "File too large" in str(e.value)
  assert "earlier checkpoints are intact (latest: step 1)" in str(e.value)
  assert ckpt_lib.step_numbers(tmp_path / "checkpoints") == [1]
  ckpt.manager.close()
  # The next run (disk freed) restores step 1 and saves step 2 over the unfinished temporary folder.
  ckpt = ckpt_lib.Checkpointer(tmp_path, 1, 5, use_async=use_async)
  step, params, _, _ = ckpt.restore_latest(abstract(first[0]), abstract(first[1]))
  assert step == 1
  np.testing.assert_array_equal(np.asarray(params["w"]), np.asarray(first[0]["w"]))
  assert ckpt.save(2, *state(), {"step": 2}, MCFG)
  ckpt.close()
  assert ckpt_lib.step_numbers(tmp_path / "checkpoints") == [1, 2]


def test_a_non_finite_state_is_never_saved(tmp_path):
  ckpt = saved_run(tmp_path, steps=(1,))
  params, opt = small_state(2.0)
  params["b"]["bias"] = params["b"]["bias"].at[1].set(np.nan)
  with pytest.raises(ckpt_lib.CheckpointError, match=r"refusing to save step 2: 1 arrays.*params\.b\.bias"):
    ckpt.save(2, params, opt, {}, MCFG)
  assert ckpt.manager.all_steps() == [1]
  ckpt.close()


# "cond": the CPU default (~10 s); the others (two passes: the accelerator default) in the slow target
@pytest.mark.parametrize("guard", ["cond", pytest.param("two_pass", marks=pytest.mark.slow),
                                   pytest.param("select", marks=pytest.mark.slow)])
def test_a_step_with_a_non_finite_update_keeps_the_old_state(guard):
  """Loss and gradient norm finite, the update NaN (Adam's second moment poisoned negative): the step
  must return the parameters and optimizer state it was given, and say it was not finite, with
  every way of guarding the update (`optim.update_guard`)."""
  from qwenvl_jax.train.batch import SyntheticIterator
  from tests.train.helpers import initial_train_state, tiny_run

  # Stage 1: the LLM is frozen.
  run = tiny_run(stage_config(1, "batch_size=2", "grad_accum=1", "seq_len=16",
                              f"optim.update_guard={guard}"), (1, 1, 1))
  assert run.train_step.update_guard == guard
  state = initial_train_state(run)
  poisoned = []

  def poison(path, x):
    name = jax.tree_util.keystr(path)
    if "nu" in name and "adapter" in name and not poisoned:
      poisoned.append(name)
      return x - 1.0
    return x

  state = state.replace(opt_state=jax.tree_util.tree_map_with_path(poison, state.opt_state))
  assert poisoned
  before = jax.device_get(state)
  host = next(SyntheticIterator(run.model_cfg, 2, 16))
  new, m = run.train_step(state, jax.device_put(host, run.train_step.batch_shardings(host)))
  assert np.isfinite(float(m["loss"])) and np.isfinite(float(m["grad_norm"]))
  assert not bool(m["finite"])
  assert int(new.step) == 0  # no update was applied
  for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(before)):
    np.testing.assert_array_equal(np.asarray(a), b)


def test_every_update_guard_applies_the_same_update():
  """A finite step is the same update however it is guarded: in place under `lax.cond` (the CPU
  default) and selected against the old values give the same losses, parameters and moments."""
  from tests.train.helpers import flat, run_steps

  cfg = lambda guard: stage_config(2, "batch_size=2", "grad_accum=1", "seq_len=16",
                                   f"optim.update_guard={guard}")
  losses, params, _, state = run_steps(cfg("cond"), (1, 1, 1), 2)
  ref_losses, ref_params, _, ref_state = run_steps(cfg("select"), (1, 1, 1), 2)
  np.testing.assert_array_equal(losses, ref_losses)
  assert int(state.step) == int(ref_state.step) == 2
  for (k, a), b in zip(flat((params, state.opt_state)).items(),
                       flat((ref_params, ref_state.opt_state)).values()):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=k)


# --------------------------------------------------------------------------------------------
# The CLI's error paths: one line, nothing written.


def run_cli(*args, env=None, timeout=900):
  return subprocess.run([sys.executable, "-c", CLI, *args], cwd=ROOT, env=env or dict(os.environ),
                        capture_output=True, text=True, timeout=timeout)


def one_line(err: str) -> str:
  lines = [l for l in err.splitlines() if l.strip()]
  assert len(lines) == 1, err[-3000:]
  return lines[0]


def test_resume_with_an_incompatible_config_changes_nothing(tmp_path):
  run = write_init_checkpoint(stage_config(2), tmp_path / "run")  # a 2-layer run at step 0
  (run / "config.json").write_text('{"the": "original"}')
  before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
  r = run_cli("train", "--config", "configs/stage2.py:tiny", "--workdir", str(run), "--resume",
              "--set", "model.llm.layers=3")
  assert r.returncode == 2
  line = one_line(r.stderr)
  assert "model.llm.layers: 2 in the checkpoint vs 3" in line and "resume" in line
  after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
  assert after == before
  from qwenvl_jax.ckpt.orbax_io import load_checkpoint  # what chat / convert / eval load
  model, cfg, _ = load_checkpoint(run)
  assert cfg.llm.layers == 2


@pytest.mark.parametrize("override, field, expected", [
    ("steps=abc", "steps", "an int"),
    ("optim.peak_lr=fast", "optim.peak_lr", "a number"),
    ("model.llm.layers=2.5", "model.llm.layers", "an int"),
])
def test_a_mistyped_override_is_one_line(tmp_path, capsys, override, field, expected):
  rc = main(["train", "--config", "configs/stage2.py:tiny", "--workdir", str(tmp_path / "w"),
             "--set", override])
  line = one_line(capsys.readouterr().err)
  assert rc == 2 and f"config field '{field}': expects {expected}" in line
  assert not (tmp_path / "w").exists()


def data_overrides(paths, vocab):
  from qwenvl_jax.text.tokenizer import load_tokenizer
  ids = load_tokenizer(vocab).model_config_ids()
  out = ["data.source='jsonl'", f"data.paths={tuple(str(p) for p in paths)!r}", f"data.tokenizer='{vocab}'"]
  return out + [f"model.{k}={v}" for k, v in ids.items()]


@pytest.mark.parametrize("content, message", [
    (b"", r"empty\.jsonl: no records \(the file is empty\)"),
    (b'{"id": "a", "text": "fine"}\n{"id": "b", "text": "caf\xe9"}\n',
     r"empty\.jsonl:2: not UTF-8 text"),
])
def test_unreadable_training_data_is_one_line(tmp_path, capsys, byte_vocab, content, message):
  data = tmp_path / "empty.jsonl"
  data.write_bytes(content)
  args = ["train", "--config", "configs/stage2.py:tiny", "--workdir", str(tmp_path / "w")]
  for o in data_overrides([data], byte_vocab):
    args += ["--set", o]
  rc = main(args)
  line = one_line(capsys.readouterr().err)
  assert rc == 2 and __import__("re").search(message, line), line
  assert not (tmp_path / "w" / "model_config.json").exists()


# --------------------------------------------------------------------------------------------
# Real training runs through the CLI (compiles the step: slow on CPU).


def all_checkpoints_finite(workdir: pathlib.Path) -> dict[int, bool]:
  """Step -> whether every array of its params item is finite (read as numpy, any device count)."""
  from qwenvl_jax.ckpt.orbax_io import ParamReader
  out = {}
  for step in ckpt_lib.step_numbers(workdir / "checkpoints"):
    reader = ParamReader(workdir / "checkpoints" / str(step) / "params")
    out[step] = all(np.isfinite(reader.read(name)).all() for name in reader.meta)
  return out


@pytest.mark.slow
def test_divergence_through_the_cli_saves_nothing_non_finite(tmp_path):
  """The issue's command (peak_lr 1e6), and the same with a checkpoint every step."""
  env = cli_env(tmp_path)
  for every in (3, 1):
    run = tmp_path / f"every{every}"
    r = run_cli("train", "--config", "configs/stage2.py:tiny", "--workdir", str(run),
                "--set", "optim.peak_lr=1e6", "--set", f"checkpoint_every={every}", env=env)
    assert r.returncode == 3, r.stderr[-3000:]
    line = [l for l in r.stderr.splitlines() if "not applied" in l]
    assert len(line) == 1, r.stderr[-3000:]
    finite = all_checkpoints_finite(run)
    assert all(finite.values()), finite
    last = max(finite) if finite else None
    if last is None:
      assert "no checkpoint was saved" in line[0]
    else:
      assert f"all finite, is step {last} in" in line[0]
      metrics = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
      assert metrics[-1]["step"] == last + 1  # the diverged step, recorded but not saved


@pytest.mark.slow
def test_resume_through_the_cli_falls_back_past_damaged_checkpoints(tmp_path):
  env = cli_env(tmp_path)
  init = write_init_checkpoint(stage_config(2), tmp_path / "init")
  run = tmp_path / "run"

  def train(steps, resume):
    args = ["train", "--config", "configs/stage2.py:tiny", "--workdir", str(run), "--init", str(init),
            "--set", f"steps={steps}", "--set", "checkpoint_every=2"]
    return run_cli(*args, *(["--resume"] if resume else []), env=env)

  r = train(4, False)
  assert r.returncode == 0, r.stderr[-3000:]
  scramble(run / "checkpoints" / "4")
  r = train(6, True)
  assert r.returncode == 0, r.stderr[-3000:]
  fell = [l for l in r.stderr.splitlines() if "unreadable" in l]
  assert len(fell) == 1 and "checkpoint step 4" in fell[0] and "falling back to step 2" in fell[0]
  assert f"resumed from {run / 'checkpoints' / '2'}" in r.stderr
  import shutil
  shutil.rmtree(run / "checkpoints" / "6" / "params")
  r = train(8, True)
  assert r.returncode == 0, r.stderr[-3000:]
  fell = [l for l in r.stderr.splitlines() if "unreadable" in l]
  assert len(fell) == 1 and "checkpoint step 6" in fell[0] and "'params' item is missing" in fell[0]
  assert ckpt_lib.step_numbers(run / "checkpoints")[-1] == 8
  steps = [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()]
  assert steps[-1] == 8
