"""The runner: resumable predictions, few-shot determinism, likelihood tasks, shards, the adapter."""

import json
import re

import pytest

from qwenvl_jax.evals import adapters, runner
from qwenvl_jax.evals.tasks import get_task
from tests.evals.fixtures import BUILDERS


def _answer(req):
  """A fake model: right on even question ids, wrong on odd ones."""
  text = req["segments"][-1]["text"]
  i = int(text.split("word ")[1].split("?")[0])
  return f" word{i} " if i % 2 == 0 else "nope"


def fake_predict(requests):
  return [_answer(r) for r in requests]


@pytest.fixture
def ocr(tmp_path):
  BUILDERS["synth_ocr"](tmp_path / "data")
  return tmp_path / "data"


def test_evaluate_writes_predictions_and_metrics(ocr, tmp_path):
  m = runner.evaluate("synth_ocr", ocr, fake_predict, tmp_path / "out", batch_size=3, progress=False)
  assert m["score"] == 50.0 and m["n"] == 10 and m["n_missing"] == 0 and m["variant"] == "plain"
  assert m["details"]["anls"] == 50.0
  lines = (tmp_path / "out" / "synth_ocr_test_0shot.predictions.jsonl").read_text().splitlines()
  assert json.loads(lines[0]) == {"question_id": "o0", "answer": "word0"}  # outputs are stripped
  assert json.loads((tmp_path / "out" / "synth_ocr_test_0shot.metrics.json").read_text()) == m


def test_resume_after_interruption_gives_identical_results(ocr, tmp_path):
  full = runner.evaluate("synth_ocr", ocr, fake_predict, tmp_path / "a", batch_size=3, progress=False)
  calls = []

  def crashing(requests):
    calls.append(len(requests))
    if len(calls) == 3:
      raise RuntimeError("preempted")
    return fake_predict(requests)

  with pytest.raises(RuntimeError):
    runner.evaluate("synth_ocr", ocr, crashing, tmp_path / "b", batch_size=3, progress=False)
  pred_b = tmp_path / "b" / "synth_ocr_test_0shot.predictions.jsonl"
  assert len(pred_b.read_text().splitlines()) == 6
  with open(pred_b, "a") as f:
    f.write('{"question_id": "o6", "ans')  # a write torn by the kill
  seen = []

  def counting(requests):
    seen.extend(r["id"] for r in requests)
    return fake_predict(requests)

  resumed = runner.evaluate("synth_ocr", ocr, counting, tmp_path / "b", batch_size=3, progress=False)
  assert seen == ["o6", "o7", "o8", "o9"]  # only what was missing
  pred_a = tmp_path / "a" / "synth_ocr_test_0shot.predictions.jsonl"
  assert pred_b.read_bytes() == pred_a.read_bytes()
  strip = lambda m: {k: v for k, v in m.items() if k != "predictions"}  # noqa: E731
  assert strip(resumed) == strip(full)
  # A finished run resumes to a no-op.
  assert strip(runner.evaluate("synth_ocr", ocr, counting, tmp_path / "b", progress=False)) == strip(full)
  assert len(seen) == 4


def test_limit_then_extend(ocr, tmp_path):
  m = runner.evaluate("synth_ocr", ocr, fake_predict, tmp_path / "o", limit=4, progress=False)
  assert m["n"] == 4 and m["score"] == 50.0
  m = runner.evaluate("synth_ocr", ocr, fake_predict, tmp_path / "o", progress=False)
  assert m["n"] == 10


def test_other_settings_refuse_to_mix(ocr, tmp_path):
  runner.evaluate("synth_ocr", ocr, fake_predict, tmp_path / "o", limit=2, progress=False)
  with pytest.raises(ValueError, match="other settings"):
    runner.evaluate("synth_ocr", ocr, fake_predict, tmp_path / "o", limit=2, seed=1, progress=False)


def test_few_shot_prompts_are_deterministic(ocr):
  task = get_task("synth_ocr")
  items = task.read(ocr)
  pool = runner.shot_pool(task, ocr)
  a = runner.build_requests(task, items, shots=2, pool=pool, seed=0)
  b = [runner.build_requests(task, [it], shots=2, pool=pool, seed=0)[0] for it in reversed(items)][::-1]
  assert a == b  # independent of batching and order
  segs = a[0]["segments"]
  assert [("image" in s) for s in segs] == [True, False, True, False, True, False]
  # each shot: "{question} Answer: {answer}", then straight on to the next image
  for shot in (segs[1], segs[3]):
    assert re.fullmatch(r"What is word (\d)\? Answer: word\1", shot["text"])
  assert segs[-1]["text"] == "What is word 0? Answer:"
  assert all("/images/t" in s["image"] for s in segs[:-2] if "image" in s)  # shots from train.jsonl
  c = runner.build_requests(task, items, shots=2, pool=pool, seed=1)
  assert c != a
  assert a[0]["max_new_tokens"] == task.max_new_tokens and a[0]["chat"] is False


def test_few_shot_not_offered_for_likelihood_or_zero_shot_tasks(tmp_path):
  BUILDERS["seed_bench"](tmp_path / "seed")
  with pytest.raises(ValueError, match="few-shot"):
    runner.evaluate("seed_bench", tmp_path / "seed", None, tmp_path / "o", shots=1, progress=False)


def test_likelihood_task(tmp_path):
  BUILDERS["seed_bench"](tmp_path / "seed")

  def score_fn(requests):
    assert all(r["options"] == [" A", " B", " C", " D"] for r in requests)
    return [[0.1, 2.0, 3.0, 4.0] for _ in requests]  # always "A"

  m = runner.evaluate("seed_bench", tmp_path / "seed", None, tmp_path / "o", score_fn=score_fn, progress=False)
  assert m["score"] == 50.0 and m["metric"] == "choice_accuracy"
  rec = json.loads((tmp_path / "o" / "seed_bench_image_0shot.predictions.jsonl").read_text().splitlines()[0])
  assert rec["answer"] == "A" and rec["losses"] == [0.1, 2.0, 3.0, 4.0]
  with pytest.raises(ValueError, match="score_fn"):
    runner.evaluate("seed_bench", tmp_path / "seed", fake_predict, tmp_path / "p", progress=False)


def test_shards_score_together(ocr, tmp_path):
  full = runner.evaluate("synth_ocr", ocr, fake_predict, tmp_path / "full", progress=False)
  files = []
  for i in range(3):
    r = runner.evaluate("synth_ocr", ocr, fake_predict, tmp_path / "sh", shard=(i, 3), progress=False)
    assert r["score"] is None
    files.append(r["predictions"])
  merged = runner.score_predictions("synth_ocr", ocr, files)
  assert merged["score"] == full["score"] and merged["n"] == 10


def test_predict_fn_contract(ocr, tmp_path):
  with pytest.raises(ValueError, match="outputs"):
    runner.evaluate("synth_ocr", ocr, lambda reqs: ["x"], tmp_path / "o", batch_size=2, progress=False)


def test_score_predictions_reports_missing_and_accepts_other_keys(ocr, tmp_path):
  path = tmp_path / "p.jsonl"
  path.write_text("".join(json.dumps({"questionId": f"o{i}", "prediction": f"word{i}"}) + "\n" for i in range(4)))
  m = runner.score_predictions("synth_ocr", ocr, path)
  assert m["score"] == 100.0 and m["n"] == 4 and m["n_missing"] == 6


class FakePredictor:
  """Duck-types qwenvl_jax.infer.api.Predictor's generate / score_options."""

  def __init__(self):
    self.calls = []

  def generate(self, prompts, max_new_tokens, min_new_tokens=0):
    self.calls.append((len(prompts), max_new_tokens, min_new_tokens))
    return [p[-1]["text"] for p in prompts]

  def score_options(self, segments, options):
    return [float(i) for i in range(len(options))]


def test_adapter_from_predictor():
  pred = FakePredictor()
  predict, score = adapters.from_predictor(pred)
  reqs = [{"id": 1, "segments": [{"text": "a"}], "max_new_tokens": 10, "min_new_tokens": 1, "chat": False},
          {"id": 2, "segments": [{"text": "b"}], "max_new_tokens": 30, "min_new_tokens": 8, "chat": False},
          {"id": 3, "segments": [{"text": "c"}], "max_new_tokens": 10, "min_new_tokens": 1, "chat": False}]
  assert predict(reqs) == ["a", "b", "c"]  # grouped by decoding settings, returned in order
  assert sorted(pred.calls) == [(1, 30, 8), (2, 10, 1)]
  assert score([{"segments": [], "options": [" A", " B"]}]) == [[0.0, 1.0]]
  fn = lambda reqs: ["x"] * len(reqs)  # noqa: E731
  assert adapters.from_predictor(fn) == (fn, None)


class FakeChatPredictor(FakePredictor):
  """Adds Predictor.generate_chat: records each batch, echoes the request's text."""

  def __init__(self):
    super().__init__()
    self.chat_batches = []

  def generate_chat(self, prompts, max_new_tokens, min_new_tokens):
    self.chat_batches.append((len(prompts), max_new_tokens))
    return [segments[-1]["text"] for segments in prompts]


def test_adapter_chat_requests_decode_in_one_batch_per_setting():
  pred = FakeChatPredictor()
  predict, _ = adapters.from_predictor(pred)
  reqs = [{"id": i, "segments": [{"text": t}], "max_new_tokens": 48, "min_new_tokens": 1, "chat": True}
          for i, t in enumerate(["red", "star", "two"])]
  reqs.append({"id": 9, "segments": [{"text": "raw"}], "max_new_tokens": 10, "min_new_tokens": 1, "chat": False})
  assert predict(reqs) == ["red", "star", "two", "raw"]
  assert pred.chat_batches == [(3, 48)] and pred.calls == [(1, 10, 1)]
