"""The paper's prompts as segment lists (eval-metrics.md table), and few-shot assembly.

Images are segments of their own, never text to be parsed: `{"image": path}` stands for
`<img>path</img>` in the Qwen-VL prompt. `render` gives that text form for logs and for a model side
that wants it.
"""

from __future__ import annotations

import random
import string

from qwenvl_jax.evals.tasks.base import Item, Segment
from qwenvl_jax.text import chat_requests, pretrain_prompts
from qwenvl_jax.text.interface import merge_text
from qwenvl_jax.text.tokenizer import BOX_START, REF_END, REF_START


def caption(item: Item) -> list[Segment]:
  return [{"image": item["image"]}, {"text": "Describe the image in English:"}]


# The project's own models learn captions from the pre-training prompt (the paper's Table 9 wording),
# not from the released eval's; the synthetic caption set asks it that way.
def pretrain_caption(item: Item) -> list[Segment]:
  return [{"image": item["image"]}, {"text": pretrain_prompts.CAPTION_PROMPT}]


def vqa(item: Item) -> list[Segment]:
  return [{"image": item["image"]}, {"text": pretrain_prompts.vqa_prompt(item["question"])}]


# A chat model (stage 3) is asked the way its ChatML data asks (text/chat_requests.py); the runner wraps
# these in a ChatML user turn for tasks with `chat=True`.
def chat_caption(item: Item) -> list[Segment]:
  return [{"image": item["image"]}, {"text": chat_requests.DESCRIBE_REQUEST}]


def chat_question(item: Item) -> list[Segment]:
  return [{"image": item["image"]}, {"text": item["question"]}]


def chat_grounding(item: Item) -> list[Segment]:
  return [{"image": item["image"]}, {"text": chat_requests.grounding_request(item["expression"])}]


def grounding(item: Item) -> list[Segment]:
  # The released eval writes "<ref>{expr}</ref><box>" as text its tokenizer turns into special ids; ours never
  # does that to text, so the tags are structured segments and the expression stays plain text.
  return [{"image": item["image"]}, {"ref": item["expression"]}, {"special": BOX_START}]


def _options(choices) -> str:
  return "\n".join(f"{string.ascii_uppercase[i]}. {c}" for i, c in enumerate(choices))


def scienceqa(item: Item) -> list[Segment]:
  hint = item.get("hint") or "N/A"
  text = f"Context: {hint}\nQuestion: {item['question']}\nOptions: {_options(item['choices'])}\nAnswer:"
  return [{"image": item["image"]}, {"text": text}]


def seed_bench(item: Item) -> list[Segment]:
  text = f"\nQuestion: {item['question']}\nOptions: {_options(item['choices'])}\nAnswer:"
  return [{"image": item["image"]}, {"text": text}]


def mme(item: Item) -> list[Segment]:
  return [{"image": item["image"]}, {"text": "\n" + item["question"]}]


def render(segments: list[Segment]) -> str:
  """The prompt as the released eval scripts write it (for logs and golden-string tests)."""
  def one(s: Segment) -> str:
    if "image" in s:
      return f"<img>{s['image']}</img>"
    if "ref" in s:
      return f"{REF_START}{s['ref']}{REF_END}"
    return s.get("special") or s["text"]
  return "".join(one(s) for s in segments)


def shot_answer(item: Item) -> str | None:
  if "shot_answer" in item:
    return item["shot_answer"]
  if item.get("captions"):
    return item["captions"][0]
  return None


def pick_shots(pool: list[Item], k: int, seed: int, query_id) -> list[Item]:
  """k examples for one query, a pure function of (seed, query id): the same for any batch size,
  order or resume point. Python's str seeding is hashed with SHA-512, so it is stable across runs."""
  if k <= 0:
    return []
  if len(pool) < k:
    raise ValueError(f"few-shot pool has {len(pool)} examples, {k} requested")
  rng = random.Random(f"{seed}:{query_id}")
  return [pool[i] for i in sorted(rng.sample(range(len(pool)), k))]


def with_shots(prompt_fn, item: Item, shots: list[Item], rng_seed: int = 0) -> list[Segment]:
  """`prompt(shot) + " " + answer` for each shot, then the query prompt (no separator, as in the
  Qwen-VL eval). A caption shot uses one of its captions, chosen per (seed, shot, query)."""
  segs: list[Segment] = []
  for shot in shots:
    if shot.get("captions"):
      answer = random.Random(f"{rng_seed}:{shot['id']}:{item['id']}").choice(shot["captions"])
    else:
      answer = shot_answer(shot)
    if answer is None:
      raise ValueError(f"few-shot example {shot['id']} has no answer")
    segs += prompt_fn(shot) + [{"text": " " + answer}]
  return merge_text(segs + prompt_fn(item))
