"""OpenAI chat requests -> a ChatML prompt, images and sampling knobs; errors in OpenAI's shape.

Images come only from `image_url` parts: `data:` URLs, and `file://` paths that resolve inside the
server's `--image-root` (symlinks resolved first). http(s) URLs are refused: the server makes no
network requests. Message text is plain text: `<img>a.png</img>` typed by a user stays text and
never opens anything, and user text never becomes special tokens. Assistant turns are re-encoded
with their `<ref>/<box>` markup as specials, as `chat` does with its own history.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import pathlib
import urllib.parse
from typing import Any, Sequence

import numpy as np

from qwenvl_jax.data.preprocess import CorruptImageError, load_image, preprocess
from qwenvl_jax.infer.chat import answer_segments
from qwenvl_jax.infer.generate import CHAT_DEFAULTS
from qwenvl_jax.text.conversation import DEFAULT_SYSTEM

MAX_STOP_STRINGS = 4


class APIError(Exception):
  """An error answered as {"error": {"message", "type", "param", "code"}} with an HTTP status."""

  def __init__(self, status: int, message: str, *, param: str | None = None,
               code: str | None = None, type: str = "invalid_request_error"):
    super().__init__(message)
    self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

  def body(self) -> dict:
    return {"error": {"message": self.message, "type": self.type, "param": self.param,
                      "code": self.code}}


@dataclasses.dataclass
class ServeLimits:
  image_root: pathlib.Path | None = None  # file:// URLs must resolve inside it (None: refused)
  max_image_bytes: int = 10 * 2**20  # encoded size of one image
  max_images: int = 16  # per request


@dataclasses.dataclass
class ChatRequest:
  """What the engine and the response need from one /v1/chat/completions body."""
  ids: list[int]
  images: list[np.ndarray]  # preprocessed, one per <img> span in order
  image_sizes: list[tuple[int, int]]  # (width, height) of every picture, for pixel boxes
  max_tokens: int
  max_tokens_given: bool
  temperature: float
  top_p: float
  seed: int
  stop: list[str]
  stream: bool
  include_usage: bool
  return_boxes: bool


def _bad(message: str, param: str | None = None, code: str | None = None) -> APIError:
  return APIError(400, message, param=param, code=code)


def _number(body: dict, key: str, default, kind, lo=None, hi=None, lo_open=False):
  value = body.get(key)
  if value is None:
    return default
  if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
    raise _bad(f"'{key}' must be {'a number' if kind is float else 'an integer'}", key)
  if (lo is not None and (value <= lo if lo_open else value < lo)) or (hi is not None and value > hi):
    rng = f"{'(' if lo_open else '['}{lo}, {hi if hi is not None else 'inf'}]"
    raise _bad(f"'{key}' must be in {rng}, got {value}", key)
  return kind(value)


# --------------------------------------------------------------------------------------------
# Images.


def read_image_url(url: Any, param: str, limits: ServeLimits) -> bytes:
  """The encoded bytes behind an image_url (data: or file:// under the image root)."""
  if not isinstance(url, str) or not url:
    raise _bad("image_url.url must be a non-empty string", param)
  scheme = url.split(":", 1)[0].lower() if ":" in url else ""
  if scheme == "data":
    head, sep, payload = url.partition(",")
    if not sep or not head.lower().endswith(";base64"):
      raise _bad("data URL must be data:image/...;base64,<data>", param, "invalid_image_url")
    if len(payload) * 3 // 4 > limits.max_image_bytes + 2:
      raise _bad(f"image is larger than the server's limit of {limits.max_image_bytes} bytes",
                 param, "image_too_large")
    try:
      data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
      raise _bad("data URL holds invalid base64", param, "invalid_image_url") from None
  elif scheme == "file":
    if limits.image_root is None:
      raise _bad("file:// image URLs are disabled (start the server with --image-root DIR)",
                 param, "file_url_refused")
    parsed = urllib.parse.urlparse(url)
    if parsed.netloc not in ("", "localhost"):
      raise _bad("file:// URL must name a local path", param, "file_url_refused")
    root = limits.image_root.resolve()
    path = pathlib.Path(urllib.parse.unquote(parsed.path)).resolve()
    if not path.is_relative_to(root):
      raise _bad("file:// path is outside the server's --image-root", param, "file_url_refused")
    if not path.is_file():
      raise _bad(f"no image file at {url}", param, "invalid_image_url")
    if path.stat().st_size > limits.max_image_bytes:
      raise _bad(f"image is larger than the server's limit of {limits.max_image_bytes} bytes",
                 param, "image_too_large")
    data = path.read_bytes()
  elif scheme in ("http", "https"):
    raise _bad("http(s) image URLs are not supported: this server makes no network requests; "
               "send the picture as a data: URL", param, "unsupported_url_scheme")
  else:
    raise _bad(f"unsupported image URL scheme {scheme + ':' if scheme else '(none)'}; use a data: "
               "URL", param, "unsupported_url_scheme")
  if len(data) > limits.max_image_bytes:
    raise _bad(f"image is larger than the server's limit of {limits.max_image_bytes} bytes",
               param, "image_too_large")
  return data


def decode_image(data: bytes, param: str, image_size: int):
  """-> (preprocessed float32 [S, S, 3], (width, height))."""
  try:
    img = load_image(data, name=param)
  except CorruptImageError as e:
    raise _bad(f"cannot decode image: {e.reason}", param, "invalid_image") from None
  return preprocess(img, image_size), img.size


# --------------------------------------------------------------------------------------------
# Messages.


def _content_segments(content: Any, param: str, role: str, limits: ServeLimits, image_size: int,
                      images: list, sizes: list) -> list[dict]:
  """A message's content -> segments ({"text"} / {"image": array}), images appended to `images`."""
  if isinstance(content, str):
    return [{"text": content}]
  if not isinstance(content, list):
    raise _bad("message content must be a string or a list of parts", param)
  segments = []
  for j, part in enumerate(content):
    p = f"{param}[{j}]"
    if not isinstance(part, dict) or "type" not in part:
      raise _bad("a content part must be an object with a 'type'", p)
    kind = part["type"]
    if kind == "text":
      if not isinstance(part.get("text"), str):
        raise _bad("text part needs a string 'text'", p)
      segments.append({"text": part["text"]})
    elif kind == "image_url":
      if role != "user":
        raise _bad(f"images are only accepted in user messages, not {role}", p)
      if len(images) >= limits.max_images:
        raise _bad(f"more than {limits.max_images} images in one request", p, "too_many_images")
      spec = part.get("image_url")
      url = spec.get("url") if isinstance(spec, dict) else spec
      arr, size = decode_image(read_image_url(url, p + ".image_url", limits), p, image_size)
      images.append(arr)
      sizes.append(size)
      segments.append({"image": arr})
    else:
      raise _bad(f"unsupported content part type {kind!r} (text and image_url are)", p)
  return segments


def conversation(messages: Any, limits: ServeLimits, image_size: int):
  """-> (system, history [(user segs, assistant segs)], query segs, image arrays, image sizes)."""
  if not isinstance(messages, list) or not messages:
    raise _bad("'messages' must be a non-empty list", "messages")
  system_parts, turns, images, sizes = [], [], [], []
  for i, msg in enumerate(messages):
    p = f"messages[{i}]"
    if not isinstance(msg, dict):
      raise _bad("a message must be an object", p)
    role = msg.get("role")
    if role not in ("system", "developer", "user", "assistant"):
      raise _bad(f"unsupported role {role!r}", p + ".role")
    segs = _content_segments(msg.get("content"), p + ".content", role, limits, image_size,
                             images, sizes)
    if role in ("system", "developer"):
      if turns:
        raise _bad("system messages must come before the conversation", p)
      system_parts.append("".join(s["text"] for s in segs))
    elif role == "user" and turns and turns[-1][0] == "user":
      turns[-1][1].extend(segs)  # consecutive user messages form one turn
    elif role == "assistant" and (not turns or turns[-1][0] != "user"):
      raise _bad("an assistant message must follow a user message", p)
    else:
      turns.append((role, segs))
  if not turns or turns[-1][0] != "user":
    raise _bad("the last message must be from the user", "messages")
  history = []
  for k in range(0, len(turns) - 1, 2):
    answer = "".join(s["text"] for s in turns[k + 1][1])
    history.append((turns[k][1], answer_segments(answer)))
  system = "\n".join(system_parts) if system_parts else DEFAULT_SYSTEM
  return system, history, turns[-1][1], images, sizes


def parse_request(body: Any, predictor, limits: ServeLimits, *, model_names: Sequence[str],
                  default_max_tokens: int = CHAT_DEFAULTS.max_new_tokens) -> ChatRequest:
  """Validates a /v1/chat/completions body and builds its prompt (raises APIError)."""
  if not isinstance(body, dict):
    raise _bad("the request body must be a JSON object")
  model = body.get("model")
  if not isinstance(model, str):
    raise _bad("'model' is required", "model")
  if model not in model_names:
    raise APIError(404, f"The model '{model}' does not exist (this server has "
                   f"{', '.join(model_names)})", param="model", code="model_not_found")
  if body.get("n", 1) != 1:
    raise _bad("only n=1 is supported", "n")
  given = body.get("max_completion_tokens", body.get("max_tokens"))
  max_tokens = _number({"max_tokens": given}, "max_tokens", default_max_tokens, int, lo=1)
  temperature = _number(body, "temperature", CHAT_DEFAULTS.temperature, float, lo=0, hi=2)
  top_p = _number(body, "top_p", CHAT_DEFAULTS.top_p, float, lo=0, hi=1, lo_open=True)
  seed = _number(body, "seed", 0, int)
  stop = body.get("stop")
  stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
  if (not isinstance(stop, list) or len(stop) > MAX_STOP_STRINGS
      or not all(isinstance(s, str) and s for s in stop)):
    raise _bad(f"'stop' must be a non-empty string or a list of up to {MAX_STOP_STRINGS}", "stop")
  stream = body.get("stream", False)
  if not isinstance(stream, bool):
    raise _bad("'stream' must be a boolean", "stream")
  options = body.get("stream_options") or {}
  include_usage = bool(isinstance(options, dict) and options.get("include_usage"))
  system, history, query, images, sizes = conversation(body.get("messages"), limits,
                                                       predictor.cfg.vision.image_size)
  ids, pictures = predictor.chat_prompt(history, query, system=system)
  window = predictor.generator.max_window
  if len(ids) > window:
    raise _bad(f"this conversation has {len(ids)} prompt tokens, more than the model's context "
               f"window of {window}", "messages", "context_length_exceeded")
  return ChatRequest(ids=list(ids), images=list(pictures), image_sizes=sizes, max_tokens=max_tokens,
                     max_tokens_given=given is not None, temperature=temperature, top_p=top_p,
                     seed=seed, stop=stop, stream=stream, include_usage=include_usage,
                     return_boxes=bool(body.get("return_boxes", False)))
