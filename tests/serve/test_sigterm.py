"""`qwenvl-jax serve` as a real process: SIGTERM while a streamed answer is in flight lets it finish
([DONE] arrives, tokens keep coming after the signal) and the process exits 0."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import urllib.request

from tests.serve.conftest import free_port

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_sigterm_drains_in_flight_stream_and_exits_0(ckpt_dir):
  port = free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  env.pop("XLA_FLAGS", None)
  proc = subprocess.Popen(
      [sys.executable, "-c", "import sys; from qwenvl_jax.cli import main; sys.exit(main())",
       "serve", "--ckpt", str(ckpt_dir), "--port", str(port), "--model-name", "tiny",
       "--chunk", "1", "--max-batch", "2", "--log-level", "warning"],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    base = f"http://127.0.0.1:{port}"
    end = time.time() + 240
    while True:
      try:
        urllib.request.urlopen(base + "/health", timeout=5).close()
        break
      except OSError:
        assert proc.poll() is None and time.time() < end, proc.stdout.read() if proc.poll() else ""
        time.sleep(0.5)
    body = {"model": "tiny", "stream": True, "temperature": 1.0, "top_p": 1.0, "seed": 3,
            "max_tokens": 200, "messages": [{"role": "user", "content": "Go on and on."}]}
    req = urllib.request.Request(base + "/v1/chat/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    events_after, finish = [], None
    with urllib.request.urlopen(req, timeout=240) as r:
      assert r.readline().startswith(b"data: ")  # the role chunk: generation is under way
      proc.send_signal(signal.SIGTERM)
      for line in r:
        line = line.decode().strip()
        if not line.startswith("data: "):
          continue
        events_after.append(line[6:])
        if line[6:] != "[DONE]":
          finish = json.loads(line[6:])["choices"][0]["finish_reason"] or finish
    assert events_after[-1] == "[DONE]"
    assert finish in ("stop", "length")
    assert len(events_after) >= 3  # content kept streaming after the signal
    assert proc.wait(120) == 0
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
