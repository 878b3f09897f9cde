"""Does a checkpoint's image path carry information? Spread of the ViT and adapter outputs across images.

  python -m experiments.probe_vision --images runs/exp11/G/data/heldout/images \
      --ckpt runs/exp11/G/stage1 runs/exp11/G/stage2 ... [--out experiments/results/three_stage/vision_probe.json]

For 16 held-out pictures: the standard deviation over images of every output feature, averaged
(`across`), next to the overall standard deviation (`overall`), for the ViT output and the adapter
output (what the LLM sees), and the same for a randomly initialised model of the same config. An
adapter whose `across` is ~0 feeds the LLM the same 16 vectors whatever the picture: the model can
only learn the text prior (what the first attempt ended in; see experiments/README.md).
"""

from __future__ import annotations

import argparse
import pathlib
import sys


def spread(x) -> dict:
  import numpy as np
  x = np.asarray(x, np.float64)
  return {"across": round(float(x.std(0).mean()), 5), "overall": round(float(x.std()), 5)}


def probe(model, images) -> dict:
  import jax.numpy as jnp
  v = model.visual(jnp.asarray(images))
  return {"vit": spread(v), "adapter": spread(model.adapter(v))}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--images", required=True, help="folder of held-out PNGs")
  p.add_argument("--ckpt", nargs="+", required=True)
  p.add_argument("--n", type=int, default=16)
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)

  import numpy as np
  from flax import nnx

  from experiments import common
  from qwenvl_jax.data.preprocess import load_and_preprocess
  from qwenvl_jax.model.qwenvl import QwenVL

  paths = sorted(pathlib.Path(args.images).glob("*.png"))[:args.n]

  def trained_and_random(model, cfg):
    images = np.stack([load_and_preprocess(str(p), cfg.vision.image_size) for p in paths])
    return {"trained": probe(model, images), "random_init": probe(QwenVL(cfg, rngs=nnx.Rngs(0)), images)}

  common.probe_checkpoints(args.ckpt, trained_and_random, args.out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
