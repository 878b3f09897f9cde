"""The Task record and the helpers readers share.

A reader turns a benchmark's published files into a list of plain-dict items with a unique "id" and an
absolute "image" path, plus what its family needs:
  caption  captions: [str] | None
  vqa      question: str, answers: [str] | None, shot_answer: str | None (the answer few-shot uses)
  rec      expression: str, box: [x1, y1, x2, y2] pixels | None, width, height
  choice   question: str, choices: [str], answer: letter | None (+ hint, category)
  mme      subtask, image_name, question, answer ('Yes'/'No')
`answers`/`box`/... are None on splits without public ground truth (predictions only).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any, Callable

Item = dict[str, Any]
Segment = dict[str, str]  # {"image": path} or {"text": str}


@dataclasses.dataclass(frozen=True)
class Task:
  """One benchmark as the paper evaluates it.

  `splits[0]` is the split a plain run uses; `eval_splits` are those `--task all` runs (the paper's).
  Generation tasks decode greedily with `max_new_tokens` / `min_new_tokens`; `chat` asks the model side
  for the ChatML wrapper (MME is run on the chat model). Choice tasks are scored by likelihood instead.
  `shot_split` is where few-shot examples come from (None: few-shot not offered).
  """
  name: str
  family: str  # caption | vqa | rec | choice | mme
  reader: Callable[[pathlib.Path, str], list[Item]]
  splits: tuple[str, ...]
  prompt: Callable[[Item], list[Segment]]
  metric: str
  variants: tuple[str, ...]
  max_new_tokens: int = 10
  min_new_tokens: int = 1
  chat: bool = False
  shot_split: str | None = None
  eval_splits: tuple[str, ...] = ()
  extra_metrics: tuple[str, ...] = ()  # also reported in the metrics' details
  description: str = ""
  # Task-level variant name -> the metric's variant, where this benchmark's anchor scores differently
  # from the metric's default reading of that name (lmms-eval's TextVQA vs its VQAv2, say).
  variant_map: tuple[tuple[str, str], ...] = ()
  # Chat tasks: "Picture N: " labels around images (the stage-3 data's wording). MME's released eval
  # sends `<img>path</img>\n{question}` to chat as is, without them.
  label_pictures: bool = True
  files: str = ""  # what --data must hold (`eval --task NAME --describe`)

  def metric_variant(self, variant: str) -> str:
    return dict(self.variant_map).get(variant, variant)

  @property
  def default_split(self) -> str:
    return self.splits[0]

  @property
  def paper_splits(self) -> tuple[str, ...]:
    return self.eval_splits or self.splits[:1]

  @property
  def default_variant(self) -> str:
    return self.variants[0]

  @property
  def likelihood(self) -> bool:
    return self.family == "choice"

  @property
  def id_key(self) -> str:
    return "image_id" if self.family == "caption" else "question_id"

  @property
  def output_key(self) -> str:
    return "caption" if self.family == "caption" else "answer"

  def read(self, root, split: str | None = None) -> list[Item]:
    split = split or self.default_split
    if split not in self.splits:
      raise ValueError(f"task {self.name}: unknown split {split!r}; choose from {', '.join(self.splits)}")
    root = pathlib.Path(root)
    if not root.exists():
      raise FileNotFoundError(f"task {self.name}: data path {root} does not exist")
    items = self.reader(root, split)
    ids = [str(it["id"]) for it in items]
    if len(set(ids)) != len(ids):
      raise ValueError(f"task {self.name}: the reader produced duplicate ids")
    return items


def most_common(values: list[str]) -> str | None:
  """The most frequent value, first seen on ties (the answer a few-shot example shows)."""
  if not values:
    return None
  counts: dict[str, int] = {}
  for v in values:
    counts[v] = counts.get(v, 0) + 1
  return max(counts, key=counts.get)


def load_json(path) -> Any:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def load_jsonl(path) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def find_file(root: pathlib.Path, *names: str) -> pathlib.Path:
  """The first of `names` (relative to root) that exists; a clear error listing them otherwise."""
  for name in names:
    if (root / name).is_file():
      return root / name
  if root.is_file():
    return root
  raise FileNotFoundError(f"none of {', '.join(names)} under {root}")


def image_path(root: pathlib.Path, name: str, *dirs: str) -> str:
  """`name` under the first of `dirs` where it exists (the first dir when none has it yet)."""
  candidates = [root / d / name for d in dirs] or [root / name]
  for c in candidates:
    if c.exists():
      return os.fspath(c)
  return os.fspath(candidates[0])


def image_size(path: str) -> tuple[int, int]:
  """(width, height) from the file header (PIL reads no pixels for this)."""
  from PIL import Image
  with Image.open(path) as im:
    return im.size
