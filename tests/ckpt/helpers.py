"""Independent readers for HF weight files (the safetensors / torch libraries, not our reader)."""

import json
import pathlib

import torch
from safetensors.torch import load_file


def load_hf_tensors(path) -> dict[str, torch.Tensor]:
  path = pathlib.Path(path)
  out = {}
  for f in sorted(path.glob("*.safetensors")):
    out.update(load_file(f))
  for f in sorted(path.glob("pytorch_model*.bin")):
    out.update(torch.load(f, weights_only=True))
  return out


def index_keys(path) -> set[str]:
  path = pathlib.Path(path)
  for name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
    if (path / name).exists():
      return set(json.loads((path / name).read_text())["weight_map"])
  raise FileNotFoundError(path)
