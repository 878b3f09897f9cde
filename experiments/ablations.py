"""The paper's two ViT/adapter ablations at small scale, one command each.

  python -m experiments.ablations queries [--queries 4,16,64] [--steps 300]
      Appendix E.2 / Figure 7: stage-2 training from scratch (multi-task, 96 px = 8x8 = 64 ViT
      tokens, one image per row) with the adapter compressing them to 4 / 16 / 64 queries; loss
      within the first 50 steps and to the end, then held-out grounding and OCR accuracy.
  python -m experiments.ablations window [--sizes 96,192] [--steps 80] [--init CKPT --init-data DATA]
      Appendix E.3 / Figure 8 / Table 10: stage-2 training (multi-task, packed) with global ViT
      attention vs window attention (4x4-patch = 48 px windows in 3 of the 4 ViT layers, the 4th
      global, as the paper's 224 px windows with 1 global layer in 4) at two resolutions;
      loss curves and seconds per step. From scratch by default; with `--init` every run starts
      from a trained (global-attention) checkpoint, as the paper's runs start from CLIP, and uses
      the vocabulary of the `--init-data` set that checkpoint was trained with.

Each run trains from scratch with `qwenvl-jax train --config experiments/configs.py:...` on the data of
`experiments.prepare_data` (made if missing; the window ablation uses its own set generated at 192
px, so the higher resolution carries more detail), then plots to RESULTS/ and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from experiments import common  # noqa: E402

WINDOW_PATCHES = 4  # 48 px windows (patch 12): 2x2 windows at 96 px, 4x4 at 192 px


def ensure_data(data: pathlib.Path, extra: list[str], logs: pathlib.Path) -> dict:
  if not (data / "manifest.json").is_file():
    common.run(common.python_module("experiments.prepare_data", "--out", str(data), *extra),
               logs / f"prepare_{data.name}.log")
  return json.loads((data / "manifest.json").read_text())


def train(stage: str, workdir: pathlib.Path, manifest: dict, paths, steps: int, sets: list[str],
          logs: pathlib.Path, init: str | None = None) -> dict:
  if (workdir / "checkpoints" / str(steps)).is_dir():
    return {"cmd": "(reused)", "seconds": None}
  cmd = ["--config", f"{common.CONFIG}:{stage}", "--workdir", str(workdir)]
  if init:
    cmd += ["--init", init]
  for s in common.tokenizer_overrides(manifest) + [
      f"data.paths={tuple(str(p) for p in paths)!r}", f"steps={steps}",
      f"optim.warmup_steps={max(1, steps // 15)}", f"checkpoint_every={steps}",
      "async_checkpoint=False"] + sets:
    cmd += ["--set", s]
  return common.run(["qwenvl-jax", "train", *cmd], logs / f"{workdir.name}.log")


def summary(workdir: pathlib.Path) -> dict:
  m = common.read_metrics(workdir)
  times = [r["step_time_s"] for r in m[1:]]  # step 1 includes compilation
  return {"steps": len(m), "final_loss_avg10": statistics.fmean(r["loss"] for r in m[-10:]),
          "median_step_s": statistics.median(times) if times else None,
          "losses": [round(r["loss"], 4) for r in m]}


def plot_queries(runs: dict, path: pathlib.Path, early: int = 50):
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for label, s in runs.items():
    losses = s["losses"]
    axes[0].plot(range(1, min(early, len(losses)) + 1), common.smooth(losses[:early], 5), label=label)
    axes[1].plot(range(1, len(losses) + 1), common.smooth(losses, 20), label=label)
  axes[0].set_title(f"initial loss (first {early} steps)")
  axes[1].set_title("loss to the end of the run")
  for ax in axes:
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (smoothed)")
    ax.grid(alpha=0.3)
    ax.legend()
  fig.suptitle("Adapter query count (paper Fig. 7): stage-2 tasks from scratch, 64 ViT tokens (96 px)")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_window(runs: dict, path: pathlib.Path):
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for label, s in runs.items():
    axes[0].plot(range(1, len(s["losses"]) + 1), common.smooth(s["losses"], 10), label=label,
                 linestyle="--" if "window" in label else "-")
  axes[0].set_xlabel("step")
  axes[0].set_ylabel("training loss (smoothed)")
  axes[0].set_title("loss (paper Fig. 8)")
  axes[0].grid(alpha=0.3)
  axes[0].legend()
  labels = list(runs)
  bars = axes[1].bar(labels, [runs[k]["median_step_s"] or 0 for k in labels])
  axes[1].bar_label(bars, fmt="%.2f s")
  axes[1].set_ylabel("median seconds per step")
  axes[1].set_title("training speed (paper Table 10)")
  axes[1].tick_params(axis="x", labelrotation=20)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("which", choices=("queries", "window"))
  p.add_argument("--work", default="runs/exp11/ablations")
  p.add_argument("--results", default="experiments/results/ablations")
  p.add_argument("--steps", type=int, default=None)
  p.add_argument("--queries", default="4,16,64")
  p.add_argument("--eval-limit", type=int, default=100)
  p.add_argument("--sizes", default="96,192")
  p.add_argument("--batch-size", type=int, default=None)
  p.add_argument("--data-args", default="", help="extra flags for experiments.prepare_data")
  p.add_argument("--init", default=None, help="window: start every run from this checkpoint")
  p.add_argument("--init-data", default=None,
                 help="window with --init: the prepare_data folder whose vocabulary the checkpoint uses")
  args = p.parse_args(argv)
  if args.init and not args.init_data:
    p.error("--init needs --init-data (the checkpoint's vocabulary)")
  suffix = "_from_init" if args.init else ""  # results of a from-init run sit beside the from-scratch ones
  work, results = pathlib.Path(args.work), pathlib.Path(args.results)
  results.mkdir(parents=True, exist_ok=True)
  logs = work / "logs"
  runs, commands = {}, {}
  bs = [f"batch_size={args.batch_size}"] if args.batch_size else []

  if args.which == "queries":
    from experiments import three_stage
    data = work / "data96"
    manifest = ensure_data(data, args.data_args.split(), logs)
    root = three_stage.eval_root(data, work / "evaldata96")
    steps = args.steps or 300
    for q in (int(x) for x in args.queries.split(",")):
      wd = work / f"queries_L{q}"
      # The same room for text in every run: the image span grows with the query count.
      seq = 96 + q
      commands[f"L{q}"] = train("stage2", wd, manifest, [data / "train" / "shapes.jsonl",
                                                         data / "train" / "words.jsonl"], steps,
                                [f"model.adapter.n_queries={q}", f"seq_len={seq}",
                                 f"model.llm.seq_length={max(256, seq)}", "data.max_images=1"] + bs,
                                logs)
      runs[f"L{q}"] = summary(wd)
      ev = common.run(three_stage.eval_cmd(wd, root, work / f"eval_L{q}", args.eval_limit),
                      logs / f"eval_L{q}.log")
      runs[f"L{q}"]["heldout"] = {k: v["score"] for k, v in three_stage.scores(ev["last_line"]).items()}
    plot_queries(runs, results / "queries_loss.png")
  else:
    data = work / "data192"
    manifest = ensure_data(data, ["--size", "192", "--n-shapes", "3000", "--n-words", "2000",
                                  "--n-heldout-shapes", "4", "--n-heldout-words", "4",
                                  *args.data_args.split()], logs)
    steps = args.steps or 80
    paths = [data / "train" / "shapes.jsonl", data / "train" / "words.jsonl"]
    if args.init:  # raw records are tokenized at load time: the checkpoint's vocabulary reads them
      manifest = json.loads((pathlib.Path(args.init_data) / "manifest.json").read_text())
    for size in (int(x) for x in args.sizes.split(",")):
      for mode, wp in (("global", 0), ("window", WINDOW_PATCHES)):
        label = f"{size}px {mode}"
        wd = work / f"window_{size}_{mode}"
        commands[label] = train("stage2", wd, manifest, paths, steps,
                                [f"model.vision.image_size={size}", f"model.vision.window_patches={wp}",
                                 "model.vision.global_every=4"] + bs, logs, args.init)
        runs[label] = summary(wd)
    plot_window(runs, results / f"window_loss_speed{suffix}.png")
  out = {"which": args.which, "steps": steps, "init": args.init, "runs": runs, "commands": commands,
         "load_avg_end": [round(x, 2) for x in __import__("os").getloadavg()]}
  (results / f"{args.which}{suffix}.json").write_text(json.dumps(out, indent=2) + "\n")
  print(json.dumps({k: {kk: v[kk] for kk in ("final_loss_avg10", "median_step_s")} for k, v in runs.items()}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
