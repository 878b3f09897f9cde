"""Can the ViT + adapter learn a purely visual fact from scratch? A classifier probe, no LLM.

  python -m experiments.probe_adapter --task position [--head adapter|vit] [--local-init 3] [--steps 300]
  python -m experiments.probe_adapter --task ocr --jitter 2 --fonts 2 [--local-init 3] [--steps 400]

The xs ViT (experiments/configs.py) feeds either the adapter (16 queries, flattened) or its own 64
patch features (flattened, `--head vit`) into one linear layer, trained with AdamW on
  position: which cell of a 4x4 grid holds the centre of the single shape (16 classes);
  ocr:      which of 100 words is written (experiments/easy_text.py; `--jitter -1` = anywhere).
Held-out accuracy on 10% of the images says how fast the image path can carry "where" and "what".
This is how the adapter bottleneck was found (experiments/README.md): under the released random
init the 16 queries start by averaging all patches and the probe stays at chance for hundreds of
steps, while `--head vit` learns position at once; `adapter.local_init` closes the gap.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def make_data(task: str, n: int, size: int, jitter: int, fonts: int, seed: int = 5):
  import numpy as np

  from experiments import easy_text, vision_warmup
  from qwenvl_jax.data.preprocess import load_and_preprocess
  from qwenvl_jax.data.synth import shapes

  images, labels = [], []
  words = easy_text.word_list(100)
  for i in range(n):
    if task == "position":
      rec = shapes.generate(i, seed=seed, size=size, max_objects=1)
      labels.append(vision_warmup.cell_of(rec["objects"][0]["box"], size))
    else:
      rec = easy_text.generate(i, seed=seed, size=size, n_words=100, font_px=(20, 20),
                               jitter=None if jitter < 0 else jitter, n_fonts=fonts)
      labels.append(words.index(rec["words"][0]["text"]))
    images.append(load_and_preprocess(rec["image"], size))
  return np.stack(images), np.asarray(labels), (16 if task == "position" else 100)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--task", choices=("position", "ocr"), default="position")
  p.add_argument("--head", choices=("adapter", "vit"), default="adapter")
  p.add_argument("--local-init", type=float, default=0.0, help="AdapterConfig.local_init (0: released)")
  p.add_argument("--steps", type=int, default=300)
  p.add_argument("--n", type=int, default=3000, help="images (90%% train, 10%% held out)")
  p.add_argument("--batch-size", type=int, default=32)
  p.add_argument("--lr", type=float, default=1e-3)
  p.add_argument("--jitter", type=int, default=2)
  p.add_argument("--fonts", type=int, default=2)
  p.add_argument("--out", default=None, help="JSON file for the accuracy curve")
  args = p.parse_args(argv)

  import numpy as np
  import optax
  from flax import nnx

  from experiments.configs import xs_model
  from qwenvl_jax.config import AdapterConfig, VisionConfig
  from qwenvl_jax.model.adapter import Adapter
  from qwenvl_jax.model.vit import VisionTransformer

  size = 96
  model_cfg = xs_model(size, local_init=args.local_init)
  vision, adapter = VisionConfig(**model_cfg.vision), AdapterConfig(**model_cfg.adapter)
  hidden = model_cfg.llm.hidden
  x, y, classes = make_data(args.task, args.n, size, args.jitter, args.fonts)
  n_train = int(0.9 * len(x))

  class Probe(nnx.Module):
    def __init__(self, rngs):
      self.visual = VisionTransformer(vision, rngs=rngs)
      self.adapter = Adapter(adapter, vision, hidden, rngs=rngs) if args.head == "adapter" else None
      width = adapter.n_queries * hidden if self.adapter else vision.grid ** 2 * vision.width
      self.head = nnx.Linear(width, classes, rngs=rngs)

    def __call__(self, images):
      f = self.visual(images)
      f = self.adapter(f) if self.adapter else f
      return self.head(f.reshape(f.shape[0], -1))

  model = Probe(nnx.Rngs(0))
  schedule = optax.warmup_cosine_decay_schedule(0.0, args.lr, 20, args.steps)
  opt = nnx.Optimizer(model, optax.adamw(schedule, b2=0.98, weight_decay=0.05), wrt=nnx.Param)

  @nnx.jit
  def step(model, opt, images, labels):
    def loss_fn(model):
      return optax.softmax_cross_entropy_with_integer_labels(model(images), labels).mean()
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    opt.update(model, grads)
    return loss

  def heldout_accuracy():
    preds = [np.asarray(model(x[i:i + 100])).argmax(-1) for i in range(n_train, len(x), 100)]
    return float((np.concatenate(preds) == y[n_train:]).mean())

  rng, curve, t0 = np.random.default_rng(0), [], time.perf_counter()
  for i in range(1, args.steps + 1):
    idx = rng.integers(0, n_train, args.batch_size)
    loss = float(step(model, opt, x[idx], y[idx]))
    if i % 50 == 0 or i == args.steps:
      curve.append({"step": i, "loss": round(loss, 4), "heldout_accuracy": heldout_accuracy()})
      print(json.dumps(curve[-1]), f"{time.perf_counter() - t0:.0f}s", flush=True)
  result = {**vars(args), "chance": 1 / classes, "curve": curve}
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=2)
  print(json.dumps({"task": args.task, "head": args.head, "local_init": args.local_init,
                    "heldout_accuracy": curve[-1]["heldout_accuracy"]}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
