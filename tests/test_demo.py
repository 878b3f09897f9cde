"""scripts/demo.sh, the README's first command: its pieces (fast) and the whole run (slow, ~4-10 min).

The slow test asserts the demo's goal (docs/demo.md): a held-out metric >= 60% after training, above
the base's, and a chat answer that names and boxes the asked object, with the box drawn.
"""

import importlib.util
import json
import os
import pathlib
import re
import subprocess

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
BASE = ROOT / "demo" / "base"


def _report_module():
  spec = importlib.util.spec_from_file_location("demo_report", ROOT / "demo" / "report.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_synth_shape_options_bound_objects_and_sizes(tmp_path):
  from qwenvl_jax.cli import main
  out = tmp_path / "s"
  assert main(["data", "synth", "--kind", "shapes", "--n", "40", "--size", "96", "--max-objects", "2",
               "--radius", "0.12", "0.2", "--out", str(out)]) == 0
  records = [json.loads(line) for line in (out / "shapes.jsonl").read_text().splitlines()]
  counts = [len(r["objects"]) for r in records]
  assert set(counts) == {1, 2}  # 40 scenes draw both counts, never more than 2
  # A shape of radius r spans at most 2r and (square, the narrowest: 2 * 1.2 r / sqrt 2) at least ~1.2r.
  sides = np.array([max(o["box"][2] - o["box"][0], o["box"][3] - o["box"][1])
                    for r in records for o in r["objects"]])
  assert sides.max() <= 2 * 0.2 * 96 + 1 and sides.min() >= 1.2 * 0.12 * 96 - 1
  default = list(__import__("qwenvl_jax.data.synth", fromlist=["generate"]).generate("shapes", 40, size=96))
  assert max(len(r["objects"]) for r in default) > 2  # the flag changed something


def test_synth_shape_options_refused_for_other_kinds(tmp_path, capsys):
  from qwenvl_jax.cli import main
  assert main(["data", "synth", "--kind", "text", "--n", "2", "--max-objects", "2",
               "--out", str(tmp_path / "t")]) == 2
  assert "--max-objects and --radius apply to --kind shapes" in capsys.readouterr().err
  assert main(["data", "synth", "--kind", "shapes", "--n", "2", "--radius", "0.3", "0.1",
               "--out", str(tmp_path / "s")]) == 2
  assert not (tmp_path / "s").exists()


def test_synth_single_turns_are_the_chat_evaluations_items_answered(tmp_path):
  """`data synth --single-turns` writes one fresh chat per object's box and per question, asked in the
  synth_grounding_chat / synth_vqa_chat wording for that very item and answered so they score 100%."""
  from qwenvl_jax.cli import main
  from qwenvl_jax.evals.tasks import get_task
  from qwenvl_jax.evals.tasks.scoring import score_items

  out = tmp_path / "s"
  assert main(["data", "synth", "--kind", "shapes", "--n", "12", "--size", "96", "--max-objects", "2",
               "--single-turns", "--out", str(out)]) == 0
  records = [json.loads(line) for line in (out / "shapes.jsonl").read_text().splitlines()]
  convs = {c["id"]: c["conversations"] for c in map(json.loads, (out / "shapes_single.jsonl").read_text().splitlines())}
  assert len(convs) == sum(len(r["objects"]) + len(r["qa"]) for r in records)
  for task_name, item_kind, turn_kind in (("synth_grounding_chat", "obj", "ground"), ("synth_vqa_chat", "qa", "qa")):
    task = get_task(task_name)
    items = task.read(out / "shapes.jsonl", "test")
    outputs = {}
    for item in items:
      record_id, index = item["id"].rsplit(f"/{item_kind}", 1)
      user, answer = convs[f"{record_id}/{turn_kind}{index}"]
      asked = next(seg["text"] for seg in task.prompt(item) if "text" in seg)
      assert user["value"] == f"Picture 1: <img>images/{record_id}.png</img>\n{asked}"
      assert (out / "images" / f"{record_id}.png").is_file() and answer["from"] == "assistant"
      outputs[item["id"]] = answer["value"]
    assert len(outputs) == len(items) > 0
    assert score_items(task, items, outputs).score == pytest.approx(100.0)
  assert not (tmp_path / "plain").exists()
  assert main(["data", "synth", "--kind", "shapes", "--n", "2", "--out", str(tmp_path / "plain")]) == 0
  assert not (tmp_path / "plain" / "shapes_single.jsonl").exists()  # only on request


def test_demo_config_is_the_shipped_base():
  """demo/config.py builds the architecture of demo/base/config.json (else `train --init` fails), and
  the shipped base is the small bf16 checkpoint the docs describe, with its vocabulary and recipe."""
  from safetensors.numpy import load_file

  from qwenvl_jax.ckpt import hf_layout
  from qwenvl_jax.config import load_config_dict, model_config_from_dict
  from qwenvl_jax.ckpt.checkpoint import COMPATIBLE_FIELDS, check_compatible

  cfg = model_config_from_dict(load_config_dict(str(ROOT / "demo" / "config.py")).model)
  hf = json.loads((BASE / "config.json").read_text())
  shipped = hf_layout.hf_config_to_model_config(hf)
  # What `train --init` checks: only fields that change no tensor may differ (image size, training
  # length, init choices); anything else raises naming the field.
  assert set(check_compatible(shipped, cfg, str(BASE))) <= set(COMPATIBLE_FIELDS)
  assert (shipped.llm.vocab_size, shipped.image_pad_id) == (cfg.llm.vocab_size, cfg.image_pad_id)
  tensors = {}
  for shard in BASE.glob("*.safetensors"):
    tensors.update(load_file(str(shard)))
  assert tensors["transformer.wte.weight"].shape == (cfg.llm.vocab_size, cfg.llm.hidden)
  assert 2_000_000 < sum(v.size for v in tensors.values()) < 3_000_000
  assert {v.dtype.itemsize for v in tensors.values()} == {2}  # bf16: ~5 MB in git
  assert (BASE / "sp.model").is_file()
  assert json.loads((BASE / "base.json").read_text())["made_by"].startswith("python -m experiments.demo_base")


def test_report_chat_check():
  report = _report_module()
  truth = (10.0, 20.0, 50.0, 60.0)  # pixels on a 100 x 100 picture
  # (100,200),(500,600) in [0, 1000) is exactly the truth on a 100-px side.
  good = "<ref>the red circle</ref><box>(100,200),(500,600)</box>"
  res = report.chat_check(good, "the red circle", truth, (100, 100))
  assert res["well_formed"] and res["named"] and res["hit"] and res["iou"] == pytest.approx(1.0, abs=0.03)
  # Shifted right by half its width: intersection 20 x 40 over union 60 x 40 -> IoU 1/3.
  shifted = "<ref>the blue square</ref><box>(300,200),(700,600)</box>"
  res = report.chat_check(shifted, "the red circle", truth, (100, 100))
  assert not res["named"] and not res["hit"] and res["iou"] == pytest.approx(1 / 3, abs=0.03)
  res = report.chat_check("<ref>the red circle</ref><box>(100,200)</box>", "the red circle", truth, (100, 100))
  assert res == {"well_formed": False, "named": False, "iou": 0.0, "hit": False}


@pytest.mark.slow
def test_demo_reaches_its_goal(tmp_path):
  env = {**os.environ, "DEMO_OUT": str(tmp_path / "demo")}
  env.pop("XLA_FLAGS", None)  # one CPU device, as a user runs it
  proc = subprocess.run(["bash", str(ROOT / "scripts/demo.sh")], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=1800)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  for n in range(1, 8):
    assert re.search(rf"^== \[ *\d+s\] {n}/7 ", proc.stdout, re.MULTILINE)
  # No library log lines (absl / orbax / TF) in what a newcomer reads.
  noise = [line for line in (proc.stdout + proc.stderr).splitlines()
           if re.match(r"^(WARNING|INFO|E|W|I)\d{4}|^(WARNING|INFO):absl|^W0000", line)]
  assert not noise, noise[:5]
  summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
  after, before = summary["after"], summary["before"]
  best = max(after, key=lambda t: after[t]["score"] if "caption" not in t else -1)
  assert after[best]["score"] >= 60.0 and after[best]["score"] > before[best]["score"] + 30
  chat = summary["chat"]
  assert chat["well_formed"] and chat["named"] and chat["hit"], chat
  for path in summary["pictures"].values():
    assert path and pathlib.Path(path).is_file()


@pytest.mark.slow  # ~15-55 s: two checkpoints written and read, the vision tower compiled twice
def test_match_text_scale_brings_image_tokens_to_the_text_norm(tmp_path):
  """`experiments.demo_base --text-scale`: only the adapter's output projection changes, by one scalar,
  and afterwards the image tokens' mean L2 norm on the same pictures equals the text embeddings'."""
  import jax.numpy as jnp
  from flax import nnx

  from experiments.configs import xs_model
  from experiments.demo_base import match_text_scale
  from qwenvl_jax.ckpt.orbax_io import load_checkpoint, save_checkpoint
  from qwenvl_jax.config import model_config_from_dict
  from qwenvl_jax.data.preprocess import load_and_preprocess
  from qwenvl_jax.data.synth import shapes
  from qwenvl_jax.model.qwenvl import QwenVL

  cfg = model_config_from_dict(xs_model(96, vocab_size=896).to_dict())
  save_checkpoint(tmp_path / "src", QwenVL(cfg, rngs=nnx.Rngs(0)), cfg)
  settings = {"size": 96, "max_objects": 3, "shape_radius": [0.12, 0.2]}
  res = match_text_scale(tmp_path / "src", tmp_path / "dst", seed=11, settings=settings, n_images=4)
  src, dst = load_checkpoint(tmp_path / "src")[0], load_checkpoint(tmp_path / "dst")[0]
  images = jnp.asarray(np.stack([load_and_preprocess(
      shapes.generate(i, seed=11, size=96, max_objects=3, radius=(0.12, 0.2))["image"], 96)
      for i in range(4)]))[:, None]
  norm = lambda m: float(np.linalg.norm(np.asarray(m.encode_images(images), np.float32), axis=-1).mean())
  text = float(np.linalg.norm(np.asarray(src.llm.embed[...], np.float32), axis=-1).mean())
  assert norm(src) == pytest.approx(res["image_token_norm"], rel=1e-3) and norm(src) > 2 * text
  assert norm(dst) == pytest.approx(text, rel=1e-3)
  np.testing.assert_allclose(np.asarray(dst.adapter.proj[...]),
                             np.asarray(src.adapter.proj[...]) * res["proj_scale"], rtol=1e-3, atol=1e-7)
  np.testing.assert_array_equal(np.asarray(dst.llm.embed[...]), np.asarray(src.llm.embed[...]))


@pytest.mark.slow  # ~20-60 s: a checkpoint written, then converted by the CLI in a subprocess
def test_demo_base_from_run_ships_the_runs_stage2(tmp_path):
  """`experiments.demo_base --from-run WORK`: WORK/stage2's tensors in bf16 HF layout with the run's
  tokenizer, and base.json naming the run's steps and stage-2 scores; nothing left half-written."""
  import dataclasses

  from flax import nnx
  from safetensors.numpy import load_file

  from experiments import demo_base
  from experiments.configs import xs_model
  from qwenvl_jax.ckpt.orbax_io import save_checkpoint
  from qwenvl_jax.config import model_config_from_dict
  from qwenvl_jax.model.qwenvl import QwenVL

  hf = json.loads((BASE / "config.json").read_text())
  cfg = model_config_from_dict(xs_model(96, vocab_size=hf["vocab_size"]).to_dict())
  start = hf["visual"]["image_start_id"]
  cfg = dataclasses.replace(cfg, image_start_id=start, image_end_id=start + 1, image_pad_id=start + 2)
  run = tmp_path / "run"
  model = QwenVL(cfg, rngs=nnx.Rngs(3))
  save_checkpoint(run / "stage2", model, cfg, tokenizer_file=BASE / "sp.model")
  (run / "data").mkdir()
  (run / "data" / "manifest.json").write_text(json.dumps({"tokenizer": str(BASE / "sp.model"),
                                                          "settings": {"size": 96}}))
  scores = {"synth_vqa": {"metric": "exact_match", "score": 84.7, "n": 150}}
  (run / "three_stage.json").write_text(json.dumps({
      "steps": {"0": 3, "1": 2, "2": 5, "3": 1}, "vision_steps": 4, "stages": {"2": {"metrics": scores}},
      "commands": [{"name": "train_stage2", "cmd": "qwenvl-jax train ..."},
                   {"name": "train_stage3", "cmd": "qwenvl-jax train ..."}]}))
  out = tmp_path / "base"
  assert demo_base.main(["--from-run", str(run), "--work", str(tmp_path / "w"), "--out", str(out)]) == 0
  made = json.loads((out / "base.json").read_text())
  assert made["made_by"].startswith("python -m experiments.demo_base --from-run")
  assert made["stage2_heldout"] == scores and made["vision_steps"] == 4
  assert [c["name"] for c in made["reproduction_commands"]] == ["train_stage2"]
  assert (out / "sp.model").read_bytes() == (BASE / "sp.model").read_bytes()
  assert not (tmp_path / "base.tmp").exists()
  tensors = load_file(str(next(out.glob("*.safetensors"))))
  wte = tensors["transformer.wte.weight"]
  assert wte.dtype.itemsize == 2
  np.testing.assert_allclose(wte.astype(np.float32), np.asarray(model.llm.embed[...], np.float32),
                             rtol=1e-2, atol=1e-6)  # bf16 rounding
