"""Builds the small pre-trained base the demo (scripts/demo.sh) starts from: demo/base/.

  python -m experiments.demo_base [--work runs/demo_base] [--out demo/base] [--vision-steps 3000]

The demo trains a vision-language model in a few CPU minutes. The paper never starts from random
weights either: Qwen-VL starts from a pre-trained LLM (Qwen-7B) and a pre-trained vision encoder
(OpenCLIP ViT-bigG) that were never trained together. This base is the small-scale reproduction's stand-in
for that pair, made with the same commands as `experiments.three_stage`, shortened:
  1. `experiments.prepare_data`: shapes scenes (at most 3 shapes, 96 px) and one-word images from
     the training seed, and the SentencePiece vocabulary;
  2. stage 0: the LLM alone on the task texts, no image (stands in for Qwen-7B);
  3. stage V (`experiments.vision_warmup`): the ViT + adapter through throw-away heads on the
     training annotations (stands in for the pre-trained CLIP ViT);
  4. `qwenvl-jax convert --to hf --dtype bf16` into OUT (safetensors + config + tokenizer, ~5 MB),
     the form a released model is downloaded in.
No image-text pair has been trained on: the demo's "before" scores are this base's.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sys
import time

from experiments import common, three_stage

DATA_ARGS = ("--n-shapes", "6000", "--n-words", "3000", "--n-heldout-shapes", "100",
             "--n-heldout-words", "100")


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--work", default="runs/demo_base")
  p.add_argument("--out", default="demo/base")
  p.add_argument("--text-steps", type=int, default=300, help="stage 0 steps")
  p.add_argument("--vision-steps", type=int, default=3000, help="stage V steps (the shipped base: see base.json)")
  args = p.parse_args(argv)
  work, out = pathlib.Path(args.work), pathlib.Path(args.out)
  data, logs = work / "data", work / "logs"
  t0 = time.perf_counter()
  report = {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "commands": []}
  if not (data / "manifest.json").is_file():
    report["commands"].append(common.run(common.python_module(
        "experiments.prepare_data", "--out", str(data), *DATA_ARGS), logs / "prepare.log"))
  manifest = json.loads((data / "manifest.json").read_text())
  stage0 = work / "stage0"
  if not (stage0 / "checkpoints" / str(args.text_steps)).is_dir():
    report["commands"].append(common.run(three_stage.train_cmd(
        0, stage0, data, manifest, args.text_steps, None, []), logs / "stage0.log"))
  three_stage.vision_warmup(work, data, work, args.vision_steps,
                            lambda name, res: report["commands"].append({"name": name, **res}))
  tmp = out.with_name(out.name + ".tmp")
  shutil.rmtree(tmp, ignore_errors=True)
  report["commands"].append(common.run(
      ["qwenvl-jax", "convert", "--to", "hf", "--src", str(work / "stageV"), "--dst", str(tmp),
       "--dtype", "bf16", "--tokenizer", manifest["tokenizer"], "--quiet"], logs / "convert.log"))
  warmup = json.loads((work / "vision_warmup.json").read_text())
  (tmp / "base.json").write_text(json.dumps({
      "made_by": f"python -m experiments.demo_base --vision-steps {args.vision_steps} "
                 f"--text-steps {args.text_steps}",
      "data": manifest["settings"], "text_steps": args.text_steps, "vision_steps": args.vision_steps,
      "vision_heldout": warmup["curve"][-1]["heldout"] if warmup.get("curve") else None,
      "minutes": round((time.perf_counter() - t0) / 60, 1), "commands": report["commands"]},
      indent=2) + "\n")
  if out.exists():
    shutil.rmtree(out)
  tmp.rename(out)
  print(f"base written to {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
