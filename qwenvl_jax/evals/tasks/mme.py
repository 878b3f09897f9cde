"""MME readers, two layouts:

  release  the benchmark as released: MME_Benchmark_release_version/<subtask>/ (the data path may be that
           folder or hold it). Per subtask either image + txt pairs side by side (000000006040.jpg +
           000000006040.txt) or images/ + questions_answers_YN/ (artwork, celebrity, landmark, posters,
           scene; artwork's images may sit in images/toy_dataset/); each txt has lines `question<TAB>answer`.
  results  one `{subtask}.txt` per subtask, lines `image<TAB>question<TAB>answer` (the MME eval tool's
           Your_Results format, as Qwen-VL's eval reads it), in the data path or its Your_Results/;
           images in images/{subtask}/, {subtask}/ or {subtask}/images/.
Ids are "{subtask}/{image}/{k}", k the question's index for that image (the same in both layouts).
"""

from __future__ import annotations

import collections
import pathlib
import sys

from qwenvl_jax.evals.metrics.mme import COGNITION, PERCEPTION
from qwenvl_jax.evals.tasks.base import Item, image_path

RELEASE_DIR = "MME_Benchmark_release_version"
_IMAGE_EXTS = (".jpg", ".png", ".jpeg", ".JPG", ".PNG")


def _release_root(root: pathlib.Path) -> pathlib.Path | None:
  for d in (root / RELEASE_DIR, root):
    if any((d / s).is_dir() for s in PERCEPTION + COGNITION):
      return d
  return None


def _pairs(sub: pathlib.Path) -> list[tuple[pathlib.Path, pathlib.Path]]:
  """(question txt, image) per image of one release subtask folder.

  artwork's questions_answers_YN/ has txt files for more images than the release ships (its evaluated
  images sit in images/toy_dataset/, as Qwen-VL's get_images.py copies them): a txt without its image
  is left out, with one warning line per subtask."""
  split_layout = (sub / "questions_answers_YN").is_dir()
  txt_dir = sub / "questions_answers_YN" if split_layout else sub
  img_dirs = (sub / "images", sub / "images" / "toy_dataset") if split_layout else (sub,)
  out, missing = [], 0
  for txt in sorted(txt_dir.glob("*.txt")):
    image = next((d / (txt.stem + ext) for d in img_dirs for ext in _IMAGE_EXTS if (d / (txt.stem + ext)).is_file()),
                 None)
    if image is None:
      missing += 1
      continue
    out.append((txt, image))
  if missing:
    print(f"warning: MME {sub.name}: {missing} question file(s) without their image in "
          f"{', '.join(str(d) for d in img_dirs)}: left out", file=sys.stderr)
  return out


def _read_release(base: pathlib.Path) -> list[Item]:
  items = []
  for subtask in PERCEPTION + COGNITION:
    if not (base / subtask).is_dir():
      continue
    for txt, image in _pairs(base / subtask):
      for k, line in enumerate(l for l in txt.read_text(encoding="utf-8").splitlines() if l.strip()):
        question, sep, answer = line.rpartition("\t")
        if not sep:
          raise ValueError(f"{txt}: line '{line[:60]}' is not question<TAB>answer")
        items.append({"id": f"{subtask}/{image.name}/{k}", "subtask": subtask, "image_name": image.name,
                      "image": str(image), "question": question, "answer": answer.strip()})
  return items


def read_mme(root: pathlib.Path, split: str) -> list[Item]:
  txt_dir = next((d for d in (root, root / "Your_Results") if any(d.glob("*.txt"))), None)
  if txt_dir is None:
    base = _release_root(root)
    if base is None:
      raise FileNotFoundError(f"MME: neither {RELEASE_DIR}/<subtask>/ nor Your_Results-style <subtask>.txt "
                              f"files under {root}")
    return _read_release(base)
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
