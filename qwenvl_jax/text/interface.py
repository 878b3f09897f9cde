"""Structured multimodal input -> token ids: the ONLY place special ids enter a sequence.

A sample is a list of segments, each a dict with one kind:

  {"text": str}               plain text, encoded with `Tokenizer.encode` (never special ids)
  {"image": path_or_array}    <img> + n_image_tokens x <imgpad> + </img>; the image is appended to
                              the returned list (the model overwrites exactly the positions between
                              the tags with the image's features, images in order of appearance)
  {"ref": phrase}             <ref> phrase </ref>
  {"box": (x1,y1,x2,y2)}      <box> "(x1,y1),(x2,y2)" </box>, normalised ints in [0, 1000); a list of
                              boxes gives one <box> each; may carry "ref": phrase (emitted first), or
                              "written": the coordinate text as a record wrote it ("(10, 20),(30,40)",
                              "(010,020),..."), encoded verbatim; it must read back as the same box
  {"quad": [(x,y)] * 4}       <quad> "(x1,y1),...,(x4,y4)" </quad> (may carry "written" likewise)
  {"special": "<|extra_0|>"}  one special id, by name (for code, never for user data)

Adjacent text (including the "Picture N: " labels and the coordinate strings) is merged before
encoding, so `encode_segments` gives exactly the ids the reference tokenizer gives for the same
markup: it splits text at special tokens and BPE-encodes each stretch in between.

Security rule: user text never becomes special tokens or file reads. Strings in "text" / "ref"
segments are encoded as plain text even if they contain "<|im_start|>" or "<img>"; an image path is
only ever taken from an explicit {"image": ...} segment. `parse_markup` is the explicit, opt-in parser
for the reference markup (`Picture 1: <img>path</img>\\nquestion`, `<ref>..</ref><box>(..),(..)</box>`)
in training records; it must never be applied to chat user text.

Image spans: `image_fill="pad"` (default) fills the span with <imgpad>; `"path"` reproduces the
reference tokenizer id for id (the path's UTF-8 bytes as ids 0..255, then <imgpad> up to
n_image_tokens). The model output is the same either way: those positions are overwritten.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from qwenvl_jax.text import boxes as box_lib
from qwenvl_jax.text.tokenizer import Tokenizer

DEFAULT_IMAGE_TOKENS = 256  # = adapter n_queries of the released model

Segment = Mapping[str, Any]
_KINDS = ("text", "image", "ref", "box", "quad", "special")


@dataclasses.dataclass
class Encoded:
  ids: list[int]
  images: list  # in order of appearance, one per <img> span


def _image_span(tok: Tokenizer, image, n_image_tokens: int, image_fill: str) -> list[int]:
  inner = []
  if image_fill == "path":
    if not isinstance(image, (str, pathlib.PurePath)):
      raise ValueError("image_fill='path' needs image paths, got an array")
    inner = list(str(image).encode("utf-8"))
    if len(inner) > n_image_tokens:
      raise ValueError(f"image path longer than {n_image_tokens} bytes: {str(image)[:80]}...")
  elif image_fill != "pad":
    raise ValueError(f"image_fill must be 'pad' or 'path', got {image_fill!r}")
  inner += [tok.img_pad_id] * (n_image_tokens - len(inner))
  return [tok.img_start_id] + inner + [tok.img_end_id]


def _segment_kind(seg) -> str:
  if not isinstance(seg, Mapping):
    raise TypeError(f"a segment is a dict like {{'text': ...}}, got {type(seg).__name__}: {seg!r}")
  keys = set(seg)
  if keys in ({"box", "ref"}, {"box", "written"}):
    return "box"
  if keys == {"quad", "written"}:
    return "quad"
  if len(keys) != 1 or not keys <= set(_KINDS):
    raise ValueError(f"segment {dict(seg)!r} must have exactly one key of {_KINDS} "
                     "(or 'box' with 'ref')")
  return next(iter(keys))


def _as_box_list(value) -> list:
  arr = np.asarray(value)
  if arr.shape == (4,):
    return [tuple(value)]
  if arr.ndim == 2 and arr.shape[1] == 4:
    return [tuple(b) for b in value]
  raise ValueError(f"'box' must be (x1, y1, x2, y2) or a list of them, got {value!r}")


def encode_segments(tok: Tokenizer, segments: Sequence[Segment], *,
                    n_image_tokens: int = DEFAULT_IMAGE_TOKENS, label_pictures: bool = False,
                    first_picture: int = 1, image_fill: str = "pad") -> Encoded:
  """Segments -> ids and images (see the module docstring).

  With `label_pictures`, each image is written as the reference chat helper does:
  "Picture {n}: " <img>..</img> "\\n", numbered from `first_picture`.
  """
  if n_image_tokens < 1:
    raise ValueError(f"n_image_tokens must be >= 1, got {n_image_tokens}")
  pieces: list[str | list[int]] = []  # text stretches and runs of special ids, in order
  images = []

  def text(s: str):
    if not isinstance(s, str):
      raise TypeError(f"text must be a str, got {type(s).__name__}")
    if pieces and isinstance(pieces[-1], str):
      pieces[-1] += s
    elif s:
      pieces.append(s)

  def ids(*token_ids: int):
    pieces.append(list(token_ids))

  def tagged(start_id: int, body: str, end_id: int):
    ids(start_id)
    text(body)
    ids(end_id)

  for seg in segments:
    kind = _segment_kind(seg)
    value = seg[kind]
    if kind == "text":
      text(value)
    elif kind == "image":
      if value is None:
        raise ValueError("image segment has no image")
      if label_pictures:
        text(f"Picture {first_picture + len(images)}: ")
      ids(*_image_span(tok, value, n_image_tokens, image_fill))
      images.append(value)
      if label_pictures:
        text("\n")
    elif kind == "ref":
      tagged(tok.ref_start_id, value, tok.ref_end_id)
    elif kind == "box":
      if "ref" in seg:
        tagged(tok.ref_start_id, seg["ref"], tok.ref_end_id)
      if "written" in seg:
        tagged(tok.box_start_id, _written(seg, box_lib.read_box_body, tuple(value)), tok.box_end_id)
        continue
      for b in _as_box_list(value):
        tagged(tok.box_start_id, box_lib.box_text(b), tok.box_end_id)
    elif kind == "quad":
      body = (_written(seg, box_lib.read_quad_body, tuple(tuple(p) for p in value)) if "written" in seg
              else box_lib.quad_text(value))
      tagged(tok.quad_start_id, body, tok.quad_end_id)
    else:  # special
      ids(tok.special(value))

  out: list[int] = []
  for p in pieces:
    out.extend(tok.encode(p) if isinstance(p, str) else p)
  return Encoded(out, images)


def _written(seg: Segment, read, value) -> str:
  """The segment's coordinate text as written, if it reads back as its value (else ValueError)."""
  text = seg["written"]
  if not isinstance(text, str) or read(text) != value:
    raise ValueError(f"segment {dict(seg)!r}: 'written' does not read back as the same coordinates")
  return text


# The tags the released make_context re-tokenises as special ids inside a model's earlier answer (its
# encode(..., allowed_special=IMAGE_ST)). <img>, </img> and <imgpad> are IMAGE_ST too, but here they
# stay text: a path the model wrote is never opened (module docstring's security rule).
ANSWER_TAGS = ("<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>")
_ANSWER_TAG = re.compile("|".join(re.escape(t) for t in ANSWER_TAGS))


def model_text_segments(text: str) -> list[Segment]:
  """A model's own earlier answer, as the released chat tokenises it when it goes back into history:
  the text exactly as written, split at every literal box/ref/quad tag (balanced or not, whatever its
  coordinates), each tag one special id, the stretches between BPE-encoded as they are."""
  if not isinstance(text, str):
    raise TypeError(f"answer must be a str, got {type(text).__name__}")
  out: list[Segment] = []
  pos = 0
  for m in _ANSWER_TAG.finditer(text):
    if m.start() > pos:
      out.append({"text": text[pos:m.start()]})
    out.append({"special": m.group(0)})
    pos = m.end()
  if pos < len(text):
    out.append({"text": text[pos:]})
  return out


def merge_text(segments: Iterable[Segment]) -> list[Segment]:
  """Joins adjacent text segments (copies; the input is untouched): one text run between the others."""
  out: list[Segment] = []
  for seg in segments:
    if "text" in seg and out and "text" in out[-1]:
      out[-1] = {"text": out[-1]["text"] + seg["text"]}
    else:
      out.append(dict(seg))
  return out


def image_span_mask(tok: Tokenizer, ids) -> np.ndarray:
  """True on every token of an <img> .. </img> span (tags included)."""
  return atomic_span_mask(ids, [(tok.img_start_id, tok.img_end_id)])


def atomic_span_pairs(tok: Tokenizer) -> list[tuple[int, int]]:
  """(start, end) id pairs of the spans that must never be cut: image, box, ref, quad."""
  return [(tok.img_start_id, tok.img_end_id), (tok.box_start_id, tok.box_end_id),
          (tok.ref_start_id, tok.ref_end_id), (tok.quad_start_id, tok.quad_end_id)]


def atomic_spans(ids, pairs: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
  """Half-open [start, end) ranges of start..end tag spans (tags included), in order.

  A start id inside an open span is content, not a new span; an unclosed span runs to the end.
  """
  ids = np.asarray(ids)
  ends = {int(s): int(e) for s, e in pairs}
  spans, n, i = [], len(ids), 0
  for s in np.flatnonzero(np.isin(ids, list(ends))).tolist():
    if s < i:
      continue
    hits = np.flatnonzero(ids[s + 1:] == ends[int(ids[s])])
    i = s + 2 + int(hits[0]) if len(hits) else n
    spans.append((s, i))
  return spans


def atomic_span_mask(ids, pairs: Sequence[tuple[int, int]]) -> np.ndarray:
  """True on tokens inside a start..end span (both tags included); see `atomic_spans`."""
  inside = np.zeros(np.shape(ids), bool)
  for s, e in atomic_spans(ids, pairs):
    inside[s:e] = True
  return inside


# --------------------------------------------------------------------------------------------
# The explicit markup parser for training records.

# A closed element whose content holds no other tag (a stray opener never swallows a valid one).
_MARKUP = re.compile(r"<(img|ref|box|quad)>((?:(?!</?(?:img|ref|box|quad)>).)*)</\1>",
                     re.DOTALL)
_ANY_TAG = re.compile(r"</?(?:img|ref|box|quad)>")


class MarkupError(ValueError):
  """A training record's markup is malformed (unclosed tag, bad coordinates)."""


def parse_markup(text: str, *, strict: bool = True) -> list[Segment]:
  """Reference markup -> segments. Opt-in, for TRAINING RECORDS only, never for chat user text.

  Recognises `<img>path</img>`, `<ref>phrase</ref>`, `<box>(x1,y1),(x2,y2)</box>` and
  `<quad>(x,y),(x,y),(x,y),(x,y)</quad>`; everything else ("Picture 1: ", "\\n", the question,
  even "<|im_start|>") stays plain text. Coordinates are kept as the record wrote them (spaces, leading
  zeros: a "written" key when not canonical), so the ids equal the released tokenizer's. Malformed tags
  raise MarkupError when `strict` (the data pipeline then skips the record by id), else they stay text.
  """
  segments: list[dict] = []

  def add_text(s: str):
    if not s:
      return
    if strict and _ANY_TAG.search(s):
      raise MarkupError(f"unbalanced or nested tag in {s[:120]!r}")
    if segments and "text" in segments[-1]:
      segments[-1]["text"] += s
    else:
      segments.append({"text": s})

  pos = 0
  for m in _MARKUP.finditer(text):
    kind, body = m.group(1), m.group(2)
    if kind == "img":
      seg = {"image": body} if body.strip() == body and body else None
    elif kind == "ref":
      seg = {"ref": body}
    elif kind == "box":
      b = box_lib.read_box_body(body)
      seg = None if b is None else {"box": b} if body == box_lib.box_text(b) else {"box": b, "written": body}
    else:
      q = box_lib.read_quad_body(body)
      seg = None if q is None else {"quad": q} if body == box_lib.quad_text(q) else {"quad": q, "written": body}
    if seg is None:
      if strict:
        raise MarkupError(f"malformed <{kind}> markup: {m.group(0)[:120]!r}")
      continue  # left in place as text, swept up below
    add_text(text[pos:m.start()])
    segments.append(seg)
    pos = m.end()
  add_text(text[pos:])
  return segments


def encode_markup(tok: Tokenizer, text: str, *, strict: bool = True, **kwargs) -> Encoded:
  """`encode_segments(parse_markup(text))`; the text carries its own "Picture N:" labels."""
  return encode_segments(tok, parse_markup(text, strict=strict), label_pictures=False, **kwargs)
