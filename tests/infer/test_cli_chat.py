"""`qwenvl-jax chat` in a real terminal (pty): two images, two turns, history; one-shot use; errors."""

import json
import os
import pathlib
import re
import select
import shutil
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[2]


def _env():
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), TERM="dumb")
  env.pop("XLA_FLAGS", None)  # one device is enough for the CLI
  return env


def _cli(*args):
  """The installed `qwenvl-jax` console script (falls back to the same entry point via -c)."""
  script = pathlib.Path(sys.executable).with_name("qwenvl-jax")
  head = ([str(script)] if script.is_file() else
          [sys.executable, "-c", "import sys; from qwenvl_jax.cli import main; sys.exit(main())"])
  return head + ["chat", *map(str, args)]


class Terminal:
  """A child process on a pseudo-terminal (`os.openpty`, so no fork of the threaded test process);
  `expect` reads until a pattern shows up."""

  def __init__(self, argv):
    self.fd, child = os.openpty()
    self.proc = subprocess.Popen(argv, stdin=child, stdout=child, stderr=child, env=_env(),
                                 start_new_session=True)
    os.close(child)
    self.out = ""

  def expect(self, pattern: str, timeout: float = 120) -> str:
    start, end = len(self.out), time.time() + timeout
    while not re.search(pattern, self.out[start:]):
      if time.time() > end:
        raise AssertionError(f"timed out waiting for {pattern!r}; output so far:\n{self.out}")
      ready, _, _ = select.select([self.fd], [], [], 0.5)
      if ready:
        try:
          chunk = os.read(self.fd, 65536).decode("utf-8", "replace")
        except OSError:  # child closed the terminal
          raise AssertionError(f"child exited waiting for {pattern!r}:\n{self.out}") from None
        self.out += chunk.replace("\r\n", "\n")
    return self.out[start:]

  def send(self, line: str):
    os.write(self.fd, (line + "\n").encode())

  def wait(self, timeout: float = 30) -> int:
    try:
      return self.proc.wait(timeout)
    except subprocess.TimeoutExpired:
      self.proc.kill()
      raise AssertionError(f"child did not exit:\n{self.out}") from None
    finally:
      os.close(self.fd)


def test_interactive_chat_two_images_two_turns(ckpt_dir, picture_paths, tmp_path):
  a, b = picture_paths[:2]
  term = Terminal(_cli("--ckpt", ckpt_dir, "--max-new-tokens", 8, "--out", tmp_path))
  term.expect(r"User> ")
  term.send(f"/image {a}")
  assert f"Picture 1: {a}" in term.expect(r"User> ")
  term.send("what is in this picture?")
  first = term.expect(r"User> ")
  assert re.search(r"Assistant: ", first), first
  term.send(f"/image {tmp_path / 'missing.png'}")  # an error is one line and the chat goes on
  err = term.expect(r"User> ")
  assert "error: missing image" in err and "missing.png" in err and "Traceback" not in err
  term.send(f"/image {b}")
  assert f"Picture 2: {b}" in term.expect(r"User> ")  # numbering continues across turns
  term.send("and in this one?")
  assert "Assistant: " in term.expect(r"User> ")
  term.send("/history")
  shown = term.expect(r"User> ")
  assert f"[1] User: Picture 1: {a}" in shown and "what is in this picture?" in shown
  assert f"[2] User: Picture 2: {b}" in shown and "and in this one?" in shown
  assert shown.count("Assistant:") == 2
  term.send("/quit")
  assert term.wait() == 0


def _run(*args, timeout=180):
  return subprocess.run(_cli(*args), env=_env(), capture_output=True, text=True, timeout=timeout)


def test_one_shot_and_one_line_errors(ckpt_dir, picture_paths, tmp_path):
  ok = _run("--ckpt", ckpt_dir, "--image", picture_paths[0], "--prompt", "describe it",
            "--max-new-tokens", 5, "--greedy", "--out", tmp_path)
  assert ok.returncode == 0, ok.stderr
  assert f"Picture 1: {picture_paths[0]}" in ok.stdout and "Assistant: " in ok.stdout

  def one_line_error(proc, *needles):
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qwenvl-jax chat: error:"), proc.stderr
    for n in needles:
      assert n in lines[0], lines[0]

  one_line_error(_run("--ckpt", ckpt_dir, "--image", tmp_path / "nope.png", "--prompt", "hi"),
                 "nope.png")
  one_line_error(_run("--ckpt", ckpt_dir, "--prompt", "a long question " * 40, "--max-window", 64),
                 "longer than the context window (64 tokens)")
  one_line_error(_run("--ckpt", tmp_path / "no_such_ckpt", "--prompt", "hi"), "no_such_ckpt")
  bad = tmp_path / "mismatch"
  shutil.copytree(ckpt_dir, bad)
  cfg = json.loads((bad / "model_config.json").read_text())
  cfg["llm"]["mlp_dim"] *= 2  # the config no longer matches the stored tensors
  (bad / "model_config.json").write_text(json.dumps(cfg))
  one_line_error(_run("--ckpt", bad, "--prompt", "hi"), "cannot load checkpoint")


def test_boxes_in_the_answer_are_drawn(monkeypatch, capsys, model, tok, picture_paths, tmp_path):
  """In-process: a canned grounding answer goes through the CLI's drawing path."""
  from qwenvl_jax import cli
  from qwenvl_jax.cli import chat as cli_chat
  from qwenvl_jax.infer import chat as chat_lib
  from qwenvl_jax.infer.api import Predictor

  monkeypatch.setattr(cli_chat, "_load", lambda args: Predictor(model, tok))

  def canned(pred, query, history, images, **kw):
    answer = "<ref>the dog</ref><box>(100,200),(500,800)</box>"
    return answer, list(history) + [(chat_lib.build_query(query, images), answer)]

  monkeypatch.setattr(chat_lib, "chat", canned)
  rc = cli.main(["chat", "--ckpt", "unused", "--image", picture_paths[0], "--prompt", "where?",
                 "--out", str(tmp_path)])
  out = capsys.readouterr().out
  assert rc == 0 and f"Boxes drawn: {tmp_path / 'turn1_picture1.png'}" in out
  assert (tmp_path / "turn1_picture1.png").is_file()
