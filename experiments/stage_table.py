"""The stage table of `experiments.three_stage` reports: held-out scores after each stage, asked with the
pre-training prompt and in ChatML, and the commands' seconds and load.

  python -m experiments.stage_table RESULTS/three_stage.json [OTHER/three_stage.json ...]

`three_stage` writes RESULTS/stage_table.md with it. For a run that reused another's stages 0-2
(`--reuse`), the timing also lists the reused commands, so "stages 0-2 there + stage 3 here" is one
total.
"""

from __future__ import annotations

import json
import pathlib
import sys

TASKS = ("synth_grounding", "synth_ocr", "synth_caption", "synth_vqa")
REUSED_COMMANDS = ("prepare_data", "train_stage0", "vision_warmup", "train_stage1", "eval_stage1",
                   "train_stage2", "eval_stage2")


def _score(metrics: dict, task: str) -> str:
  m = metrics.get(task)
  if m is None or m.get("score") is None:
    return "-"
  return f"{m['score']:.1f}" if task.endswith("caption") or task.endswith("caption_chat") else f"{m['score']:.1f}%"


def rows(report: dict, label: str = "") -> list[str]:
  out = []
  for stage, info in sorted(report["stages"].items(), key=lambda kv: int(kv[0])):
    m = info["metrics"]
    pre = " | ".join(_score(m, t) for t in TASKS)
    chat = " / ".join(_score(m, f"{t}_chat") for t in TASKS)
    out.append(f"| {label}{', ' if label else ''}after stage {stage} | {pre} | {chat} |")
  return out


def table(reports: dict[str, dict]) -> str:
  head = ["| run | grounding (IoU>=0.5) | OCR word acc | caption CIDEr | VQA acc | "
          "asked in ChatML: grounding / OCR / CIDEr / VQA |", "|---|---|---|---|---|---|"]
  return "\n".join(head + [r for label, rep in reports.items() for r in rows(rep, label)])


def timed_commands(report: dict) -> list[dict]:
  """This run's commands, preceded by the reused run's stage 0-2 commands when it reused them."""
  reused = [c for c in report.get("reused_commands") or [] if c["name"] in REUSED_COMMANDS]
  own = [c for c in report["commands"] if not (reused and c["name"] in ("eval_stage1", "eval_stage2"))]
  return reused + own


def timing(report: dict) -> str:
  cmds = timed_commands(report)
  lines = ["| command | seconds | load average before -> after |", "|---|---|---|"]
  lines += [f"| {c['name']}{' (reused)' if c in (report.get('reused_commands') or []) else ''} | "
            f"{c['seconds']:.0f} | {c.get('load_before', '?')} -> {c.get('load_after', '?')} |" for c in cmds]
  total = sum(c["seconds"] for c in cmds)
  lines.append(f"| **total** | **{total:.0f} ({total / 60:.1f} min)** | |")
  return "\n".join(lines)


def markdown(report: dict, label: str = "") -> str:
  return f"{table({label: report})}\n\n{timing(report)}\n"


def main(argv=None):
  paths = [pathlib.Path(p) for p in (argv if argv is not None else sys.argv[1:])]
  if not paths:
    print(__doc__)
    return 2
  reports = {p.parent.name: json.loads(p.read_text()) for p in paths}
  print(table(reports))
  for name, rep in reports.items():
    print(f"\n{name}:\n{timing(rep)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
