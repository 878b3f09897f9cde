"""Multi-image, multi-round chat on top of a `Predictor` (ChatML, the chat model's defaults).

History is a list of turns `(query_segments, answer_text)`. Images only ever come from the caller
(`images=`), as explicit `{"image": path}` segments: the user's text is never parsed, so typing
`<img>x.png</img>` stays plain text. Pictures are numbered "Picture N: " across the whole
conversation (paper B.2) because the prompt is rebuilt from the full history every turn.

The model's own answers go back into the prompt exactly as written, each literal `<ref>`/`<box>`/
`<quad>` tag (closed or not, any coordinates) one special id, as the released make_context
re-tokenises them; any `<img>` the model writes stays text, so the model can never make us open a file.
"""

from __future__ import annotations

import os
from typing import Sequence

from qwenvl_jax.infer.generate import CHAT_DEFAULTS, SamplingConfig
from qwenvl_jax.text import interface
from qwenvl_jax.text.conversation import DEFAULT_SYSTEM

Turn = tuple[list, str]  # (query segments, answer)


def build_query(query: str, images: Sequence[str | os.PathLike] = ()) -> list[dict]:
  """Images first (each becomes "Picture N: <img>..</img>\\n"), then the text."""
  if not isinstance(query, str):
    raise TypeError(f"query must be a str, got {type(query).__name__}")
  return [{"image": os.fspath(p)} for p in images] + [{"text": query}]


def answer_segments(answer: str) -> list[dict]:
  """The model's answer as the released make_context re-tokenises it: exactly as written, each literal
  box/ref/quad tag a special id (`interface.model_text_segments`). An <img> the model wrote stays text."""
  return interface.model_text_segments(answer)


def history_images(history: Sequence[Turn]) -> list[str]:
  """Every picture of the conversation in order: index i is "Picture i+1"."""
  return [seg["image"] for query, _ in history for seg in query if "image" in seg]


def chat(predictor, query: str, history: Sequence[Turn] | None = None,
         images: Sequence[str | os.PathLike] = (), *, sampling: SamplingConfig = CHAT_DEFAULTS,
         system: str = DEFAULT_SYSTEM) -> tuple[str, list[Turn]]:
  """One round: -> (answer, history + [(query segments, answer)]).

  The answer keeps its special tags as text (`<ref>a dog</ref><box>(1,2),(3,4)</box>`), stripped, so
  `qwenvl_jax.infer.draw` can draw it.
  """
  history = list(history or [])
  segments = build_query(query, images)
  past = [(q, answer_segments(a)) for q, a in history]
  ids, pictures = predictor.chat_prompt(past, segments, system=system)
  out = predictor.generate_from_ids([ids], [pictures], sampling)[0]
  answer = predictor.tokenizer.decode(out, skip_special=False).strip()
  return answer, history + [(segments, answer)]


def format_history(history: Sequence[Turn]) -> str:
  """A readable transcript with the conversation's picture numbering."""
  lines, n = [], 0
  for i, (query, answer) in enumerate(history, 1):
    parts = []
    for seg in query:
      if "image" in seg:
        n += 1
        parts.append(f"Picture {n}: {seg['image']}")
      elif "text" in seg:
        parts.append(seg["text"])
    lines.append(f"[{i}] User: " + "\n    ".join(parts))
    lines.append(f"[{i}] Assistant: {answer}")
  return "\n".join(lines)
