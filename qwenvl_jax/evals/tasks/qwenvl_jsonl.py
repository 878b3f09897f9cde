"""Qwen-VL's own converted evaluation files (its EVALUATION.md has users download them), read as the
released `eval_mm/evaluate_*.py` read them.

  VQA family (evaluate_vqa.py)    one JSON per line: {"image", "question", "question_id", "answer"}; `answer`
                                  a string or a list (DocVQA). For the VQA-accuracy tasks the released
                                  script scores against the official annotation JSON shipped beside it
                                  ({name}_{split}_annotations.json, VQA format); without it the jsonl's
                                  `answer` is the only reference.
  grounding (evaluate_grounding)  {"image", "sent", "bbox": [x1, y1, x2, y2] pixels, "width", "height"};
                                  no id: the line number is the id.
`image` paths are relative to the Qwen-VL checkout ("data/textvqa/train_images/x.jpg"); they are looked
up under the task's folder by their longest suffix that exists there (the first candidate otherwise).
"""

from __future__ import annotations

import os
import pathlib

from qwenvl_jax.evals.tasks.base import Item, load_json, load_jsonl

# task -> split -> the converted file names (eval_mm ds_collections)
VQA_FILES = {
  "vqav2": {"val2014": ("vqav2_val.jsonl",), "train2014": ("vqav2_train.jsonl",),
            "test-dev2015": ("vqav2_testdev.jsonl",)},
  "okvqa": {"val2014": ("okvqa_val.jsonl",), "train2014": ("okvqa_train.jsonl",)},
  "textvqa": {"val": ("textvqa_val.jsonl",), "train": ("textvqa_train.jsonl",)},
  "vizwiz": {"val": ("vizwiz_val.jsonl",), "train": ("vizwiz_train.jsonl",), "test": ("vizwiz_test.jsonl",)},
  "docvqa": {"val": ("val.jsonl",), "train": ("train.jsonl",), "test": ("test.jsonl",)},
  "chartqa": {"test": ("test_human.jsonl", "test_augmented.jsonl"), "val": ("val_human.jsonl", "val_augmented.jsonl"),
              "train": ("train.jsonl",)},
  "gqa": {"testdev_balanced": ("testdev_balanced.jsonl",), "train_balanced": ("train.jsonl",)},
  "ocrvqa": {"test": ("ocrvqa_test.jsonl",), "val": ("ocrvqa_val.jsonl",), "train": ("ocrvqa_train.jsonl",)},
  "ai2d": {"test": ("test.jsonl",), "train": ("train.jsonl",)},
}
# The official annotation JSON the released script scores VQA accuracy against.
VQA_ANNOTATIONS = {
  "vqav2": "v2_mscoco_{split}_annotations.json", "okvqa": "mscoco_{split}_annotations.json",
  "textvqa": "textvqa_{split}_annotations.json", "vizwiz": "vizwiz_{split}_annotations.json",
}


def resolve_image(root: pathlib.Path, rel: str) -> str:
  """`rel` as written if absolute, else the longest suffix of it that exists under root."""
  if os.path.isabs(rel):
    return rel
  parts = pathlib.PurePosixPath(rel).parts
  for k in range(len(parts)):
    candidate = root.joinpath(*parts[k:])
    if candidate.exists():
      return os.fspath(candidate)
  return os.fspath(root / rel)


def vqa_files(task: str, root: pathlib.Path, split: str) -> list[pathlib.Path]:
  """The converted files of (task, split) present under root (empty when none is)."""
  names = VQA_FILES.get(task, {}).get(split, ())
  return [root / n for n in names if (root / n).is_file()]


def expected(task: str, split: str) -> str:
  return " + ".join(VQA_FILES.get(task, {}).get(split, ())) or "(none for this split)"


def _answers_from_annotations(task: str, root: pathlib.Path, split: str) -> dict | None:
  pattern = VQA_ANNOTATIONS.get(task)
  tag = {"test-dev2015": "test-dev2015"}.get(split, split)
  path = root / pattern.format(split=tag) if pattern else None
  if path is None or not path.is_file():
    return None
  return {str(a["question_id"]): [x["answer"] for x in a["answers"]] for a in load_json(path)["annotations"]}


def read_vqa(task: str, root: pathlib.Path, split: str, files: list[pathlib.Path]) -> list[Item]:
  official = _answers_from_annotations(task, root, split)
  items = []
  for path in files:
    subset = path.stem.rsplit("_", 1)[-1] if task == "chartqa" and "_" in path.stem else None
    for i, rec in enumerate(load_jsonl(path)):
      missing = [k for k in ("image", "question") if k not in rec]
      if missing:
        raise ValueError(f"{path}: line {i + 1} has no {', '.join(missing)} (Qwen-VL's converted format: "
                         "image, question, question_id, answer)")
      qid = rec.get("question_id", i)
      answer = rec.get("answer")
      answers = [answer] if isinstance(answer, str) else list(answer) if answer is not None else None
      if official is not None:
        answers = official.get(str(qid), answers)
      item = {"id": f"{subset}/{qid}" if subset else qid, "image": resolve_image(root, rec["image"]),
              "question": rec["question"], "answers": answers or None,
              "shot_answer": answer if isinstance(answer, str) else (answers[0] if answers else None)}
      if subset:
        item["subset"] = subset
      items.append(item)
  return items


def grounding_file(root: pathlib.Path, split: str) -> pathlib.Path | None:
  """{refcoco,refcoco+,refcocog}_{split}.jsonl under root."""
  hits = sorted(root.glob(f"*_{split}.jsonl"))
  return hits[0] if hits else None


def read_grounding(path: pathlib.Path, root: pathlib.Path) -> list[Item]:
  items = []
  for i, rec in enumerate(load_jsonl(path)):
    missing = [k for k in ("image", "sent", "bbox", "width", "height") if k not in rec]
    if missing:
      raise ValueError(f"{path}: line {i + 1} has no {', '.join(missing)} (Qwen-VL's converted format: "
                       "image, sent, bbox [x1,y1,x2,y2], width, height)")
    items.append({"id": i, "image": resolve_image(root, rec["image"]), "expression": rec["sent"],
                  "box": [float(v) for v in rec["bbox"]], "width": rec["width"], "height": rec["height"]})
  return items


def or_converted(task: str, official):
  """A reader: the benchmark's official files, else Qwen-VL's converted jsonl for (task, split); when
  neither is there, one error naming both."""
  def read(root: pathlib.Path, split: str) -> list[Item]:
    try:
      return official(root, split)
    except FileNotFoundError as e:
      files = vqa_files(task, root, split)
      if files:
        return read_vqa(task, root, split, files)
      raise FileNotFoundError(f"{e}; or Qwen-VL's converted {expected(task, split)}") from None
  read.__name__ = official.__name__
  read.__doc__ = official.__doc__
  return read
