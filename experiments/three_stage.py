"""The small-scale reproduction in one command: data + vocabulary, stage 1 -> 2 -> 3, evaluation after each.

  python -m experiments.three_stage [--work runs/exp11/full] [--results experiments/results/three_stage]
      [--steps 0:300,1:200,2:7500,3:3000] [--vision-steps 4500] [--eval-limit 150]
      [--sft-mix dialogues=12000,grounding=20000,vqa=32000,replay=40000] [--reuse OTHER_WORK]
      [--stage2-ckpt CKPT]   (stage 3 alone from a given stage 2, e.g. demo/base converted to Orbax)

1. `experiments.prepare_data`: synthetic shapes + one-word text images, held-out sets from another
   seed, a SentencePiece vocabulary trained on the training text (skipped if WORK/data exists).
2. Stage 0 (the LLM alone on the task texts without images: there is no pre-trained Qwen-7B),
   the vision warm-up (`experiments.vision_warmup`: the ViT + adapter on the training split's boxes and words
   through auxiliary heads: there is no pre-trained CLIP ViT either),
   stage 1 (captions, 72 px, LLM frozen as in the paper; only the adapter's output map trains),
   stage 2 (the pre-training tasks, 96 px, packed rows, the LLM trained on the warm-up's frozen image
   tokens), stage 3 (96 px, the LLM alone on `experiments.sft_mixture`'s mix: dialogues, single chat
   turns asking for boxes and answers, and replayed stage-2 samples; `--reuse` links another run's
   data and stages 0-2 so only stage 3 trains), each initialised from the previous one (`--init`), with
   `qwenvl-jax train --config experiments/configs.py:stageN` (data via the grain pipeline's
   `make_train_iterator`; the tokenizer is copied into each workdir for eval / chat).
3. After every stage `qwenvl-jax eval --task all` on the held-out sets: synth_grounding
   (accuracy at IoU >= 0.5), synth_ocr (exact match of one word = word accuracy), synth_caption
   (CIDEr), synth_vqa (exact match).
   `experiments.grounding_errors` breaks the grounding answers down (right object chosen? how far
   off is each coordinate?) into the report.
4. After stage 3 a chat turn asking for a box (`experiments.chat_demo`), drawn on the picture.
5. RESULTS/three_stage.json (commands, timings, load, metrics per stage), RESULTS/stage_table.md
   (`experiments.stage_table`) and the plots.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import time

from experiments import common, grounding_errors, sft_mixture, stage_table
from qwenvl_jax.evals.tasks.base import load_jsonl

TASK_FILES = {"synth_grounding": "shapes.jsonl", "synth_caption": "shapes.jsonl",
              "synth_vqa": "shapes.jsonl", "synth_ocr": "words.jsonl"}
# The same sets asked in the stage-3 ChatML wording (evaluated after every stage: only a chat model
# is expected to answer them).
TASK_FILES.update({f"{task}_chat": name for task, name in list(TASK_FILES.items())})


def stage_paths(data: pathlib.Path, stage: int, sft_mix: sft_mixture.SftMix = sft_mixture.SftMix()
                ) -> tuple[str, ...]:
  if stage == 3:  # built from the training split on first use (experiments/sft_mixture.py)
    return sft_mixture.paths(data, sft_mix)
  train = data / "train"
  names = {0: ("text.jsonl",), 1: ("shapes.jsonl",), 2: ("shapes.jsonl", "words.jsonl")}[stage]
  return tuple(str(train / n) for n in names)


def eval_root(data: pathlib.Path, root: pathlib.Path) -> pathlib.Path:
  """ROOT/{task}/test.jsonl for `qwenvl-jax eval --task all`, image paths made absolute."""
  for task, name in TASK_FILES.items():
    src = data / "heldout" / name
    (root / task).mkdir(parents=True, exist_ok=True)
    lines = []
    for line in src.read_text().splitlines():
      rec = json.loads(line)
      rec["image"] = str((src.parent / rec["image"]).resolve())
      lines.append(json.dumps(rec))
    (root / task / "test.jsonl").write_text("\n".join(lines) + "\n")
  return root


def default_steps() -> dict[int, int]:
  """Each stage's `steps` in experiments/configs.py (the one place they are set)."""
  from qwenvl_jax.config import load_config_dict
  return {stage: load_config_dict(f"{common.REPO / common.CONFIG}:stage{stage}").steps for stage in range(4)}


def parse_steps(text: str) -> dict[int, int]:
  out = default_steps()
  for part in filter(None, text.split(",")):
    k, _, v = part.partition(":")
    out[int(k)] = int(v)
  return out


def train_cmd(stage: int, workdir: pathlib.Path, data: pathlib.Path, manifest: dict, steps: int,
              init: pathlib.Path | None, extra: list[str],
              sft_mix: sft_mixture.SftMix = sft_mixture.SftMix()) -> list[str]:
  sets = common.tokenizer_overrides(manifest) + [
      f"data.paths={stage_paths(data, stage, sft_mix)!r}", f"steps={steps}",
      f"optim.warmup_steps={min(steps, max(1, steps // 15))}",
      f"checkpoint_every={min(steps, 1500)}"] + extra  # periodic: a killed stage resumes
  cmd = ["--config", f"{common.CONFIG}:stage{stage}", "--workdir", str(workdir)]
  if init is not None:
    cmd += ["--init", str(init)]
  for s in sets:
    cmd += ["--set", s]
  return ["qwenvl-jax", "train", *cmd]


def eval_cmd(ckpt: pathlib.Path, root: pathlib.Path, out: pathlib.Path, limit: int) -> list[str]:
  return ["qwenvl-jax", "eval", "--task", "all", "--data", str(root), "--ckpt", str(ckpt),
          "--limit", str(limit), "--batch-size", "16", "--out", str(out), "--no-progress"]


def scores(last_line: str) -> dict:
  results = json.loads(last_line)
  return {r["task"]: {"metric": r["metric"], "score": r["score"], "n": r["n"],
                      **({"anls": r["details"].get("anls")} if "anls" in (r.get("details") or {}) else {})}
          for r in results}


def grounding_breakdown(data: pathlib.Path, last_line: str, task: str = "synth_grounding") -> dict:
  """`experiments.grounding_errors` of the `task` answers named in the eval's result line."""
  result = next(r for r in json.loads(last_line) if r["task"] == task)
  predictions = [p for path in result["predictions"] for p in load_jsonl(pathlib.Path(common.REPO, path))]
  records = load_jsonl(pathlib.Path(common.REPO, data, "heldout", TASK_FILES["synth_grounding"]))
  return grounding_errors.breakdown(records, predictions)


def vision_warmup(work: pathlib.Path, data: pathlib.Path, results: pathlib.Path, steps: int,
                  record) -> pathlib.Path:
  """The vision warm-up on top of the stage-0 checkpoint -> the checkpoint stage 1 starts from."""
  from qwenvl_jax.ckpt.checkpoint import MODEL_CONFIG
  out = work / "stageV"
  if (out / MODEL_CONFIG).is_file():  # save_checkpoint writes atomically: present = finished
    print(f"vision warm-up: using the finished {out}")
  else:
    record("vision_warmup", common.run(common.python_module(
        "experiments.vision_warmup", "--init", str(work / "stage0"), "--data", str(data),
        "--out", str(out), "--steps", str(steps), "--result", str(results / "vision_warmup.json")),
        work / "logs" / "vision_warmup.log"))
  return out


REUSED = ("data", "stage0", "stageV", "stage1", "stage2")


def write_report(report: dict, results: pathlib.Path, work: pathlib.Path):
  """RESULTS/three_stage.json, and a copy in WORK (what a later `--reuse WORK` reads its timings from)."""
  for folder in (results, work):
    (folder / "three_stage.json").write_text(json.dumps(report, indent=2) + "\n")


def reuse_stages(work: pathlib.Path, source: pathlib.Path) -> list[dict] | None:
  """Links SOURCE's data and finished stages 0-2 into WORK, so only stage 3 trains (stage-3 variants
  and seeds from one stage 2); WORK's own results are written as usual. -> SOURCE's recorded commands
  (SOURCE/three_stage.json), so the timing can add up stages 0-2 there and stage 3 here."""
  work.mkdir(parents=True, exist_ok=True)
  for name in REUSED:
    link, target = work / name, (source / name).resolve()
    if not target.exists():
      raise SystemExit(f"--reuse: {target} does not exist (run the stages there first)")
    if link.is_symlink() or link.exists():
      if link.resolve() != target:
        raise SystemExit(f"--reuse: {link} exists and is not a link to {target}")
      continue
    link.symlink_to(target, target_is_directory=True)
  recorded = source / "three_stage.json"
  return json.loads(recorded.read_text())["commands"] if recorded.is_file() else None


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--work", default="runs/exp11/full")
  p.add_argument("--results", default="experiments/results/three_stage")
  p.add_argument("--steps", default="", help="per stage, e.g. 0:300,1:200,2:7500,3:600")
  p.add_argument("--vision-steps", type=int, default=4500,
                 help="steps of the stage-V vision warm-up after stage 0 (0: none)")
  p.add_argument("--eval-limit", type=int, default=150)
  p.add_argument("--data-args", default="", help="extra flags for experiments.prepare_data")
  p.add_argument("--set", dest="overrides", action="append", default=[],
                 help="extra config override for every stage")
  p.add_argument("--no-chat", action="store_true")
  p.add_argument("--sft-mix", default="", help="stage-3 mixture counts (experiments/sft_mixture.py), "
                 "e.g. dialogues=12000,grounding=20000,vqa=32000,replay=40000,seed=0")
  p.add_argument("--reuse", default="", help="a work dir whose data and stages 0-2 this run links to "
                 "(only stage 3 trains)")
  p.add_argument("--stage2-ckpt", default="", help="a stage-2 checkpoint to start stage 3 from (e.g. the "
                 "shipped demo/base after `qwenvl-jax convert --from hf`): stages 0-1 do not run, and it is "
                 "evaluated as the stage-2 row; WORK/data must be the data it was trained on")
  args = p.parse_args(argv)
  try:
    sft_mix = sft_mixture.SftMix.parse(args.sft_mix)
  except ValueError as e:
    p.error(str(e))

  work, results = pathlib.Path(args.work), pathlib.Path(args.results)
  results.mkdir(parents=True, exist_ok=True)
  data = work / "data"
  steps = parse_steps(args.steps)
  reused_commands = reuse_stages(work, pathlib.Path(args.reuse)) if args.reuse else None
  report = {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "steps": steps,
            "vision_steps": args.vision_steps, "sft_mix": dataclasses.asdict(sft_mix),
            "reused_stages_from": args.reuse or None, "reused_commands": reused_commands,
            "stage2_ckpt": args.stage2_ckpt or None,
            "overrides": args.overrides,
            "cpu_count": __import__("os").cpu_count(), "commands": [], "stages": {}}
  t_start = time.perf_counter()
  logs = work / "logs"

  def record(name, res):
    report["commands"].append({"name": name, **res})
    write_report(report, results, work)

  if not (data / "manifest.json").is_file():
    record("prepare_data", common.run(common.python_module(
        "experiments.prepare_data", "--out", str(data), *args.data_args.split()), logs / "prepare.log"))
  manifest = json.loads((data / "manifest.json").read_text())
  root = eval_root(data, work / "evaldata")

  init = None
  given_stage2 = pathlib.Path(args.stage2_ckpt) if args.stage2_ckpt else None
  for stage in (2, 3) if given_stage2 else (0, 1, 2, 3):
    wd = given_stage2 if stage == 2 and given_stage2 else work / f"stage{stage}"
    if wd == given_stage2:
      print(f"stage 2: using the given checkpoint {wd}")
    elif (wd / "checkpoints" / str(steps[stage])).is_dir():  # finished before: rerunning resumes here
      print(f"stage {stage}: using the finished {wd}")
    else:
      record(f"train_stage{stage}", common.run(
          train_cmd(stage, wd, data, manifest, steps[stage], init, args.overrides, sft_mix),
          logs / f"train_stage{stage}.log"))
    init = wd
    if stage == 0:  # the text-only LLM: nothing to evaluate on images
      if args.vision_steps:
        init = vision_warmup(work, data, results, args.vision_steps, record)
      continue
    ev = common.run(eval_cmd(wd, root, work / f"eval_stage{stage}", args.eval_limit),
                    logs / f"eval_stage{stage}.log")
    record(f"eval_stage{stage}", ev)
    metrics = common.read_metrics(wd)
    report["stages"][stage] = {
        "metrics": scores(ev["last_line"]), "steps": steps[stage],
        "grounding_errors": grounding_breakdown(data, ev["last_line"]),
        "grounding_errors_chat": grounding_breakdown(data, ev["last_line"], "synth_grounding_chat"),
        "final_loss_avg10": sum(m["loss"] for m in metrics[-10:]) / max(1, len(metrics[-10:])),
        "median_step_s": sorted(m["step_time_s"] for m in metrics)[len(metrics) // 2] if metrics else None}
    print(json.dumps({stage: report["stages"][stage]["metrics"]}), flush=True)

  if not args.no_chat:
    record("chat_demo", common.run(common.python_module(
        "experiments.chat_demo", "--ckpt", str(work / "stage3"), "--data", str(data / "heldout"),
        "--out", str(results)), logs / "chat.log"))
  report["wall_minutes"] = round((time.perf_counter() - t_start) / 60, 1)
  report["load_avg_end"] = [round(x, 2) for x in __import__("os").getloadavg()]
  write_report(report, results, work)
  (results / "stage_table.md").write_text(stage_table.markdown(report))

  from experiments import plots
  plots.three_stage_plots(work, results, report)
  print(f"done in {report['wall_minutes']} min; results in {results}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
