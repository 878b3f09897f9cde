"""The web chat page in a real headless Chromium (Debian package, driven by Playwright): upload a
picture, ask, watch the answer stream in, see its box drawn on the picture. Screenshot saved to
docs/serve_web_chat.png.

The model here is a scripted engine that replays a fixed grounded answer token by token through
the real app (SSE, box parsing): a random tiny model never writes a box, and the page is the thing
under test. The engine and the model are tested against `chat` in test_api.py.
"""

import pathlib
import shutil
import threading
import time

import numpy as np
import pytest
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[2]
ANSWER = "<ref>the blue square</ref><box>(250,250),(750,750)</box> is in the middle."

pytestmark = pytest.mark.slow


class ScriptedEngine:
  """BatchEngine's interface; every request gets the tokens of ANSWER, 40 ms apart."""

  def __init__(self, ids):
    self.ids = ids

  def submit(self, req):
    def play():
      for t in self.ids:
        time.sleep(0.04)
        if req.cancelled:
          break
        req.emit([t], None)
      req.done = True
      req.emit([], "stop")

    threading.Thread(target=play, daemon=True).start()

  def busy(self):
    return 0

  def close(self, timeout=None):
    pass


@pytest.fixture
def picture(tmp_path):
  arr = np.full((200, 300, 3), 235, np.uint8)
  arr[50:150, 75:225] = (30, 30, 200)
  path = tmp_path / "square.png"
  Image.fromarray(arr).save(path)
  return path


def test_web_chat_uploads_streams_and_draws_box(predictor, picture):
  chromium = shutil.which("chromium")
  if chromium is None:
    pytest.skip("chromium not installed (scripts/install_browser.sh)")
  from playwright.sync_api import sync_playwright

  from qwenvl_jax.serve.app import Server
  from qwenvl_jax.text import interface
  from tests.serve.conftest import LiveServer

  tok = predictor.tokenizer
  ids = interface.encode_segments(tok, interface.parse_markup(ANSWER)).ids
  assert tok.decode(ids, skip_special=False) == ANSWER
  live = LiveServer(Server(predictor, model_name="tiny", engine=ScriptedEngine(ids)))
  try:
    with sync_playwright() as pw:
      browser = pw.chromium.launch(executable_path=chromium, headless=True,
                                   args=["--no-sandbox", "--disable-gpu"])
      page = browser.new_page(viewport={"width": 900, "height": 700})
      page.goto(live.url + "/")
      page.set_input_files("#file", str(picture))
      page.wait_for_selector("#pending:has-text('1 picture')")
      page.fill("#text", "Where is the blue square?")
      # Record every text the answer bubble shows, to see it grow while streaming.
      page.evaluate("""() => { window.seen = [];
        new MutationObserver(() => { const a = document.querySelector('.assistant');
          if (a) window.seen.push(a.textContent); })
        .observe(document.getElementById('log'), {subtree: true, childList: true,
                                                   characterData: true}); }""")
      page.click("#send")
      page.wait_for_selector(".assistant[data-done='1']", timeout=30_000)
      shown = page.text_content(".assistant")
      assert shown == ANSWER
      seen = [s for s in page.evaluate("window.seen") if s]
      assert len(set(seen)) >= 5 and all(ANSWER.startswith(s) for s in seen)  # streamed
      assert page.get_attribute("canvas.picture", "data-boxes") == "1"
      # The box edge: x = 250/1000 * 300 px = 75, y from 50 to 150 (canvas at scale 1).
      rgba = page.evaluate("""() => { const c = document.querySelector('canvas.picture');
        const ctx = c.getContext('2d');
        return [Array.from(ctx.getImageData(75, 100, 1, 1).data),
                Array.from(ctx.getImageData(150, 20, 1, 1).data)]; }""")
      edge, background = rgba
      assert background[:3] == [235, 235, 235]
      assert edge[0] > 180 and edge[1] < 100 and edge[2] < 100  # the red stroke over blue/grey
      # A second round keeps the history: the request carries both turns.
      page.fill("#text", "Thanks!")
      page.click("#send")
      page.wait_for_selector("#answer-3[data-done='1']", timeout=30_000)
      assert page.locator(".assistant").count() == 2
      (REPO / "docs").mkdir(exist_ok=True)
      page.screenshot(path=str(REPO / "docs" / "serve_web_chat.png"), full_page=True)
      browser.close()
  finally:
    live.stop()
