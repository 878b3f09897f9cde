"""Builds the small pre-trained base the demo (scripts/demo.sh) starts from: demo/base/.

  python -m experiments.three_stage --work runs/demo_base --results runs/demo_base/results   # ~90 min
  python -m experiments.demo_base --from-run runs/demo_base [--out demo/base]

The demo shows, in a few CPU minutes, what Qwen-VL's stage 3 does: a model pre-trained on image-text
pairs, which reads pictures but has never seen a chat, is fine-tuned on ChatML conversations and
then answers questions and boxes objects when asked in the chat wording. `--from-run` takes the
stage-2 checkpoint of a finished small-scale reproduction (`experiments.three_stage`: its own data,
training seed 11, never the demo's seeds 0 / 1; stages 0 and V stand in for Qwen-7B and the CLIP
ViT, stages 1 and 2 are the paper's pre-training and multi-task pre-training) and converts it with
`qwenvl-jax convert --to hf --dtype bf16` into OUT (safetensors + config + tokenizer, ~5 MB), the
form a released model is downloaded in. base.json records the run's commands and its stage-2 scores.

Without `--from-run` it builds the earlier, cheaper base: the parts never trained together
(measured in docs/demo.md: the demo's 400 steps do not teach that LLM to read colour or shape):
  1. `experiments.prepare_data`: shapes scenes (at most 3 shapes, 96 px) and one-word images from
     the training seed, and the SentencePiece vocabulary;
  2. stage 0: the LLM alone on the task texts, no image (stands in for Qwen-7B);
  3. stage V (`experiments.vision_warmup`): the ViT + adapter through throw-away heads on the
     training annotations (stands in for the pre-trained CLIP ViT);
  4. with `--text-scale`: one scalar on the adapter's output projection so that an image token
     enters the LLM at the L2 norm of a text token (stage V leaves them ~50x larger; measured in
     docs/demo.md, it did not help);
  5. the conversion above.
`--vision-from BASE` starts that at step 4 from a base it wrote before.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sys
import time

from experiments import common, prepare_data, three_stage

DATA_ARGS = ("--n-shapes", "6000", "--n-words", "3000", "--n-heldout-shapes", "100",
             "--n-heldout-words", "100")


def match_text_scale(src: pathlib.Path, dst: pathlib.Path, seed: int, settings: dict,
                     n_images: int = 32) -> dict:
  """Writes SRC to DST with the adapter's output projection scaled so that the mean L2 norm of its
  image tokens (on N_IMAGES of the builder's training scenes: SEED, the data SETTINGS) equals the mean
  norm of the LLM's token embeddings. The warm-up trained the adapter through its own heads, never through the LLM, so nothing
  tied its output scale to the text's. `proj` is the adapter's last op, a bias-free matmul: a scalar
  on it scales every token alike and keeps every direction (what the warm-up heads read). -> the norms."""
  import jax.numpy as jnp
  import numpy as np

  from qwenvl_jax.ckpt.orbax_io import load_checkpoint, save_checkpoint
  from qwenvl_jax.data.preprocess import load_and_preprocess
  from qwenvl_jax.data.synth import shapes

  model, cfg, tokenizer = load_checkpoint(src)
  size = settings["size"]
  scenes = (shapes.generate(i, seed=seed, size=size, max_objects=settings["max_objects"],
                            radius=tuple(settings["shape_radius"])) for i in range(n_images))
  images = np.stack([load_and_preprocess(scene["image"], size) for scene in scenes])
  image_norm = float(np.linalg.norm(np.asarray(model.encode_images(jnp.asarray(images)[:, None]),
                                               np.float32), axis=-1).mean())
  text_norm = float(np.linalg.norm(np.asarray(model.llm.embed[...], np.float32), axis=-1).mean())
  scale = text_norm / image_norm
  model.adapter.proj[...] = model.adapter.proj[...] * scale
  save_checkpoint(dst, model, cfg, tokenizer_file=tokenizer, overwrite=True)
  return {"image_token_norm": round(image_norm, 4), "text_embedding_norm": round(text_norm, 4),
          "proj_scale": round(scale, 6), "images": n_images, "seed": seed}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--work", default="runs/demo_base")
  p.add_argument("--out", default="demo/base")
  p.add_argument("--text-steps", type=int, default=300, help="stage 0 steps")
  p.add_argument("--vision-steps", type=int, default=3000, help="stage V steps (without --from-run)")
  p.add_argument("--vision-from", metavar="BASE",
                 help="a base this script wrote before: reuse its stages 0 and V (skips steps 1-3)")
  p.add_argument("--text-scale", action="store_true",
                 help="scale the adapter output to the text embeddings' norm (step 4, without --from-run)")
  p.add_argument("--from-run", metavar="WORK",
                 help="a finished `experiments.three_stage --work WORK`: its stage 2 becomes the base")
  args = p.parse_args(argv)
  work, out = pathlib.Path(args.work), pathlib.Path(args.out)
  data, logs = work / "data", work / "logs"
  t0 = time.perf_counter()
  report = {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "commands": []}
  stage_v = work / "stageV"
  if args.from_run:
    run = pathlib.Path(args.from_run)
    reproduction = json.loads((run / "three_stage.json").read_text())
    manifest = json.loads((run / "data" / "manifest.json").read_text())
    src, tokenizer = run / "stage2", manifest["tokenizer"]
    made = {"data": manifest["settings"], "steps": reproduction["steps"],
            "vision_steps": reproduction["vision_steps"],
            "stage2_heldout": reproduction["stages"]["2"]["metrics"],
            # the run's own directory written as WORK (made_by's name for it), not this machine's path
            "reproduction_commands": json.loads(json.dumps(
                [c for c in reproduction["commands"]
                 if c.get("name", "").endswith(("stage1", "stage2", "warmup", "data"))]
            ).replace(str(run.resolve()), "WORK"))}
    made_by = ("python -m experiments.demo_base --from-run WORK "
               f"(WORK: python -m experiments.three_stage, steps {reproduction['steps']})")
  elif args.vision_from:
    source = pathlib.Path(args.vision_from)
    made = json.loads((source / "base.json").read_text())
    made = {"vision_from": made["made_by"],
            **{k: made[k] for k in ("data", "text_steps", "vision_steps", "vision_heldout")}}
    tokenizer = str(source / "sp.model")
    shutil.rmtree(stage_v, ignore_errors=True)  # derived from SOURCE alone: always rewritten
    report["commands"].append(common.run(
        ["qwenvl-jax", "convert", "--from", "hf", "--src", str(source), "--dst", str(stage_v), "--quiet"],
        logs / "convert_from.log"))
    made_by = "python -m experiments.demo_base --vision-from BASE (BASE: vision_from)"
  else:
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
    warmup = json.loads((work / "vision_warmup.json").read_text())
    tokenizer = manifest["tokenizer"]
    made = {"data": manifest["settings"], "text_steps": args.text_steps, "vision_steps": args.vision_steps,
            "vision_heldout": warmup["curve"][-1]["heldout"] if warmup.get("curve") else None}
    made_by = f"python -m experiments.demo_base --vision-steps {args.vision_steps} --text-steps {args.text_steps}"
  if not args.from_run:
    src = stage_v
    if args.text_scale:
      src = work / "stageV_text_scale"
      made["text_scale"] = match_text_scale(stage_v, src, seed=prepare_data.TRAIN_SEED, settings=made["data"])
  tmp = out.with_name(out.name + ".tmp")
  shutil.rmtree(tmp, ignore_errors=True)
  report["commands"].append(common.run(
      ["qwenvl-jax", "convert", "--to", "hf", "--src", str(src), "--dst", str(tmp),
       "--dtype", "bf16", "--tokenizer", tokenizer, "--quiet"], logs / "convert.log"))
  (tmp / "base.json").write_text(json.dumps({
      **made, "made_by": made_by,
      "minutes": round((time.perf_counter() - t0) / 60, 1), "commands": report["commands"]},
      indent=2) + "\n")
  if out.exists():
    shutil.rmtree(out)
  tmp.rename(out)
  print(f"base written to {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
