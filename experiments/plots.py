"""PNG plots of the experiments (matplotlib, Agg): loss curves, stage-over-stage metric bars, and
held-out images with the predicted (red) and true (green) boxes."""

from __future__ import annotations

import json
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from experiments import common  # noqa: E402

METRIC_LABELS = {"synth_grounding": "grounding acc\n(IoU>=0.5)", "synth_ocr": "OCR word acc",
                 "synth_caption": "caption CIDEr", "synth_vqa": "VQA acc"}
METRIC_LABELS.update({f"{k}_chat": f"{v}\nChatML" for k, v in list(METRIC_LABELS.items())})


def _save(fig, path: pathlib.Path):
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def loss_curves(workdirs: dict[str, pathlib.Path], path: pathlib.Path, title: str, k: int = 10,
                x_offset: bool = True):
  """One line per run (smoothed over k steps); with x_offset the runs follow each other (stages)."""
  fig, ax = plt.subplots(figsize=(7, 4))
  start = 0
  for label, wd in workdirs.items():
    m = common.read_metrics(wd)
    if not m:
      continue
    steps = [r["step"] + (start if x_offset else 0) for r in m]
    ax.plot(steps, common.smooth([r["loss"] for r in m], k), label=label)
    if x_offset:
      start = steps[-1]
  ax.set_xlabel("step (stages back to back)" if x_offset else "step")
  ax.set_ylabel(f"training loss (moving average of {k})")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend()
  _save(fig, path)


def metric_bars(stages: dict, path: pathlib.Path):
  tasks = [t for t in METRIC_LABELS if any(t in info["metrics"] for info in stages.values())]
  fig, ax = plt.subplots(figsize=(4 + 1.2 * len(tasks), 4.5))
  width = 0.8 / max(1, len(stages))
  for i, (stage, info) in enumerate(sorted(stages.items())):
    vals = [(info["metrics"].get(t) or {}).get("score") or 0.0 for t in tasks]
    xs = [j + i * width for j in range(len(tasks))]
    bars = ax.bar(xs, vals, width, label=f"after stage {stage}")
    ax.bar_label(bars, fmt="%.1f", fontsize=7)
  ax.set_xticks([j + width * (len(stages) - 1) / 2 for j in range(len(tasks))])
  ax.set_xticklabels([METRIC_LABELS[t] for t in tasks], fontsize=8)
  ax.set_ylabel("score (%; CIDEr x100)")
  ax.set_title("Held-out synthetic metrics after each stage")
  ax.legend()
  _save(fig, path)


UPSCALE = 3  # the 96 px pictures are too small to see boxes on


def draw_pred_true(image_path, pred_boxes, true_box):
  """The picture upscaled, the true box in green and the predicted pixel boxes in red."""
  from PIL import Image, ImageDraw

  img = Image.open(image_path).convert("RGB")
  img = img.resize((img.width * UPSCALE, img.height * UPSCALE), Image.NEAREST)
  d = ImageDraw.Draw(img)
  d.rectangle([v * UPSCALE for v in true_box], outline=(0, 170, 0), width=2)
  for b in pred_boxes:
    x1, y1, x2, y2 = (v * UPSCALE for v in b)
    if x2 >= x1 and y2 >= y1:
      d.rectangle([x1, y1, x2, y2], outline=(220, 0, 0), width=2)
  return img


def grounding_examples(eval_dir: pathlib.Path, heldout: pathlib.Path, path: pathlib.Path, n: int = 12):
  """Held-out grounding items with the model's box (red) and the true one (green)."""
  from qwenvl_jax.data import draw
  from qwenvl_jax.evals.metrics.grounding import parse_box, to_pixels

  files = sorted(pathlib.Path(eval_dir).glob("synth_grounding*.predictions.jsonl"))
  if not files:
    return None
  preds = [json.loads(line) for line in files[0].read_text().splitlines() if line.strip()]
  preds = [p for p in preds if "question_id" in p][:n]
  records = {}
  for line in heldout.read_text().splitlines():
    rec = json.loads(line)
    records[rec["id"]] = rec
  tiles = []
  for p in preds:
    rid, _, obj = p["question_id"].rpartition("/obj")
    rec = records[rid]
    o = rec["objects"][int(obj)]
    box = to_pixels(parse_box(p["answer"]), rec["width"], rec["height"])
    tiles.append(draw_pred_true(heldout.parent / rec["image"], [box], o["box"]))
  draw.grid(tiles, cols=4).save(path)
  return path


def warmup_curve(result_json: pathlib.Path, path: pathlib.Path):
  """Held-out accuracies of the stage-V heads (experiments.vision_warmup) against the step."""
  if not result_json.is_file():
    return None
  curve = json.loads(result_json.read_text())["curve"]
  fig, ax = plt.subplots(figsize=(7, 4))
  steps = [c["step"] for c in curve]
  for key in curve[0]["heldout"]:
    ax.plot(steps, [c["heldout"][key] for c in curve], marker=".", label=key)
  ax.set_xlabel("warm-up step")
  ax.set_ylabel("held-out accuracy")
  ax.set_ylim(0, 1.02)
  ax.set_title("Vision warm-up: ViT + adapter through auxiliary heads")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  _save(fig, path)
  return path


def three_stage_plots(work: pathlib.Path, results: pathlib.Path, report: dict):
  work, results = pathlib.Path(work), pathlib.Path(results)
  loss_curves({f"stage {s}": work / f"stage{s}" for s in (0, 1, 2, 3)}, results / "loss_curves.png",
              "Three-stage training on synthetic data")
  metric_bars({int(k): v for k, v in report["stages"].items()}, results / "stage_metrics.png")
  warmup_curve(results / "vision_warmup.json", results / "vision_warmup.png")
  grounding_examples(work / "eval_stage3", work / "data" / "heldout" / "shapes.jsonl",
                     results / "grounding_examples.png")


def box_probe_bars(probe: dict[str, dict], path: pathlib.Path):
  """`experiments.probe_boxes` output: per checkpoint, the median error of x1, y1, x2, y2 (px)."""
  import numpy as np
  names = list(probe)
  errors = np.array([probe[n]["median_abs_error_px_x1y1x2y2"] for n in names])
  fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names)), 3.8))
  width = 0.2
  for i, coord in enumerate(("x1", "y1", "x2", "y2")):
    ax.bar(np.arange(len(names)) + (i - 1.5) * width, errors[:, i], width, label=coord)
  ax.set_xticks(np.arange(len(names)), [n.replace("runs/", "").replace("/", "\n", 1) for n in names], fontsize=7)
  ax.set_ylabel("held-out median |error| (px, 96 px image)")
  ax.set_title("linear read-out of the box from the centre-cell image token")
  ax.legend(fontsize=8)
  _save(fig, path)
