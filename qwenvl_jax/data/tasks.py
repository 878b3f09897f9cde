"""The paper's 7 multi-task pre-training formats (Table 3, Appendix B.1) as raw record -> (prompt, target).

The prompt is the untrained prefix (black in Box B.1), the target the trained continuation (blue); both are
markup strings (`<img>..</img>`, `<ref>..</ref>`, `<box>..</box>`, `<quad>..</quad>`) meant for
`text.interface.parse_markup` / `text.conversation.pretrain_sample`, which also appends the trained
`<|endoftext|>` (the `<eos>` of Box B.1), so targets here end without it. Boxes are normalised with
`text.boxes`, the one definition shared with the tokenizer and the evals.

  task                     prompt                                                  target
  caption                  <img>P</img>Generate the caption in English:            " {caption}"
  vqa                      <img>P</img>{question} Answer:                          " {answer}"
  grounding (GRIT)         <img>P</img>Generate the caption in English with        " {caption with <ref>s
                             grounding:                                              and <box>es inlined}"
  ref_grounding            <img>P</img><ref>{phrase}</ref>                         "<box>(x1,y1),(x2,y2)</box>"
  grounded_caption         <img>P</img><ref>This</ref><box>(..),(..)</box>         " is {phrase}"
  ocr                      <img>P</img>OCR with grounding:                         " <ref>{text}</ref><quad>..</quad>.."
  pure_text                ""                                                      "{text}"

Spacing follows the evaluation prompts (`{question} Answer:`, `<ref>{expr}</ref><box>`) rather than the
typeset Box B.1, whose stray blanks around tags ("</img> Does", "</ref> <quad> (568,121), (625,131)") are
typesetting: training and evaluation must agree token for token.

Ref grounding and grounded captioning are the duality pair of Table 3 (phrase -> box, box -> phrase);
"grounding" is the GRIT task, a caption with every grounded phrase followed by its boxes.
"""

from __future__ import annotations

from typing import Callable

from qwenvl_jax.text import boxes as box_lib
from qwenvl_jax.text.pretrain_prompts import CAPTION_PROMPT, GROUNDING_PROMPT, OCR_PROMPT, vqa_prompt


class TaskNotApplicable(ValueError):
  """The record lacks what the task needs (no caption, no objects, index out of range, ...)."""


def image_ref(record: dict) -> str:
  """What goes between `<img>` and `</img>`: the stored path, or the record id for in-memory images.

  It is only a label (the tokenizer allows 256 bytes); the pipeline supplies the pixels.
  """
  img = record.get("image")
  return img if isinstance(img, str) else str(record["id"])


def _img(record: dict) -> str:
  return f"<img>{image_ref(record)}</img>"


def _box(record: dict, box) -> str:
  return box_lib.format_box(box_lib.normalize_box(box, record["width"], record["height"]))


def _quad(record: dict, points) -> str:
  w, h = record["width"], record["height"]
  return box_lib.format_quad([box_lib.normalize_box((x, y, x, y), w, h)[:2] for x, y in points])


def _pick(items: list, i: int, what: str, record: dict):
  if not items or not -len(items) <= i < len(items):
    raise TaskNotApplicable(f"record {record.get('id')}: no {what} #{i} (has {len(items or [])})")
  return items[i]


def caption(record: dict) -> tuple[str, str]:
  if not record.get("caption"):
    raise TaskNotApplicable(f"record {record.get('id')}: no caption")
  return f"{_img(record)}{CAPTION_PROMPT}", f" {record['caption']}"


def vqa(record: dict, i: int = 0) -> tuple[str, str]:
  qa = _pick(record.get("qa"), i, "question", record)
  return f"{_img(record)}{vqa_prompt(qa['question'])}", f" {qa['answer']}"


def grounded_caption_text(record: dict) -> str:
  """The caption with each grounded mention wrapped in `<ref>` and followed by all its boxes.

  Objects point into the caption with `span`; objects sharing a span ("two red circles") share the ref.
  Overlapping spans cannot both be marked: keep them apart with `cleaning.remove_nested_refs` first.
  """
  text = record.get("caption") or ""
  by_span: dict = {}
  for obj in record.get("objects") or []:
    if obj.get("span") is not None:
      by_span.setdefault(tuple(obj["span"]), []).append(obj["box"])
  if not text or not by_span:
    raise TaskNotApplicable(f"record {record.get('id')}: no caption with grounded spans")
  out, pos = [], 0
  for (start, end), group in sorted(by_span.items()):
    if start < pos or not 0 <= start < end <= len(text):
      raise TaskNotApplicable(f"record {record.get('id')}: overlapping or invalid span {(start, end)}")
    out.append(text[pos:start])
    out.append(box_lib.format_ref(text[start:end]) + "".join(_box(record, b) for b in group))
    pos = end
  out.append(text[pos:])
  return "".join(out)


def grounding(record: dict) -> tuple[str, str]:
  return f"{_img(record)}{GROUNDING_PROMPT}", f" {grounded_caption_text(record)}"


def ref_grounding(record: dict, i: int = 0) -> tuple[str, str]:
  obj = _pick(record.get("objects"), i, "object", record)
  return f"{_img(record)}{box_lib.format_ref(obj['phrase'])}", _box(record, obj["box"])


def grounded_caption(record: dict, i: int = 0) -> tuple[str, str]:
  obj = _pick(record.get("objects"), i, "object", record)
  return f"{_img(record)}{box_lib.format_ref('This')}{_box(record, obj['box'])}", f" is {obj['phrase']}"


def ocr(record: dict, max_regions: int | None = None) -> tuple[str, str]:
  """All text regions in reading order (the record's order), at most `max_regions` of them."""
  words = (record.get("words") or [])[:max_regions]
  if not words:
    raise TaskNotApplicable(f"record {record.get('id')}: no words")
  body = "".join(box_lib.format_ref(w["text"]) + _quad(record, w["quad"]) for w in words)
  return f"{_img(record)}{OCR_PROMPT}", f" {body}"


def pure_text(record: dict) -> tuple[str, str]:
  if not record.get("text"):
    raise TaskNotApplicable(f"record {record.get('id')}: no text")
  return "", record["text"]


TASKS: dict[str, Callable[..., tuple[str, str]]] = {
  "caption": caption, "vqa": vqa, "grounding": grounding, "ref_grounding": ref_grounding,
  "grounded_caption": grounded_caption, "ocr": ocr, "pure_text": pure_text,
}
_INDEXED = {"vqa": "qa", "ref_grounding": "objects", "grounded_caption": "objects"}


def examples(record: dict, tasks=tuple(TASKS), max_regions: int | None = None) -> list[tuple[str, str, str]]:
  """Every (task, prompt, target) the record supports among `tasks`: one per question / object, and
  again for a task named again (the training mixture weights tasks that way)."""
  out = []
  for name in tasks:
    fn = TASKS[name]
    if name in _INDEXED:
      calls = [(i,) for i in range(len(record.get(_INDEXED[name]) or []))]
    else:
      calls = [()]
    for args in calls:
      try:
        pair = fn(record, max_regions=max_regions) if name == "ocr" else fn(record, *args)
      except TaskNotApplicable:
        continue
      out.append((name, *pair))
  return out
