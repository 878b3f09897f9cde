"""`qwenvl-jax eval`: --predictions scoring (metrics JSON on the last line), --task all, errors."""

import json

from qwenvl_jax.cli import main
from tests.evals.fixtures import BUILDERS


def _preds(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


def test_predictions_file_last_line_is_json(tmp_path, capsys):
  BUILDERS["synth_grounding"](tmp_path / "g")
  preds = _preds(tmp_path / "g.jsonl", [{"question_id": "g0", "answer": "(45,45),(268,268)"},
                                        {"question_id": "g1", "answer": "no box"}])
  assert main(["eval", "--task", "synth_grounding", "--data", str(tmp_path / "g"), "--predictions", str(preds)]) == 0
  out = capsys.readouterr().out.strip().splitlines()
  m = json.loads(out[-1])
  assert m["task"] == "synth_grounding" and m["metric"] == "grounding_accuracy" and m["score"] == 50.0
  assert m["variant"] == "qwenvl"


def test_variant_flag(tmp_path, capsys):
  BUILDERS["vqav2"](tmp_path / "v")
  preds = _preds(tmp_path / "p.jsonl", [{"question_id": 420, "answer": "Two"}, {"question_id": 730, "answer": "red"}])
  args = ["eval", "--task", "vqav2", "--data", str(tmp_path / "v"), "--predictions", str(preds)]
  assert main(args) == 0
  assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["score"] == 100.0
  assert main(args + ["--variant", "official"]) == 0
  m = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert m["variant"] == "official" and m["score"] == 50.0  # "Two" vs ten "2" scores 0 there


def test_task_all_with_a_predictions_folder(tmp_path, capsys):
  root = tmp_path / "bench"
  BUILDERS["synth_ocr"](root / "synth_ocr")
  BUILDERS["refcoco"](root / "refcoco")
  pdir = tmp_path / "preds"
  pdir.mkdir()
  _preds(pdir / "synth_ocr_test_0shot.predictions.jsonl",
         [{"question_id": f"o{i}", "answer": f"word{i}"} for i in range(10)])
  _preds(pdir / "refcoco_val_0shot.predictions.jsonl",
         [{"question_id": "0/0", "answer": "(16,42),(171,461)"}, {"question_id": "0/1", "answer": "x"}])
  assert main(["eval", "--task", "all", "--data", str(root), "--predictions", str(pdir)]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  results = {(m["task"], m["split"]): m["score"] for m in json.loads(lines[-1])}
  assert results == {("refcoco", "val"): 50.0, ("synth_ocr", "test"): 100.0}
  assert any(line.startswith("skip refcoco/testA") for line in lines)


def test_errors_are_one_line(tmp_path, capsys):
  assert main(["eval", "--task", "synth_ocr", "--data", str(tmp_path)]) == 2
  assert "--ckpt" in capsys.readouterr().err
  assert main(["eval", "--task", "nosuch", "--data", str(tmp_path), "--predictions", "x"]) == 2
  BUILDERS["synth_ocr"](tmp_path / "d")
  assert main(["eval", "--task", "synth_ocr", "--data", str(tmp_path / "d"), "--predictions", "missing.jsonl"]) == 2
  assert "does not exist" in capsys.readouterr().err


def test_list(capsys):
  assert main(["eval", "--task", "list"]) == 0
  assert "refcoco+" in capsys.readouterr().out


def test_shard_files_scored_together(tmp_path, capsys):
  BUILDERS["synth_ocr"](tmp_path / "d")
  a = _preds(tmp_path / "a.jsonl", [{"question_id": f"o{i}", "answer": f"word{i}"} for i in range(0, 10, 2)])
  b = _preds(tmp_path / "b.jsonl", [{"question_id": f"o{i}", "answer": "wrong"} for i in range(1, 10, 2)])
  assert main(["eval", "--task", "synth_ocr", "--data", str(tmp_path / "d"), "--predictions", str(a), str(b)]) == 0
  m = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert m["score"] == 50.0 and m["n"] == 10 and m["n_missing"] == 0


def test_task_all_runs_every_task_and_lists_failures(tmp_path, capsys):
  root = tmp_path / "bench"
  BUILDERS["synth_ocr"](root / "synth_ocr")
  (root / "textvqa").mkdir(parents=True)  # a folder without the files: that task fails, the rest run
  pdir = tmp_path / "preds"
  pdir.mkdir()
  _preds(pdir / "synth_ocr_test_0shot.predictions.jsonl",
         [{"question_id": f"o{i}", "answer": f"word{i}"} for i in range(10)])
  _preds(pdir / "textvqa_val_0shot.predictions.jsonl", [{"question_id": 1, "answer": "x"}])
  assert main(["eval", "--task", "all", "--data", str(root), "--predictions", str(pdir)]) == 1
  lines = capsys.readouterr().out.strip().splitlines()
  assert [m["task"] for m in json.loads(lines[-1])] == ["synth_ocr"]
  failed = [line for line in lines if line.startswith("FAILED textvqa/val")]
  assert len(failed) == 1 and "TextVQA_0.5.1_val.json" in failed[0]
  assert "1 of 2 task splits failed" in lines


def test_describe_and_verbose_list_name_the_files(capsys):
  assert main(["eval", "--task", "mme", "--describe"]) == 0
  out = capsys.readouterr().out
  assert "MME_Benchmark_release_version" in out and "variants: official" in out
  assert main(["eval", "--task", "textvqa", "--describe"]) == 0
  out = capsys.readouterr().out
  assert "textvqa_val.jsonl" in out and "lmms (= lmms-evalai)" in out
  assert main(["eval", "--task", "list", "--verbose"]) == 0
  out = capsys.readouterr().out
  from qwenvl_jax.evals.tasks import TASKS
  assert out.count("files under --data:") == len(TASKS)


def test_every_option_has_help():
  import argparse

  from qwenvl_jax.cli import build_parser
  sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
  for action in sub.choices["eval"]._actions:
    assert action.help, action.dest
