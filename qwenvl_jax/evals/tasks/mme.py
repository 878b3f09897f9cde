"""MME reader: one `{subtask}.txt` per subtask, lines `image<TAB>question<TAB>answer` (the MME eval
tool's Your_Results format, as the Qwen-VL eval reads it).

Layout: the txt files in the data path (or its Your_Results/), images in images/{subtask}/,
{subtask}/ or {subtask}/images/. Ids are "{subtask}/{image}/{k}", k the question's index for that image.
"""

from __future__ import annotations

import collections
import pathlib

from qwenvl_jax.evals.metrics.mme import COGNITION, PERCEPTION
from qwenvl_jax.evals.tasks.base import Item, image_path


def read_mme(root: pathlib.Path, split: str) -> list[Item]:
  txt_dir = next((d for d in (root, root / "Your_Results") if any(d.glob("*.txt"))), None)
  if txt_dir is None:
    raise FileNotFoundError(f"no MME subtask .txt files under {root}")
  items = []
  for subtask in PERCEPTION + COGNITION:
    path = txt_dir / f"{subtask}.txt"
    if not path.is_file():
      continue
    seen = collections.Counter()
    for line in path.read_text(encoding="utf-8").splitlines():
      if not line.strip():
        continue
      image, question, answer = line.rstrip("\n").split("\t")
      k = seen[image]
      seen[image] += 1
      items.append({"id": f"{subtask}/{image}/{k}", "subtask": subtask, "image_name": image,
                    "image": image_path(root, image, f"images/{subtask}", subtask, f"{subtask}/images"),
                    "question": question, "answer": answer})
  return items
