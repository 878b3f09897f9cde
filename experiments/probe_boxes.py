"""How precisely does the token the LLM reads give an object's box? A linear probe per checkpoint.

  python -m experiments.probe_boxes --data runs/exp11/N/data \
      --ckpt runs/exp11/N/stageV runs/exp11/N/stage1 runs/exp11/N/stage2 [--out probe_boxes.json]

For every object of the first `--n-train` training scenes: the adapter output at the query cell
holding its centre (one of the 16 tokens the LLM gets; `vision_warmup.cell_of`), and its box in
pixels. A ridge regression from the standardised token to the box, fitted on those, scored on the
held-out scenes: the median absolute error of x1, y1, x2, y2. A linear read-out is a lower bound on
what the LLM can get, but the same bound across checkpoints shows which stage keeps or loses
"where": the vision warm-up trains exactly this (plus digits); a stage with a loss that does not need it can
overwrite it.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np


def ridge_errors(train_x, train_y, test_x, test_y, lam: float = 100.0) -> list[float]:
  """Median |error| per output column of a ridge fit on standardised inputs."""
  mean, std = train_x.mean(0), train_x.std(0) + 1e-6
  a, b = (train_x - mean) / std, (test_x - mean) / std
  offset = train_y.mean(0)
  weights = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ (train_y - offset))
  return np.median(np.abs(b @ weights + offset - test_y), 0).round(2).tolist()


def load_scenes(folder: pathlib.Path, size: int, limit: int) -> tuple[list[dict], np.ndarray]:
  """The first `limit` records of folder/shapes.jsonl and their images, preprocessed once for every
  checkpoint."""
  from qwenvl_jax.data.preprocess import load_and_preprocess
  from qwenvl_jax.evals.tasks.base import load_jsonl

  records = load_jsonl(folder / "shapes.jsonl")[:limit]
  images = np.stack([load_and_preprocess(str(folder / r["image"]), size, name=r["image"]) for r in records])
  return records, images


def centre_tokens(model, records: list[dict], images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(centre-cell adapter tokens [n_objects, hidden], boxes [n_objects, 4] px) of the scenes."""
  from flax import nnx

  from experiments.vision_warmup import cell_of

  tokens_of = nnx.jit(lambda m, x: m.adapter(m.visual(x)))
  tokens, boxes = [], []
  for start in range(0, len(records), 100):
    for r, t in zip(records[start:start + 100], np.asarray(tokens_of(model, images[start:start + 100]))):
      for o in r["objects"]:
        tokens.append(t[cell_of(o["box"], r["width"])])
        boxes.append(o["box"])
  return np.asarray(tokens), np.asarray(boxes, np.float64)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--data", required=True, help="experiments.prepare_data output (train/, heldout/)")
  p.add_argument("--ckpt", nargs="+", required=True)
  p.add_argument("--n-train", type=int, default=3000, help="training scenes to fit on")
  p.add_argument("--lam", type=float, default=100.0)
  p.add_argument("--size", type=int, default=96)
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)

  from experiments import common

  data = pathlib.Path(args.data)
  train_scenes = load_scenes(data / "train", args.size, args.n_train)
  held_scenes = load_scenes(data / "heldout", args.size, 10 ** 9)

  def box_errors(model, _):
    train, held = centre_tokens(model, *train_scenes), centre_tokens(model, *held_scenes)
    return {"median_abs_error_px_x1y1x2y2": ridge_errors(*train, *held, lam=args.lam),
            "n_train_objects": len(train[0]), "n_heldout_objects": len(held[0])}

  common.probe_checkpoints(args.ckpt, box_errors, args.out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
