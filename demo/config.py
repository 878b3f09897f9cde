"""The demo's training stage (scripts/demo.sh, docs/demo.md): the shipped base, fine-tuned on ChatML.

  qwenvl-jax train --config demo/config.py --init BASE --workdir W --set "data.paths=('CHAT.jsonl',)"

It lives beside the shipped base rather than in qwenvl_jax/configs/: the demo runs from a checkout.

The model is the one in demo/base (made by `python -m experiments.demo_base --from-run`: the small-scale
reproduction's "xs" model, 2.4M parameters, after its stages 0, V, 1 and 2 on its own data: it reads
pictures when asked with the pre-training prompts, but has never seen a chat); its vocabulary and
image ids are read from the base's config.json, so config and checkpoint cannot disagree. This is
the reproduction's stage 3, shortened to ~3 CPU minutes:
- ChatML conversations as the released stage 3 trains them (unpacked rows, loss on the answers), so
  the trained model answers in the chat wording the demo then asks in;
- ViT and adapter frozen, as in the reproduction's stages 2 and 3: what the base's vision side knows
  about where things are survives (every stage that trained them lost box precision,
  experiments/README.md), and without the vision backward pass a step costs about half;
- peak lr 1e-3, the reproduction's stage-2 rate (20x the paper's: a small model, few steps).
"""

import json
import pathlib

import ml_collections

BASE = pathlib.Path(__file__).resolve().parent / "base"


def _xs_model(image_size: int, vocab_size: int):
  import importlib.util
  path = pathlib.Path(__file__).resolve().parent.parent / "experiments" / "configs.py"
  spec = importlib.util.spec_from_file_location("qwenvl_configs_experiments", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.xs_model(image_size, vocab_size=vocab_size)


def get_config(variant=None):
  from qwenvl_jax.configs.stages import build

  if variant not in (None, "chat"):
    raise ValueError(f"unknown variant {variant!r}; known: ['chat']")
  hf = json.loads((BASE / "config.json").read_text())
  v = dict(stage=3, image_size=96, seq_len=288, batch_size=8, grad_accum=1, steps=400,
           peak_lr=1e-3, min_lr=1e-5, warmup_steps=20, frozen=("visual", "adapter"),
           mesh=dict(data=1, fsdp=-1, tensor=1), checkpoint_every=400, keep_checkpoints=1, log_every=20,
           data=dict(source="jsonl", paths=(), tokenizer=str(BASE / "sp.model"), format="chatml",
                     layout="unpacked", max_images=1, num_workers=0, read_prefetch=64))
  config = build("tiny", {"tiny": v})
  model = _xs_model(96, hf["vocab_size"])
  model.llm.seq_length = v["seq_len"]  # the training length (past it inference switches on NTK / log-n)
  start = hf["visual"]["image_start_id"]  # config.json names end / pad only where they are not start + 1 / + 2
  model.image_start_id = start
  model.image_end_id = hf["visual"].get("image_end_id", start + 1)
  model.image_pad_id = hf["visual"].get("image_pad_id", start + 2)
  config.model = model
  return ml_collections.ConfigDict(config)
