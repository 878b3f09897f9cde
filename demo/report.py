"""The demo's last step (scripts/demo.sh): before/after table, loss curve, the chat answer checked.

  python demo/report.py OUT --phrase PHRASE --box X1 Y1 X2 Y2 --size W H

Reads what the demo's CLI steps wrote under OUT: eval_before/ and eval_after/ (`qwenvl-jax eval`
metrics), run/metrics.jsonl (`qwenvl-jax train`), chat/answer.txt (`qwenvl-jax chat`'s output).
Writes OUT/loss_curve.png and OUT/summary.json (what tests/test_demo.py's slow test checks) and
prints the table. PHRASE and the box (pixels) are the truth for the chat picture's asked object.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from experiments import plots  # noqa: E402
from qwenvl_jax.evals.metrics.grounding import box_iou  # noqa: E402
from qwenvl_jax.text import boxes as box_lib  # noqa: E402

ROWS = {"synth_grounding_chat": "grounding, asked in chat (IoU >= 0.5)",
        "synth_vqa_chat": "VQA, asked in chat (exact match)",
        "synth_caption_chat": "caption, asked in chat (CIDEr)"}


def scores(folder: pathlib.Path) -> dict[str, dict]:
  out = {}
  for path in sorted(folder.glob("*.metrics.json")):
    m = json.loads(path.read_text())
    out[m["task"]] = {"score": m["score"], "n": m["n"]}
  return out


def chat_check(answer: str, phrase: str, truth_px, size) -> dict:
  """Did the answer name the asked object in <ref> and box it (IoU >= 0.5 with the true box)?"""
  boxes = box_lib.to_pixel_boxes(box_lib.parse_boxes(answer), *size)
  if not boxes:
    return {"well_formed": False, "named": False, "iou": 0.0, "hit": False}
  first = boxes[0]
  iou = float(box_iou(first.box, truth_px))
  named = (first.ref or "").strip().lower() == phrase.strip().lower()
  return {"well_formed": True, "named": named, "ref": first.ref, "box_px": [round(v, 1) for v in first.box],
          "iou": round(iou, 3), "hit": iou >= 0.5}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("out")
  p.add_argument("--phrase", required=True)
  p.add_argument("--box", type=float, nargs=4, required=True)
  p.add_argument("--size", type=float, nargs=2, required=True)
  p.add_argument("--seconds", type=int, default=None, help="the demo's wall time so far")
  args = p.parse_args(argv)
  out = pathlib.Path(args.out)
  before, after = scores(out / "eval_before"), scores(out / "eval_after")

  loss_png = out / "loss_curve.png"
  plots.loss_curves({"demo fine-tuning": out / "run"}, loss_png, "Training loss", k=10, x_offset=False)
  metrics = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines() if line]

  text = (out / "chat" / "answer.txt").read_text()
  found = re.search(r"^Assistant: (.*)$", text, re.MULTILINE)
  answer = found.group(1) if found else ""
  drawn = re.findall(r"^Boxes drawn: (.*)$", text, re.MULTILINE)
  chat = {"question": f"Output the bounding box of {args.phrase}.", "answer": answer,
          **chat_check(answer, args.phrase, args.box, args.size), "drawn": drawn}

  summary = {"before": before, "after": after, "chat": chat,
             "loss_first10": sum(m["loss"] for m in metrics[:10]) / max(1, len(metrics[:10])),
             "loss_last10": sum(m["loss"] for m in metrics[-10:]) / max(1, len(metrics[-10:])),
             "steps": metrics[-1]["step"] if metrics else 0, "seconds": args.seconds,
             "pictures": {"data preview": str(out / "data" / "train" / "preview.png"),
                          "loss curve": str(loss_png), "chat boxes": drawn[0] if drawn else None}}
  (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

  print(f"{'held-out metric':<42} {'before':>8} {'after':>8}   n")
  for task, label in ROWS.items():
    if task in after:
      b = (before.get(task) or {}).get("score")
      fmt = (lambda v: "-" if v is None else f"{v:.1f}")
      print(f"{label:<42} {fmt(b):>8} {fmt(after[task]['score']):>8}   {after[task]['n']}")
  print(f"{'training loss (first / last 10 steps)':<42} {summary['loss_first10']:>8.3f} "
        f"{summary['loss_last10']:>8.3f}")
  verdict = ("named and boxed the right object" if chat["named"] and chat["hit"] else
             "boxed the right place, named it differently" if chat["hit"] else
             "named it, box off (IoU < 0.5)" if chat["named"] else
             "no well-formed box" if not chat["well_formed"] else "missed")
  print(f"\nchat: {chat['question']}\n  answer: {answer}\n  -> {verdict} (IoU {chat['iou']:.2f})")
  print("\npictures:")
  for name, path in summary["pictures"].items():
    print(f"  {name:<13} {path or '(none: no well-formed box in the answer)'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
