"""The ASGI app: OpenAI-compatible /v1/chat/completions (plain and SSE), /v1/models, /health, and
the web chat page at /.

Generation runs in the `BatchEngine` thread; each request waits on an asyncio queue fed from that
thread. The answer text is what `chat` returns for the same conversation: decoded with its
`<ref>/<box>` tags as text, stripped; streamed deltas add up to exactly that text.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import html
import importlib.resources
import json
import logging
import time
import uuid

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request as HTTPRequest
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from qwenvl_jax.serve.engine import BatchEngine, EngineClosed, Request
from qwenvl_jax.serve.messages import APIError, ChatRequest, ServeLimits, parse_request
from qwenvl_jax.text.boxes import parse_boxes_per_image

log = logging.getLogger(__name__)


class TextStream:
  """Token ids -> the stripped answer text, released only once it can no longer change.

  Held back: leading/trailing whitespace (the final answer is stripped, as `chat`'s), a trailing
  partial UTF-8 character, and any tail that could be the start of a stop string.
  """

  def __init__(self, tokenizer, stop: list[str]):
    self.tok, self.stop = tokenizer, stop
    self.ids: list[int] = []
    self.sent = ""
    self.stopped = False  # a stop string matched: the text ends before it

  def _text(self) -> str:
    text = self.tok.decode(self.ids, skip_special=False)
    for s in self.stop:
      k = text.find(s)
      if k >= 0:
        text, self.stopped = text[:k], True
    return text

  def add(self, ids: list[int]) -> str:
    """New ids -> the newly released text."""
    self.ids.extend(ids)
    text = self._text().lstrip()
    if not self.stopped:
      text = text.rstrip("\ufffd")
      hold = max((n for s in self.stop for n in range(len(s) - 1, 0, -1) if text.endswith(s[:n])),
                 default=0)
      text = text[:len(text) - hold]
    return self._release(text.rstrip())

  def finish(self) -> str:
    return self._release(self._text().strip())

  def _release(self, text: str) -> str:
    if not text.startswith(self.sent):  # decoding changed earlier text (rare): wait for the end
      return ""
    new, self.sent = text[len(self.sent):], text
    return new


def error_response(e: APIError) -> JSONResponse:
  return JSONResponse(e.body(), status_code=e.status)


class Server:
  """Holds the predictor, engine and limits; `app` is the Starlette application."""

  def __init__(self, predictor, *, model_name: str, limits: ServeLimits | None = None,
               max_batch: int = 16, chunk: int = 8, gather_s: float = 0.05,
               prefix_cache_tokens: int = 2048, engine: BatchEngine | None = None, warmup: tuple | None = None):
    """`warmup`: (prompt token counts, max new tokens[, pictures]) to compile for before the
    server listens (`BatchEngine.warm_up`)."""
    self.pred = predictor
    self.warmup = warmup
    self.model_name = model_name
    self.limits = limits or ServeLimits()
    self.engine = engine or BatchEngine(predictor.generator, slots=max_batch, chunk=chunk,
                                        gather_s=gather_s, prefix_cache_tokens=prefix_cache_tokens)
    self.created = int(time.time())
    self.app = Starlette(routes=[
        Route("/", self.index, methods=["GET"]),
        Route("/health", self.health, methods=["GET"]),
        Route("/v1/models", self.models, methods=["GET"]),
        Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
    ], exception_handlers={404: self._not_found, 405: self._not_allowed},
                         lifespan=self._lifespan)

  # ---- small endpoints -------------------------------------------------------------------

  async def index(self, request):
    page = importlib.resources.files("qwenvl_jax.serve").joinpath("static/index.html")
    name = html.escape(self.model_name, quote=True)
    return HTMLResponse(page.read_text(encoding="utf-8").replace("{{MODEL}}", name))

  async def health(self, request):
    # `compiled`: the engine's compiled shapes so far (a load test can see compiles mid-run);
    # `engine`: its counters (decode chunks, rows computed, prefill calls, ...) for load tests
    return JSONResponse({"status": "ok", "model": self.model_name, "busy": self.engine.busy(),
                         "compiled": self.engine.compiled_count(),
                         "engine": dataclasses.asdict(self.engine.stats)})

  async def models(self, request):
    return JSONResponse({"object": "list", "data": [
        {"id": self.model_name, "object": "model", "created": self.created,
         "owned_by": "qwenvl-jax"}]})

  async def _not_found(self, request, exc):
    return error_response(APIError(404, f"no route {request.url.path}", code="not_found"))

  async def _not_allowed(self, request, exc):
    return error_response(APIError(405, f"{request.method} is not allowed on {request.url.path}",
                                   code="method_not_allowed"))

  @contextlib.asynccontextmanager
  async def _lifespan(self, app):
    if self.warmup is not None:  # uvicorn accepts connections once this is done
      t0 = time.perf_counter()
      n = await run_in_threadpool(self.engine.warm_up, *self.warmup)
      log.info("warm-up compiled %d shapes in %.1f s", n, time.perf_counter() - t0)
    yield
    # uvicorn has finished the in-flight requests (SIGTERM drain); now stop the engine thread.
    await run_in_threadpool(self.engine.close)

  # ---- chat completions ------------------------------------------------------------------

  async def chat_completions(self, request: HTTPRequest):
    try:
      try:
        body = json.loads(await request.body())
      except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from None
      chat = await run_in_threadpool(parse_request, body, self.pred, self.limits,
                                     model_names=[self.model_name])
      run = _Run(self, chat)
      run.start()
    except APIError as e:
      return error_response(e)
    if chat.stream:
      from sse_starlette.sse import EventSourceResponse

      return EventSourceResponse(run.events(), ping=15)
    try:
      answer = await _unless_disconnected(request, run.complete())
    except APIError as e:
      return error_response(e)
    if answer is None:  # the client went away: `pieces` cancelled its engine request
      return Response(status_code=499)
    return JSONResponse(answer)


async def _unless_disconnected(request: HTTPRequest, work):
  """Awaits `work`, or cancels it (-> None) when the client disconnects first. The body is read,
  so the next ASGI message can only be `http.disconnect`; streams need no watcher (a closed
  stream raises inside its generator)."""

  async def disconnected():
    while (await request.receive())["type"] != "http.disconnect":
      pass

  task, gone = asyncio.ensure_future(work), asyncio.ensure_future(disconnected())
  try:
    await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
  except asyncio.CancelledError:
    task.cancel()
    raise
  finally:
    gone.cancel()
  if task.done():
    return task.result()
  task.cancel()
  with contextlib.suppress(asyncio.CancelledError):
    await task
  return None


class _Run:
  """One request in flight: the engine request, its token queue and the response it builds."""

  def __init__(self, server: Server, chat: ChatRequest):
    self.server, self.chat = server, chat
    self.id = f"chatcmpl-{uuid.uuid4().hex}"
    self.created = int(time.time())
    self.queue: asyncio.Queue = asyncio.Queue()
    self.text = TextStream(server.pred.tokenizer, chat.stop)
    self.completion_tokens = 0
    self.req: Request | None = None

  def start(self):
    loop = asyncio.get_running_loop()
    emit = lambda ids, reason: loop.call_soon_threadsafe(self.queue.put_nowait, (ids, reason))
    c = self.chat
    self.req = Request(c.ids, c.images, c.max_tokens, emit, temperature=c.temperature,
                       top_p=c.top_p, seed=c.seed)
    try:
      self.server.engine.submit(self.req)
    except EngineClosed as e:
      raise APIError(503, str(e), code="unavailable", type="server_error") from None
    except ValueError as e:
      raise APIError(400, str(e), code="invalid_request") from None

  async def pieces(self):
    """Yields (new text, finish reason or None) until the answer ends."""
    try:
      while True:
        ids, reason = await self.queue.get()
        if reason is not None and reason.startswith("error"):
          raise APIError(500, f"generation failed: {reason[len('error: '):]}", type="server_error")
        self.completion_tokens += len(ids)
        new = self.text.add(ids)
        if self.text.stopped:
          self.req.cancel()
          reason = "stop"
        if reason is not None:
          yield new + self.text.finish(), "stop" if reason == "cancelled" else reason
          return
        if new:
          yield new, None
    finally:
      if self.req is not None and not self.req.done:
        self.req.cancel()  # client went away: free the slot

  def usage(self) -> dict:
    n = len(self.chat.ids)
    return {"prompt_tokens": n, "completion_tokens": self.completion_tokens,
            "total_tokens": n + self.completion_tokens}

  def boxes(self) -> list:
    per_image = parse_boxes_per_image(self.text.sent, self.chat.image_sizes, divisor=1000)
    return [[{"ref": b.ref, "box": [round(v, 1) for v in b.box]} for b in boxes]
            for boxes in per_image]

  def _envelope(self, kind: str) -> dict:
    return {"id": self.id, "object": kind, "created": self.created,
            "model": self.server.model_name}

  async def complete(self) -> dict:
    parts, finish = [], None
    async for text, reason in self.pieces():
      parts.append(text)
      finish = reason
    out = self._envelope("chat.completion")
    out["choices"] = [{"index": 0, "message": {"role": "assistant", "content": "".join(parts)},
                       "finish_reason": finish, "logprobs": None}]
    out["usage"] = self.usage()
    if self.chat.return_boxes:
      out["boxes"] = self.boxes()
    return out

  def _chunk(self, delta: dict, finish=None) -> dict:
    out = self._envelope("chat.completion.chunk")
    out["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
    return out

  async def events(self):
    data = lambda obj: {"data": json.dumps(obj)}
    yield data(self._chunk({"role": "assistant", "content": ""}))
    try:
      async for text, reason in self.pieces():
        if text:
          yield data(self._chunk({"content": text}))
        if reason is not None:
          last = self._chunk({}, reason)
          if self.chat.return_boxes:
            last["boxes"] = self.boxes()
          yield data(last)
    except APIError as e:
      yield data(e.body())
    if self.chat.include_usage:
      tail = self._envelope("chat.completion.chunk")
      tail["choices"], tail["usage"] = [], self.usage()
      yield data(tail)
    yield {"data": "[DONE]"}
