"""A tiny model (sharpened random weights, SentencePiece vocabulary) served in-process on a free
127.0.0.1 port, plus the infer tests' checkpoint fixtures for the subprocess tests."""

import base64
import socket
import threading
import time

import pytest

from tests.infer.conftest import ckpt_dir, hf_dir, model, picture_paths, tok  # noqa: F401


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def data_url(path) -> str:
  with open(path, "rb") as f:
    return "data:image/png;base64," + base64.b64encode(f.read()).decode()


class LiveServer:
  """uvicorn in a thread; `url` is its base URL."""

  def __init__(self, server):
    import uvicorn

    self.server, self.port = server, free_port()
    self.url = f"http://127.0.0.1:{self.port}"
    config = uvicorn.Config(server.app, host="127.0.0.1", port=self.port, log_level="warning",
                            lifespan="on")
    self.uv = uvicorn.Server(config)
    self.uv.install_signal_handlers = lambda: None  # not the main thread
    self.thread = threading.Thread(target=self.uv.run, daemon=True)
    self.thread.start()
    end = time.time() + 30
    while not self.uv.started:
      if time.time() > end or not self.thread.is_alive():
        raise RuntimeError("test server did not start")
      time.sleep(0.05)

  def stop(self):
    self.uv.should_exit = True
    self.thread.join(30)


@pytest.fixture(scope="session")
def image_root(tmp_path_factory, picture_paths):  # noqa: F811
  import shutil

  root = tmp_path_factory.mktemp("image_root")
  shutil.copy(picture_paths[0], root / "inside.png")
  return root


@pytest.fixture(scope="session")
def predictor(model, tok):  # noqa: F811
  from qwenvl_jax.infer.api import Predictor

  return Predictor(model, tok, batch_size=1)


@pytest.fixture(scope="session")
def live(predictor, image_root):
  from qwenvl_jax.serve.app import Server
  from qwenvl_jax.serve.messages import ServeLimits

  server = Server(predictor, model_name="tiny", max_batch=4, chunk=4,
                  limits=ServeLimits(image_root=image_root, max_image_bytes=20_000))
  live = LiveServer(server)
  yield live
  live.stop()


@pytest.fixture(scope="session")
def client(live):
  import openai

  return openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0, timeout=120)
