"""Raw records -> Qwen-VL fine-tuning conversations (paper B.2), so synthetic sets also feed stage 3.

One conversation per image: the picture is introduced in the first user turn ("Picture 1: <img>..</img>\\n"),
then its caption, questions, grounding requests and text reading follow as turns. The wording of the
grounding and reading requests is ours (the paper does not publish its instructions); answers use the
same markup as pre-training (`<ref>..</ref><box>..</box>`). The turn order is rotated by a hash of the
record id, so every kind of request also opens a conversation (a one-shot grounding question is then
something the model has seen).

`single_turns` writes the same record as one-turn chats instead, each worded exactly as a user (and the
synth_*_chat evaluations) asks a fresh chat: the picture introduced in the same turn as the request.
"""

from __future__ import annotations

import zlib

from qwenvl_jax.data import tasks
from qwenvl_jax.text import boxes as box_lib
from qwenvl_jax.text.chat_requests import DESCRIBE_REQUEST, READ_ALL_REQUEST, grounding_request


def grounding_turn(obj: dict, width: int, height: int) -> tuple[str, str]:
  """(request, answer) asking for one object's box: "Output the bounding box of {phrase}." ->
  "<ref>{phrase}</ref><box>(x1,y1),(x2,y2)</box>" (box normalised to [0, 1000))."""
  box = box_lib.format_box(box_lib.normalize_box(obj["box"], width, height))
  return grounding_request(obj["phrase"]), f"{box_lib.format_ref(obj['phrase'])}{box}"


def _turns(record: dict, max_words: int) -> list[tuple[str, str]]:
  turns = []
  if record.get("caption"):
    turns.append((DESCRIBE_REQUEST, record["caption"]))
  turns += [(qa["question"], qa["answer"]) for qa in record.get("qa") or []]
  w, h = record["width"], record["height"]
  turns += [grounding_turn(obj, w, h) for obj in (record.get("objects") or [])[:2]]
  words = record.get("words") or []
  if words and len(words) <= max_words:
    turns.append((READ_ALL_REQUEST, "\n".join(x["text"] for x in words)))
  return turns


def to_conversation(record: dict, image_path: str | None = None, max_words: int = 40) -> dict:
  """The Qwen-VL fine-tuning record for `record`; `image_path` is what goes in the `<img>` tag
  (default: `tasks.image_ref(record)`)."""
  turns = _turns(record, max_words)
  if not turns:
    raise tasks.TaskNotApplicable(f"record {record.get('id')}: nothing to converse about")
  first = zlib.crc32(str(record["id"]).encode()) % len(turns)  # stable across runs, unlike hash()
  turns = turns[first:] + turns[:first]
  path = image_path if image_path is not None else tasks.image_ref(record)
  conv = []
  for i, (q, a) in enumerate(turns):
    conv.append({"from": "user", "value": f"Picture 1: <img>{path}</img>\n{q}" if i == 0 else q})
    conv.append({"from": "assistant", "value": a})
  return {"id": record["id"], "conversations": conv}


def single_turn(conv_id: str, image: str, request: str, answer: str) -> dict:
  """A one-turn ChatML record asking about `image` as a fresh chat does."""
  return {"id": conv_id, "conversations": [
      {"from": "user", "value": f"Picture 1: <img>{image}</img>\n{request}"},
      {"from": "assistant", "value": answer}]}


def grounding_turns(record: dict, image_path: str) -> list[dict]:
  """One one-turn chat per object's grounding request ("{id}/ground{i}"), as synth_grounding_chat asks."""
  w, h = record["width"], record["height"]
  return [single_turn(f"{record['id']}/ground{i}", image_path, *grounding_turn(obj, w, h))
          for i, obj in enumerate(record.get("objects") or [])]


def question_turns(record: dict, image_path: str) -> list[dict]:
  """One one-turn chat per question ("{id}/qa{i}"), as synth_vqa_chat asks."""
  return [single_turn(f"{record['id']}/qa{i}", image_path, qa["question"], qa["answer"])
          for i, qa in enumerate(record.get("qa") or [])]


def single_turns(record: dict, image_path: str | None = None) -> list[dict]:
  """`grounding_turns` + `question_turns`: the items the synth_grounding_chat / synth_vqa_chat
  evaluations ask, in their wording. Captions and text reading stay in `to_conversation`'s dialogues."""
  path = image_path if image_path is not None else tasks.image_ref(record)
  return grounding_turns(record, path) + question_turns(record, path)
