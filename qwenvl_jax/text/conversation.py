"""Token sequences for training and inference: ChatML (stage 3), pretraining (stages 1-2), chat.

ChatML is built exactly as the reference finetune.py does, piece by piece (each piece BPE-encoded on
its own, then concatenated):

  <|im_start|> "system" "\\n" "You are a helpful assistant." <|im_end|> "\\n"
  <|im_start|> "user" "\\n" {content} <|im_end|> "\\n"
  <|im_start|> "assistant" "\\n" {content} <|im_end|> "\\n"   ...

Loss mask (True = trained), from the reference label rule: every <|im_start|>, every <|im_end|> and
the "\\n" after it, and the assistant content. Role names, the "\\n" after a role, the system text
and user content are not trained. Image spans are never trained (their positions hold image
features). mask[0] is True here (an <|im_start|>), as in the reference labels; since a target at t
is predicted from t-1, packing/padding clear the mask on each segment's first token.

Pictures are labelled "Picture N: " with N continuing across turns (paper B.2). Message content is a
plain string (never parsed: user text cannot create images or special tokens) or a segment list (see
`interface.py`). Training records in the reference JSON form go through `chatml_from_record`, which
opts in to the markup parser; their text already carries its "Picture N:" labels.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from qwenvl_jax.text import interface
from qwenvl_jax.text.tokenizer import Tokenizer

DEFAULT_SYSTEM = "You are a helpful assistant."
ROLES = ("user", "assistant")

Content = str | Sequence[Mapping[str, Any]]


@dataclasses.dataclass
class TokenizedSample:
  ids: np.ndarray  # int32 [T]
  loss_mask: np.ndarray  # bool [T]; True = token is a training target
  images: list = dataclasses.field(default_factory=list)  # one per <img> span, in order

  def __post_init__(self):
    self.ids = np.asarray(self.ids, np.int32)
    self.loss_mask = np.asarray(self.loss_mask, bool)
    if self.ids.ndim != 1 or self.ids.shape != self.loss_mask.shape:
      raise ValueError(f"ids {self.ids.shape} and loss_mask {self.loss_mask.shape} must be equal 1-D")

  def __len__(self) -> int:
    return len(self.ids)


class _Builder:
  """Accumulates ids, mask and images; content is encoded piece by piece like the reference."""

  def __init__(self, tok: Tokenizer, n_image_tokens: int, image_fill: str, label_pictures: bool):
    self.tok, self.n_image_tokens = tok, n_image_tokens
    self.image_fill, self.label_pictures = image_fill, label_pictures
    self.ids: list[int] = []
    self.mask: list[bool] = []
    self.images: list = []

  def add(self, ids: Sequence[int], trained: bool):
    self.ids.extend(ids)
    self.mask.extend([trained] * len(ids))

  def text(self, s: str, trained: bool):
    self.add(self.tok.encode(s), trained)

  def content(self, content: Content, trained: bool):
    if isinstance(content, str):
      return self.text(content, trained)
    enc = interface.encode_segments(
        self.tok, content, n_image_tokens=self.n_image_tokens, label_pictures=self.label_pictures,
        first_picture=len(self.images) + 1, image_fill=self.image_fill)
    mask = np.full(len(enc.ids), trained) & ~interface.image_span_mask(self.tok, enc.ids)
    self.ids.extend(enc.ids)
    self.mask.extend(mask.tolist())
    self.images.extend(enc.images)

  def turn(self, role: str, content: Content, trained_content: bool):
    nl = self.tok.encode("\n")
    self.add([self.tok.im_start_id], True)
    self.text(role, False)
    self.add(nl, False)
    self.content(content, trained_content)
    self.add([self.tok.im_end_id], True)
    self.add(nl, True)

  def sample(self) -> TokenizedSample:
    return TokenizedSample(np.array(self.ids, np.int32), np.array(self.mask, bool), self.images)


def _role_and_content(message: Mapping[str, Any]):
  if "role" in message:
    role, content = message["role"], message.get("content")
  elif "from" in message:  # the reference finetune JSON
    role, content = message["from"], message.get("value")
  else:
    raise ValueError(f"message {dict(message)!r} has no 'role' (or 'from')")
  if role not in ROLES:
    raise ValueError(f"message role must be one of {ROLES}, got {role!r}")
  if content is None:
    raise ValueError(f"{role} message has no content")
  return role, content


def chatml_sample(tok: Tokenizer, messages: Sequence[Mapping[str, Any]], *,
                  system: str = DEFAULT_SYSTEM,
                  n_image_tokens: int = interface.DEFAULT_IMAGE_TOKENS, label_pictures: bool = True,
                  image_fill: str = "pad") -> TokenizedSample:
  """Stage-3 sample from [{"role": "user"|"assistant", "content": str | segments}, ...].

  The conversation must start with a user message (the reference silently drops a leading assistant
  message; we refuse it).
  """
  if not messages:
    raise ValueError("a conversation needs at least one message")
  b = _Builder(tok, n_image_tokens, image_fill, label_pictures)
  b.turn("system", system, False)
  for i, message in enumerate(messages):
    role, content = _role_and_content(message)
    if i == 0 and role != "user":
      raise ValueError("a conversation must start with a user message")
    b.turn(role, content, role == "assistant")
  return b.sample()


def chatml_from_record(tok: Tokenizer, record: Mapping[str, Any], *, strict: bool = True,
                       system: str = DEFAULT_SYSTEM,
                       n_image_tokens: int = interface.DEFAULT_IMAGE_TOKENS,
                       image_fill: str = "pad") -> TokenizedSample:
  """A reference fine-tuning record {"conversations": [{"from": .., "value": ..}, ..]}.

  Its values are trusted dataset text: `<img>path</img>` and box markup in them are parsed
  (`interface.parse_markup`; malformed markup raises MarkupError when `strict`).
  """
  messages = []
  for m in record["conversations"]:
    role, content = _role_and_content(m)
    messages.append({"role": role, "content": interface.parse_markup(content, strict=strict)})
  return chatml_sample(tok, messages, system=system, n_image_tokens=n_image_tokens,
                       label_pictures=False, image_fill=image_fill)


def pretrain_sample(tok: Tokenizer, prompt: Content, target: Content, *,
                    n_image_tokens: int = interface.DEFAULT_IMAGE_TOKENS, add_eod: bool = True,
                    image_fill: str = "pad") -> TokenizedSample:
  """Stages 1-2 (paper B.1): prompt (not trained) then target (trained) then <|endoftext|> (trained).

  E.g. prompt [{"image": p}, {"text": "Generate the caption in English:"}], target " a dog.". No
  "Picture N:" labels and no ChatML. Prompt and target are encoded separately.
  """
  b = _Builder(tok, n_image_tokens, image_fill, label_pictures=False)
  b.content(prompt, False)
  b.content(target, True)
  if add_eod:
    b.add([tok.eod_id], True)
  return b.sample()


def chat_prompt(tok: Tokenizer, history: Sequence[tuple[Content, Content]], query: Content, *,
                system: str = DEFAULT_SYSTEM,
                n_image_tokens: int = interface.DEFAULT_IMAGE_TOKENS,
                image_fill: str = "pad", label_pictures: bool = True) -> TokenizedSample:
  """Inference context for `query` after `history` [(query, response), ...].

  Same layout as training, ending with "<|im_start|>assistant\\n"; generation stops at
  `chat_stop_ids`. Picture numbers continue across the whole history. (The reference chat helper
  numbers pictures per call of `from_list_format`; pass pre-built segments to mimic that.)
  `label_pictures=False` writes images as bare `<img>..</img>` spans, as a query typed in the
  released markup without `from_list_format` (MME's eval) is tokenised.
  """
  b = _Builder(tok, n_image_tokens, image_fill, label_pictures=label_pictures)
  b.turn("system", system, False)
  for q, r in history:
    b.turn("user", q, False)
    b.turn("assistant", r, True)
  b.turn("user", query, False)
  b.add([tok.im_start_id], False)
  b.text("assistant", False)
  b.text("\n", False)
  return b.sample()


def chat_stop_ids(tok: Tokenizer) -> tuple[int, ...]:
  """Generation stops at <|im_end|> or <|im_start|> (reference), or <|endoftext|>."""
  return (tok.im_end_id, tok.im_start_id, tok.eod_id)
