"""`qwenvl-jax generate`'s loop: answers equal chat's greedy ones, bad lines are named and skipped,
a rerun resumes (torn last line dropped, answered ids skipped)."""

import dataclasses
import json
import shutil

from qwenvl_jax.infer.chat import chat
from qwenvl_jax.infer.generate import GREEDY
from qwenvl_jax.serve.batch import run_batch
from qwenvl_jax.serve.engine import BatchEngine

N = 12


def test_generate_answers_resumes_and_names_bad_lines(predictor, picture_paths, tmp_path, capsys):
  shutil.copy(picture_paths[2], tmp_path / "pic.png")
  src, dst = tmp_path / "requests.jsonl", tmp_path / "answers.jsonl"
  lines = [{"id": "img", "images": ["pic.png"], "prompt": "What is it?"},
           {"id": "msg", "messages": [{"role": "user", "content": "Hello there"}]},
           {"id": "short", "prompt": "Count:", "max_tokens": 3},
           {"id": "gone", "images": ["missing.png"], "prompt": "x"}]
  src.write_text("\n".join(json.dumps(x) for x in lines[:2]) + "\nnot json\n"
                 + "\n".join(json.dumps(x) for x in lines[2:]) + "\n")
  greedy = dataclasses.replace(GREEDY, max_new_tokens=N)
  want = {"img": chat(predictor, "What is it?", images=[tmp_path / "pic.png"], sampling=greedy)[0],
          "msg": chat(predictor, "Hello there", sampling=greedy)[0]}
  defaults = {"max_tokens": N, "temperature": 0.0}
  # A previous run answered "msg" and died writing the next line.
  dst.write_text(json.dumps({"id": "msg", "answer": want["msg"]}) + "\n" + '{"id": "img", "ans')
  engine = BatchEngine(predictor.generator, slots=2, chunk=4)
  try:
    answered, failed = run_batch(predictor, engine, src, dst, defaults=defaults, progress=False)
    assert (answered, failed) == (2, 2)
    err = capsys.readouterr().err
    assert f"{src}:3: not valid JSON" in err
    assert f"{src}:5 (gone): no image file" in err
    out = [json.loads(line) for line in dst.read_text().splitlines()]
    got = {r["id"]: r for r in out}
    assert sorted(got) == ["img", "msg", "short"] and len(out) == 3
    assert got["img"]["answer"] == want["img"]
    assert got["short"]["usage"]["completion_tokens"] <= 3
    # Rerun: nothing left to do but the bad lines.
    assert run_batch(predictor, engine, src, dst, defaults=defaults, progress=False) == (0, 2)
    assert len(dst.read_text().splitlines()) == 3
  finally:
    engine.close()
