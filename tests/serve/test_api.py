"""The OpenAI-compatible API through the official `openai` client: answers equal `chat`'s greedy
answer (plain and streamed), concurrency does not change tokens, bad input gets OpenAI-shaped 4xx
errors and the server keeps serving."""

import base64
import concurrent.futures
import dataclasses
import io
import json
import socket
import time
import urllib.request

import numpy as np
import openai
import pytest
from PIL import Image

from qwenvl_jax.infer.chat import chat
from qwenvl_jax.infer.generate import GREEDY
from tests.serve.conftest import data_url

N = 24


def greedy_chat(predictor, text, images=(), history=None):
  sampling = dataclasses.replace(GREEDY, max_new_tokens=N)
  return chat(predictor, text, history, images, sampling=sampling)[0]


def user(text, *urls):
  parts = [{"type": "image_url", "image_url": {"url": u}} for u in urls]
  return {"role": "user", "content": parts + [{"type": "text", "text": text}]}


def ask(client, messages, **kw):
  kw = {"model": "tiny", "temperature": 0, "max_tokens": N, **kw}
  return client.chat.completions.create(messages=messages, **kw)


def test_plain_and_streamed_answers_equal_chat(client, predictor, picture_paths):
  want = greedy_chat(predictor, "What is in the picture?", [picture_paths[0]])
  messages = [user("What is in the picture?", data_url(picture_paths[0]))]
  got = ask(client, messages)
  assert got.choices[0].message.content == want
  assert got.choices[0].message.role == "assistant"
  ids, _ = predictor.chat_prompt([], [{"image": picture_paths[0]},
                                      {"text": "What is in the picture?"}])
  assert got.usage.prompt_tokens == len(ids)
  assert got.usage.total_tokens == len(ids) + got.usage.completion_tokens
  assert got.choices[0].finish_reason in ("stop", "length")
  if got.choices[0].finish_reason == "length":
    assert got.usage.completion_tokens == N

  chunks = list(ask(client, messages, stream=True, stream_options={"include_usage": True}))
  text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
  assert text == want
  assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 2  # streamed
  assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == got.choices[0].finish_reason
  assert chunks[-1].usage.completion_tokens == got.usage.completion_tokens


def test_multi_round_string_content_equals_chat(client, predictor, picture_paths):
  first = greedy_chat(predictor, "Describe it.", [picture_paths[1]])
  history = [([{"image": picture_paths[1]}, {"text": "Describe it."}], first)]
  want = greedy_chat(predictor, "And then?", history=history)
  got = ask(client, [user("Describe it.", data_url(picture_paths[1])),
                     {"role": "assistant", "content": first},
                     {"role": "user", "content": "And then?"}])
  assert got.choices[0].message.content == want


def test_concurrent_requests_give_sequential_tokens(client):
  prompts = [f"question number {i}: why {'is ' * i}the sky blue" for i in range(8)]
  sequential = [ask(client, [{"role": "user", "content": p}]).choices[0].message.content
                for p in prompts]
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    together = list(pool.map(
        lambda p: ask(client, [{"role": "user", "content": p}]).choices[0].message.content,
        prompts))
  assert together == sequential
  assert len(set(sequential)) > 1


def test_stop_string_and_seeded_sampling(client):
  messages = [{"role": "user", "content": "Tell me something."}]
  full = ask(client, messages, max_tokens=40).choices[0].message.content
  assert len(full) > 6
  stop = full[len(full) // 2:len(full) // 2 + 2]
  cut = full[:full.find(stop)].strip()
  got = ask(client, messages, max_tokens=40, stop=[stop])
  assert got.choices[0].message.content == cut
  assert got.choices[0].finish_reason == "stop"
  streamed = "".join(c.choices[0].delta.content or ""
                     for c in ask(client, messages, max_tokens=40, stop=stop, stream=True))
  assert streamed == cut
  a, b, c = (ask(client, messages, temperature=1.0, top_p=1.0, seed=s).choices[0].message.content
             for s in (7, 7, 8))
  assert a == b


def test_file_url_under_image_root(client, predictor, image_root):
  want = greedy_chat(predictor, "What?", [str(image_root / "inside.png")])
  got = ask(client, [user("What?", (image_root / "inside.png").as_uri())])
  assert got.choices[0].message.content == want


def test_text_between_img_tags_opens_nothing(client, image_root, predictor):
  text = f"<img>{image_root / 'inside.png'}</img> what is this?"
  got = ask(client, [{"role": "user", "content": text}])
  assert got.choices[0].message.content == greedy_chat(predictor, text)


def test_plain_request_whose_client_disconnects_is_cancelled(live):
  """A non-streamed request's client closes its connection mid-answer: the engine request is
  cancelled (finish "cancelled", far fewer tokens than asked) and its slot freed."""
  engine = live.server.engine
  seen, submit, stops = [], engine.submit, engine.stop_ids
  engine.submit = lambda req: (seen.append(req), submit(req))[1]
  engine.stop_ids = frozenset()  # no early stop token: only the disconnect can end it early
  n = 1000
  body = json.dumps({"model": "tiny", "temperature": 0, "max_tokens": n,
                     "messages": [{"role": "user", "content": "Tell me a long story."}]}).encode()
  try:
    with socket.create_connection(("127.0.0.1", live.port), timeout=60) as conn:
      conn.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
                   + body)
      _wait_for(lambda: seen and seen[0].generated > 0, 120)  # decoding has started
    _wait_for(lambda: seen[0].done, 60)
    assert seen[0].cancelled and seen[0].generated < n
    _wait_for(lambda: engine.busy() == 0, 30)
  finally:
    del engine.submit
    engine.stop_ids = stops


def _wait_for(condition, seconds: float):
  end = time.time() + seconds
  while not condition():
    assert time.time() < end, "timed out"
    time.sleep(0.02)


def test_models_and_health(client, live):
  assert [m.id for m in client.models.list().data] == ["tiny"]
  with urllib.request.urlopen(live.url + "/health") as r:
    assert json.load(r)["status"] == "ok"


def _png_bytes(w, h):
  buf = io.BytesIO()
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), np.uint8)).save(buf, "PNG")
  return buf.getvalue()


def _post(live, body: bytes):
  req = urllib.request.Request(live.url + "/v1/chat/completions", data=body,
                               headers={"Content-Type": "application/json"})
  try:
    with urllib.request.urlopen(req) as r:
      return r.status, json.load(r)
  except urllib.error.HTTPError as e:
    return e.code, json.load(e)


def _bad_bodies(picture_paths, tmp_root_outside):
  big = "data:image/png;base64," + base64.b64encode(_png_bytes(200, 200)).decode()
  junk = "data:image/png;base64," + base64.b64encode(b"not an image at all" * 10).decode()
  msg = lambda *urls: {"model": "tiny", "messages": [user("hi", *urls)]}
  return {
      "malformed_json": (b'{"model": "tiny", "messages": [', 400),
      "unknown_model": (json.dumps({"model": "gpt-9", "messages": [user("hi")]}).encode(), 404),
      "image_too_large": (json.dumps(msg(big)).encode(), 400),
      "undecodable_image": (json.dumps(msg(junk)).encode(), 400),
      "over_context_window": (json.dumps({"model": "tiny", "messages": [
          {"role": "user", "content": "word " * 400}]}).encode(), 400),
      "http_url": (json.dumps(msg("https://example.com/cat.png")).encode(), 400),
      "ftp_url": (json.dumps(msg("ftp://example.com/cat.png")).encode(), 400),
      "file_outside_root": (json.dumps(msg(tmp_root_outside.as_uri())).encode(), 400),
      "file_escaping_root": (json.dumps(msg("file://" + str(picture_paths[0]))).encode(), 400),
      "max_tokens_zero": (json.dumps({**msg(), "max_tokens": 0}).encode(), 400),
      "no_messages": (json.dumps({"model": "tiny", "messages": []}).encode(), 400),
      "assistant_last": (json.dumps({"model": "tiny", "messages": [
          user("hi"), {"role": "assistant", "content": "yo"}]}).encode(), 400),
  }


def test_bad_input_gets_openai_errors_and_server_keeps_serving(live, client, picture_paths,
                                                               tmp_path):
  outside = tmp_path / "outside.png"
  outside.write_bytes(_png_bytes(8, 8))
  for name, (body, status) in _bad_bodies(picture_paths, outside).items():
    code, out = _post(live, body)
    assert code == status, (name, out)
    err = out["error"]
    assert set(err) == {"message", "type", "param", "code"}, name
    assert isinstance(err["message"], str) and err["message"], name
  # The same failures through the official client raise its typed errors.
  with pytest.raises(openai.NotFoundError):
    ask(client, [user("hi")], model="gpt-9")
  with pytest.raises(openai.BadRequestError, match="network"):
    ask(client, [user("hi", "http://example.com/a.png")])
  with pytest.raises(openai.BadRequestError, match="context window"):
    ask(client, [{"role": "user", "content": "word " * 400}])
  assert ask(client, [{"role": "user", "content": "still there?"}]).choices[0].message.content
