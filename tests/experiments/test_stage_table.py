"""experiments.stage_table (the stage table and timing of three_stage reports) and three_stage's
`--reuse` (stage-3 variants from another run's stages 0-2)."""

import json

import pytest

from experiments import stage_table, three_stage


def _metrics(ground, ocr, cider, vqa, chat):
  names = ("synth_grounding", "synth_ocr", "synth_caption", "synth_vqa")
  out = {n: {"metric": "x", "score": s, "n": 150} for n, s in zip(names, (ground, ocr, cider, vqa))}
  out.update({f"{n}_chat": {"metric": "x", "score": s, "n": 150} for n, s in zip(names, chat)})
  return out


def _cmd(name, seconds):
  return {"name": name, "cmd": name, "seconds": seconds, "load_before": 1.0, "load_after": 2.0, "last_line": ""}


REPORT = {"stages": {"2": {"metrics": _metrics(86.7, 100.0, 462.5, 85.3, (6.0, 6.0, 63.7, 10.0))},
                     "3": {"metrics": _metrics(84.0, 99.0, 450.0, 84.0, (82.0, 97.0, 400.0, 81.3))}},
          "commands": [_cmd("eval_stage1", 20), _cmd("eval_stage2", 20), _cmd("train_stage3", 200),
                       _cmd("eval_stage3", 20), _cmd("chat_demo", 5)]}


def test_table_rows_follow_the_stages_with_both_wordings():
  text = stage_table.table({"new": REPORT})
  lines = text.splitlines()
  assert lines[2] == "| new, after stage 2 | 86.7% | 100.0% | 462.5 | 85.3% | 6.0% / 6.0% / 63.7 / 10.0% |"
  assert lines[3] == "| new, after stage 3 | 84.0% | 99.0% | 450.0 | 84.0% | 82.0% / 97.0% / 400.0 / 81.3% |"


def test_timing_adds_the_reused_stages_and_drops_their_repeated_evals():
  base = [_cmd(n, s) for n, s in (("prepare_data", 34), ("train_stage0", 110), ("vision_warmup", 700),
                                  ("train_stage1", 39), ("eval_stage1", 18), ("train_stage2", 2328),
                                  ("eval_stage2", 18), ("train_stage3", 154), ("eval_stage3", 14))]
  timed = stage_table.timed_commands({**REPORT, "reused_commands": base})
  assert [c["name"] for c in timed] == ["prepare_data", "train_stage0", "vision_warmup", "train_stage1",
                                        "eval_stage1", "train_stage2", "eval_stage2", "train_stage3",
                                        "eval_stage3", "chat_demo"]
  assert sum(c["seconds"] for c in timed) == 34 + 110 + 700 + 39 + 18 + 2328 + 18 + 200 + 20 + 5
  assert stage_table.timed_commands(REPORT) == REPORT["commands"]  # nothing reused: all its own
  assert "(reused)" in stage_table.timing({**REPORT, "reused_commands": base})


def test_reuse_links_the_finished_stages_and_their_recorded_commands(tmp_path):
  src = tmp_path / "src"
  for name in three_stage.REUSED:
    (src / name).mkdir(parents=True)
  (src / "three_stage.json").write_text(json.dumps({"commands": [_cmd("train_stage2", 9)]}))
  work = tmp_path / "work"
  assert three_stage.reuse_stages(work, src) == [_cmd("train_stage2", 9)]
  assert all((work / n).resolve() == (src / n).resolve() for n in three_stage.REUSED)
  assert three_stage.reuse_stages(work, src)  # linking again is a no-op
  (work / "stage3").mkdir()  # its own stage 3 is left alone
  other = tmp_path / "other"
  for name in three_stage.REUSED:
    (other / name).mkdir(parents=True)
  with pytest.raises(SystemExit, match="not a link to"):
    three_stage.reuse_stages(work, other)
  with pytest.raises(SystemExit, match="does not exist"):
    three_stage.reuse_stages(tmp_path / "w2", tmp_path / "missing")


def test_stage2_ckpt_trains_only_stage3_from_the_given_checkpoint(tmp_path, monkeypatch):
  """`--stage2-ckpt`: stages 0-1 never run, the given checkpoint is evaluated as the stage-2 row and
  stage 3 starts from it (commands captured, nothing trained)."""
  work, given = tmp_path / "work", tmp_path / "base"
  data = work / "data"
  (data / "heldout").mkdir(parents=True)
  for name in ("shapes.jsonl", "words.jsonl"):
    (data / "heldout" / name).write_text(json.dumps({"image": "a.png"}) + "\n")
  (data / "manifest.json").write_text(json.dumps(
      {"padded_vocab_size": 896, "image_start_id": 1, "image_end_id": 2, "image_pad_id": 3, "tokenizer": "t"}))
  ran = []

  def fake_run(cmd, log):
    ran.append(cmd)
    return {"cmd": " ".join(map(str, cmd)), "seconds": 1, "last_line": "[]"}

  monkeypatch.setattr(three_stage.common, "run", fake_run)
  monkeypatch.setattr(three_stage, "scores", lambda line: {})
  monkeypatch.setattr(three_stage, "grounding_breakdown", lambda *a: {})
  monkeypatch.setattr(three_stage.sft_mixture, "paths", lambda data, mix: ("chat.jsonl",))
  monkeypatch.setattr(three_stage.stage_table, "markdown", lambda report: "")
  import experiments.plots
  monkeypatch.setattr(experiments.plots, "three_stage_plots", lambda *a: None)
  assert three_stage.main(["--work", str(work), "--results", str(tmp_path / "results"),
                           "--stage2-ckpt", str(given), "--no-chat"]) == 0
  trains = [c for c in ran if c[:2] == ["qwenvl-jax", "train"]]
  evals = [c for c in ran if c[:2] == ["qwenvl-jax", "eval"]]
  assert len(trains) == 1 and "experiments/configs.py:stage3" in trains[0]
  assert trains[0][trains[0].index("--init") + 1] == str(given)
  assert [c[c.index("--ckpt") + 1] for c in evals] == [str(given), str(work / "stage3")]
  report = json.loads((work / "three_stage.json").read_text())
  assert report["stage2_ckpt"] == str(given) and sorted(report["stages"]) == ["2", "3"]
