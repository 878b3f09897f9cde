"""Caption readers: Nocaps (COCO caption JSON) and Flickr30K (Karpathy split JSON or COCO caption JSON).

Layouts (under the task's data path):
  nocaps     nocaps_{split}_4500_captions.json (or nocaps_{split}_image_info.json: no captions, test; or
             Qwen-VL's nocaps_{split}.json), images in validation/ (val), {split}/ or images/
  flickr30k  dataset_flickr30k.json (Karpathy: images[].filename/split/sentences[].raw) or a COCO
             caption JSON flickr30k_karpathy_{split}.json (images[].file_name, or images[].image as
             Qwen-VL's evaluate_caption.py reads it); images in flickr30k-images/ or images/
"""

from __future__ import annotations

import collections
import pathlib

from qwenvl_jax.evals.tasks.base import Item, find_file, image_path, load_json


def read_coco_captions(path: pathlib.Path, root: pathlib.Path, image_dirs: tuple[str, ...]) -> list[Item]:
  """COCO caption format: {"images": [{id, file_name}], "annotations": [{image_id, caption}]}."""
  data = load_json(path)
  caps = collections.defaultdict(list)
  for ann in data.get("annotations") or []:
    caps[ann["image_id"]].append(ann["caption"])
  has_captions = bool(data.get("annotations"))
  # Qwen-VL's converted caption files (evaluate_caption.py) name the image `image`, not `file_name`.
  for i, img in enumerate(data["images"]):
    if "id" not in img or not ("file_name" in img or "image" in img):
      raise ValueError(f"{path}: images[{i}] needs 'id' and 'file_name' (COCO) or 'image' (Qwen-VL's "
                       "converted file)")
  return [{"id": img["id"], "image": image_path(root, img.get("file_name") or img["image"], *image_dirs),
           "captions": caps.get(img["id"], []) if has_captions else None}
          for img in data["images"]]


def read_nocaps(root: pathlib.Path, split: str) -> list[Item]:
  path = find_file(root, f"nocaps_{split}_4500_captions.json", f"nocaps_{split}_image_info.json",
                   f"nocaps_{split}.json")
  # nocaps ships val images in validation/ (test images in test/).
  return read_coco_captions(path, root, ({"val": "validation"}.get(split, split), split, "images", ""))


def read_flickr30k(root: pathlib.Path, split: str) -> list[Item]:
  dirs = ("flickr30k-images", "images", "")
  karpathy = root / "dataset_flickr30k.json"
  if not karpathy.is_file():
    return read_coco_captions(find_file(root, "dataset_flickr30k.json", f"flickr30k_karpathy_{split}.json"),
                              root, dirs)
  return [{"id": img["imgid"], "image": image_path(root, img["filename"], *dirs),
           "captions": [s["raw"] for s in img["sentences"]]}
          for img in load_json(karpathy)["images"] if img["split"] == split]
