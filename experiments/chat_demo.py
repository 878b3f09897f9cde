"""A chat turn asking the stage-3 model for a box, drawn on the picture (predicted red, truth green).

  python -m experiments.chat_demo --ckpt runs/exp11/full/stage3 --data runs/exp11/full/data/heldout \
      --out experiments/results/three_stage [--n 8]

Uses the ChatML path of `qwenvl_jax.infer` (`Predictor.chat`, greedy) on held-out shapes images and
the fine-tuning wording "Output the bounding box of {phrase}."; writes chat_boxes.png (a grid, images
upscaled 3x so the 96 px pictures are visible) and chat_demo.json (questions, answers, IoU).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys

from experiments.plots import draw_pred_true


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--ckpt", required=True)
  p.add_argument("--data", required=True, help="folder with the held-out shapes.jsonl")
  p.add_argument("--out", required=True)
  p.add_argument("--n", type=int, default=8)
  args = p.parse_args(argv)

  from qwenvl_jax.data import draw
  from qwenvl_jax.evals.metrics.grounding import box_iou
  from qwenvl_jax.infer.api import load_predictor
  from qwenvl_jax.infer.generate import GREEDY
  from qwenvl_jax.text.boxes import parse_boxes_per_image

  data = pathlib.Path(args.data)
  records = [json.loads(line) for line in (data / "shapes.jsonl").read_text().splitlines()[:args.n]]
  pred = load_predictor(args.ckpt)
  sampling = dataclasses.replace(GREEDY, max_new_tokens=48)
  tiles, turns = [], []
  for rec in records:
    obj = rec["objects"][0]
    image = str(data / rec["image"])
    query = f"Output the bounding box of {obj['phrase']}."
    answer, _ = pred.chat(query, images=[image], sampling=sampling)
    boxes = parse_boxes_per_image(answer, [(rec["width"], rec["height"])], divisor=1000)[0]
    iou = box_iou(boxes[0].box, obj["box"]) if boxes else 0.0
    turns.append({"image": image, "query": query, "answer": answer, "true_box": obj["box"],
                  "iou": round(iou, 3)})
    tiles.append(draw_pred_true(image, [b.box for b in boxes], obj["box"]))
    print(f"{query!r} -> {answer!r} (IoU {iou:.2f})", flush=True)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  draw.grid(tiles, cols=4).save(out / "chat_boxes.png")
  hits = sum(t["iou"] >= 0.5 for t in turns)
  (out / "chat_demo.json").write_text(json.dumps(
      {"turns": turns, "box_format_kept": sum(bool(t["answer"].count("<box>")) for t in turns),
       "iou_ge_0.5": hits, "n": len(turns)}, indent=2) + "\n")
  print(json.dumps({"iou_ge_0.5": hits, "n": len(turns)}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
