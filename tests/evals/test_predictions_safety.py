"""Predictions files: only a torn last line is ever cut; damage elsewhere is refused, nothing deleted."""

import json

import pytest

from qwenvl_jax.cli import main
from qwenvl_jax.evals import predictions as P
from qwenvl_jax.evals import runner
from tests.cli_subprocess import error_line, run_cli
from tests.evals.fixtures import BUILDERS
from tests.evals.test_runner import fake_predict


@pytest.fixture
def ocr(tmp_path):
  BUILDERS["synth_ocr"](tmp_path / "data")
  return tmp_path / "data"


def _pred_file(out_dir):
  return out_dir / "synth_ocr_test_0shot.predictions.jsonl"


def test_rerun_refuses_a_damaged_middle_line_and_deletes_nothing(ocr, tmp_path):
  runner.evaluate("synth_ocr", ocr, fake_predict, tmp_path / "o", progress=False)
  path = _pred_file(tmp_path / "o")
  lines = path.read_bytes().split(b"\n")
  lines[3] = lines[3][:10]  # line 4 of 10 damaged
  path.write_bytes(b"\n".join(lines))
  before = path.read_bytes()
  calls = []
  with pytest.raises(P.PredictionsError, match=rf"{path}: line 4 is not JSON"):
    runner.evaluate("synth_ocr", ocr, lambda r: calls.append(r) or fake_predict(r), tmp_path / "o",
                    progress=False)
  assert path.read_bytes() == before and calls == []  # nothing cut, nothing re-predicted


def test_only_an_unterminated_last_line_is_torn(tmp_path):
  path = tmp_path / "p.jsonl"
  good = b'{"question_id": 1, "answer": "a"}\n{"question_id": 2, "answer": "b"}\n'
  path.write_bytes(good + b'{"question_id": 3, "ans')  # killed mid-write
  assert P.repair(path) == 2 and path.read_bytes() == good
  path.write_bytes(good + b'{"question_id": 3, "answer": "c"}')  # killed before the newline
  assert P.repair(path) == 3 and path.read_bytes() == good + b'{"question_id": 3, "answer": "c"}\n'
  for damaged in (good + b"garbage\n", b"[1]\n" + good, good[:20] + b"\n" + good):
    path.write_bytes(damaged)
    with pytest.raises(P.PredictionsError, match=rf"{path}: line \d+ is"):
      P.repair(path)
    assert path.read_bytes() == damaged


def test_non_utf8_line_names_file_and_line(tmp_path):
  path = tmp_path / "p.jsonl"
  path.write_bytes(b'{"question_id": 1, "answer": "a"}\n{"question_id": 2, "answer": "\xff"}\n')
  with pytest.raises(P.PredictionsError, match=rf"{path}: line 2 is not UTF-8"):
    P.read_records(path)


def test_cli_scoring_non_utf8_predictions_is_one_line(tmp_path):
  BUILDERS["synth_grounding"](tmp_path / "g")
  preds = tmp_path / "g.jsonl"
  preds.write_bytes(b'{"question_id": "g0", "answer": "\xe9"}\n{"question_id": "g1", "answer": "x"}\n')
  line = error_line(run_cli("eval", "--task", "synth_grounding", "--data", tmp_path / "g",
                            "--predictions", preds))
  assert line.startswith("qwenvl-jax eval: error:") and f"{preds}: line 1 is not UTF-8" in line


def test_eval_accepts_debug(tmp_path, capsys):
  BUILDERS["synth_grounding"](tmp_path / "g")
  preds = tmp_path / "g.jsonl"
  preds.write_text(json.dumps({"question_id": "g0", "answer": "(1,1),(2,2)"}) + "\n[]\n")
  args = ["eval", "--task", "synth_grounding", "--data", str(tmp_path / "g"), "--predictions", str(preds)]
  assert main(args) == 2
  with pytest.raises(P.PredictionsError):
    main(args + ["--debug"])
