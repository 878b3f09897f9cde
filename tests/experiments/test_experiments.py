"""The from-scratch experiment code: data generators, data prep, stage commands -> valid configs and batches,
and (slow) the whole three-stage driver end to end at a trivial size."""

import json
import pathlib
import shlex

import numpy as np
import pytest
from PIL import Image

from experiments import common, easy_text, prepare_data, three_stage

# Research scripts, not the product: checked in the slow target (scripts/test_slow.sh).
pytestmark = pytest.mark.slow

SMALL = prepare_data.DataSettings(n_shapes=12, n_words=12, n_heldout_shapes=3, n_heldout_words=3,
                                  sp_vocab=400)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("exp_data")
  prepare_data.prepare(out, SMALL, log=lambda *_: None)
  return out


def _decode(rec):
  import io
  return np.asarray(Image.open(io.BytesIO(rec["image"])).convert("L"), np.float32)


def test_easy_text_ink_lies_inside_the_word_box():
  for i in range(5):
    rec = easy_text.generate(i, seed=3, size=96, n_words=20)
    word = rec["words"][0]
    assert word["text"] in easy_text.word_list(20)
    assert rec["qa"] == [{"question": easy_text.READ_QUESTION, "answer": word["text"]}]
    x1, y1, x2, y2 = word["box"]
    assert 0 <= x1 < x2 <= 96 and 0 <= y1 < y2 <= 96
    grey = _decode(rec)
    dark = grey < 100  # ink is drawn at <= 80 on a >= 150 background
    assert dark.any()
    ys, xs = np.nonzero(dark)
    assert xs.min() >= x1 - 1 and xs.max() <= x2 and ys.min() >= y1 - 1 and ys.max() <= y2


def test_easy_text_jitter_keeps_the_word_centred():
  for i in range(8):
    rec = easy_text.generate(i, seed=4, size=96, n_words=50, font_px=(20, 20), jitter=2, n_fonts=2)
    x1, y1, x2, y2 = rec["words"][0]["box"]
    # centred up to 2 px off, plus <= 1 px from halving an odd leftover and from box clipping
    assert abs((x1 + x2) / 2 - 48) <= 3.5 and abs((y1 + y2) / 2 - 48) <= 3.5, rec["words"][0]


def test_shape_radius_range_bounds_the_boxes():
  from qwenvl_jax.data.synth import shapes
  sides = [max(o["box"][2] - o["box"][0], o["box"][3] - o["box"][1])
           for i in range(20) for o in shapes.generate(i, seed=2, size=96, max_objects=3,
                                                       radius=(0.12, 0.2))["objects"]]
  # a shape of radius r spans 2r at its widest (circle, square 1.7r, hexagon 2r): 2 * 0.12 * 96 * 0.8
  assert min(sides) >= 18 and max(sides) <= 2 * 0.2 * 96 + 1, sides


def test_easy_text_is_a_pure_function_of_seed_and_index():
  a, b = easy_text.generate(7, seed=1), easy_text.generate(7, seed=1)
  assert a == b
  assert easy_text.generate(7, seed=2)["image"] != a["image"]
  with pytest.raises(ValueError, match="n_words"):
    easy_text.word_list(0)


def test_prepare_writes_disjoint_train_and_heldout_sets(data_dir):
  manifest = json.loads((data_dir / "manifest.json").read_text())
  train = [json.loads(x) for x in (data_dir / "train" / "shapes.jsonl").read_text().splitlines()]
  held = [json.loads(x) for x in (data_dir / "heldout" / "shapes.jsonl").read_text().splitlines()]
  assert len(train) == 12 and len(held) == 3
  train_png = {(data_dir / "train" / r["image"]).read_bytes() for r in train}
  assert not train_png & {(data_dir / "heldout" / r["image"]).read_bytes() for r in held}
  assert all(1 <= len(r["objects"]) <= SMALL.max_objects for r in train)
  # ChatML records: at most chat_turns turns, picture introduced in the first user turn only.
  for line in (data_dir / "train" / "chat_words.jsonl").read_text().splitlines():
    conv = json.loads(line)["conversations"]
    assert 2 <= len(conv) <= 2 * SMALL.chat_turns
    assert conv[0]["value"].startswith("Picture 1: <img>images/word-")
    assert all("<img>" not in m["value"] for m in conv[1:])
  from qwenvl_jax.text.tokenizer import load_tokenizer
  tok = load_tokenizer(manifest["tokenizer"])
  assert tok.vocab_size == manifest["vocab_size"] <= manifest["padded_vocab_size"]
  caption = train[0]["caption"]
  assert tok.decode(tok.encode(caption)) == caption
  assert (data_dir / "preview.png").is_file()


def _config_from_cmd(cmd):
  from qwenvl_jax.config import apply_overrides, load_config_dict
  argv = cmd[cmd.index("--config"):]
  sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
  return apply_overrides(load_config_dict(argv[1]), sets)


ADAPTER_CORE = {f"adapter.{n}" for n in ("query", "kv_proj", "ln_q", "ln_kv", "in_proj", "out_proj")}
ADAPTER_OUT = {"adapter.ln_post", "adapter.proj"}
# What each stage trains (experiments/configs.py): stage 1 only the adapter's output map (the LLM
# frozen as in the paper; ViT and the adapter's attention keep the vision warm-up's "where"), stage 2 only the
# LLM, stage 3 only the LLM (on stage 2's frozen image tokens).
TRAINED = {0: {"visual", "llm"} | ADAPTER_CORE | ADAPTER_OUT, 1: ADAPTER_OUT, 2: {"llm"}, 3: {"llm"}}


def _trained_parts(model_cfg, frozen):
  """The modules ("visual", "llm", "adapter.<part>") with at least one trained parameter."""
  from qwenvl_jax.train import optim
  from tests.train.helpers import flat, initial_state

  params, _ = initial_state(model_cfg)
  optim.check_frozen(params, frozen)
  part = lambda p: ".".join(p.split(".")[:2]) if p.startswith("adapter.") else p.split(".")[0]
  return {part(p) for p in flat(params) if not optim.is_frozen(p, frozen)}


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_stage_commands_give_valid_configs_that_agree_with_the_vocabulary(data_dir, tmp_path, stage):
  from qwenvl_jax.config import model_config_from_dict, train_config_from_dict
  from qwenvl_jax.infer.api import check_tokenizer
  from qwenvl_jax.text.tokenizer import load_tokenizer

  manifest = json.loads((data_dir / "manifest.json").read_text())
  init = tmp_path / "prev" if stage > 0 else None
  cmd = three_stage.train_cmd(stage, tmp_path / "wd", data_dir, manifest, 30, init, [])
  assert ("--init" in cmd) == (stage > 0)
  config = _config_from_cmd(cmd)
  train_cfg = train_config_from_dict(config)
  assert (train_cfg.stage, train_cfg.steps, train_cfg.optim.warmup_steps) == (max(stage, 1), 30, 2)
  model = model_config_from_dict(config.model)
  check_tokenizer(model, load_tokenizer(manifest["tokenizer"]))
  assert all(pathlib.Path(p).is_file() for p in config.data.paths)
  assert _trained_parts(model, train_cfg.optim.frozen) == TRAINED[stage]
  shlex.join(cmd)  # printable as the exact command


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_stage_data_become_contract_batches(data_dir, tmp_path, stage):
  from qwenvl_jax.config import model_config_from_dict
  from qwenvl_jax.data.pipeline import make_train_iterator
  from qwenvl_jax.train.batch import validate_batch

  manifest = json.loads((data_dir / "manifest.json").read_text())
  config = _config_from_cmd(three_stage.train_cmd(stage, tmp_path, data_dir, manifest, 5, None,
                                                  ["batch_size=2"]))
  model = model_config_from_dict(config.model)
  batch = next(make_train_iterator(config, 0, 1))
  validate_batch(batch, 2, config.seq_len, model, check_spans=True)
  assert batch["loss_mask"].any(axis=1).all()
  assert ("images" in batch) == (stage > 0)  # stage 0 is text only
  if stage in (0, 2, 3):  # packed rows hold several samples
    assert batch["segment_ids"].max() >= 2
  if stage == 3:  # ChatML samples and replayed pre-training samples (experiments/sft_mixture.py)
    from qwenvl_jax.text.tokenizer import load_tokenizer
    im_start = load_tokenizer(manifest["tokenizer"]).im_start_id
    it = make_train_iterator(config, 0, 1)
    kinds = set()
    for b in [next(it) for _ in range(4)]:
      for ids, seg in zip(b["tokens"], b["segment_ids"]):
        kinds |= {bool((ids[seg == k] == im_start).any()) for k in range(1, seg.max() + 1)}
    assert kinds == {True, False}  # a chat sample has <|im_start|>, a replayed one does not


def test_eval_root_has_absolute_images_for_every_task(data_dir, tmp_path):
  from qwenvl_jax.evals.tasks import get_task

  root = three_stage.eval_root(data_dir, tmp_path / "eval")
  counts = {}
  for task in three_stage.TASK_FILES:
    items = get_task(task).read(root / task)
    assert items and all(pathlib.Path(it["image"]).is_file() for it in items)
    counts[task] = len(items)
  assert counts["synth_ocr"] == 3  # one word per image
  assert counts["synth_caption"] == 3


def test_smooth_is_a_trailing_mean():
  assert common.smooth([1, 2, 3, 4], 2) == [1, 1.5, 2.5, 3.5]


@pytest.mark.slow
def test_three_stage_driver_end_to_end(tmp_path):
  """Data, three stages, evals, chat and plots at a trivial size (a few minutes on 2 cores)."""
  results = tmp_path / "results"
  rc = three_stage.main(["--work", str(tmp_path / "work"), "--results", str(results),
                         "--steps", "0:2,1:2,2:2,3:2", "--vision-steps", "2", "--eval-limit", "2",
                         "--set", "batch_size=8",
                         "--data-args", "--n-shapes 12 --n-words 12 --n-heldout-shapes 2 "
                                        "--n-heldout-words 2 --sp-vocab 400"])
  assert rc == 0
  report = json.loads((results / "three_stage.json").read_text())
  assert sorted(report["stages"]) == ["1", "2", "3"]  # stage 0 (text only) is not evaluated
  for stage in report["stages"].values():
    assert set(stage["metrics"]) == set(three_stage.TASK_FILES)
  for png in ("loss_curves.png", "stage_metrics.png", "grounding_examples.png", "chat_boxes.png",
              "vision_warmup.png"):
    assert (results / png).is_file()


def test_probe_spread_separates_image_independent_features():
  from experiments.probe_vision import spread
  rng = np.random.default_rng(0)
  same = np.broadcast_to(rng.normal(size=(1, 16, 8)), (4, 16, 8))  # every image gives the same features
  varied = rng.normal(size=(4, 16, 8))
  assert spread(same)["across"] == 0 and spread(same)["overall"] > 0.5
  assert abs(spread(varied)["across"] - 1.0) < 0.3


def test_warmup_cell_targets_follow_the_adapter_query_grid():
  """Query i sits at row i // 4, column i % 4 of the adapter's sin-cos table (first half: column)."""
  from experiments import vision_warmup
  from qwenvl_jax.model.posemb import sincos_1d, sincos_2d
  table = sincos_2d(64, vision_warmup.GRID)
  row, col = 1, 3
  np.testing.assert_allclose(table[row * vision_warmup.GRID + col],
                             np.concatenate([sincos_1d(32, np.array([col])), sincos_1d(32, np.array([row]))], 1)[0],
                             atol=1e-6)
  objects = [{"box": [70, 20, 90, 40], "color": "red", "category": "star"},    # centre (80, 30): row 1, col 3
             {"box": [0, 72, 20, 92], "color": "black", "category": "circle"},  # centre (10, 82): row 3, col 0
             {"box": [72, 22, 88, 36], "color": "blue", "category": "square"}]  # same cell as the first
  t = vision_warmup.cell_targets(objects, 96)
  assert np.flatnonzero(t["present"]).tolist() == [7, 12]
  assert vision_warmup.COLORS[t["color"][7]] == "red" and vision_warmup.SHAPES[t["shape"][7]] == "star"
  assert vision_warmup.SHAPES[t["shape"][12]] == "circle"
  np.testing.assert_allclose(t["box"][7], np.array([70, 20, 90, 40]) / 96)
  # [0, 1000) coordinates 729, 208, 938, 417 (text.boxes.normalize_box): hundreds, then tens digits
  assert t["digits"][7].tolist() == [7, 2, 9, 4, 2, 0, 3, 1]
  assert not t["box"][0].any()


def test_warmup_letter_targets():
  from experiments import vision_warmup
  assert vision_warmup.letter_targets("Cab").tolist() == [3, 1, 2] + [0] * (vision_warmup.MAX_LETTERS - 3)


def test_vision_warmup_changes_only_the_vision_side(data_dir, tmp_path):
  """Two steps on the tiny data set: the ViT and adapter move, the LLM is the --init checkpoint's."""
  import dataclasses

  from flax import nnx

  from experiments.configs import xs_model
  from experiments import vision_warmup
  from qwenvl_jax.ckpt.orbax_io import load_checkpoint, save_checkpoint
  from qwenvl_jax.config import model_config_from_dict
  from qwenvl_jax.model.qwenvl import QwenVL

  manifest = json.loads((data_dir / "manifest.json").read_text())
  cfg = model_config_from_dict(xs_model(96, vocab_size=manifest["padded_vocab_size"]).to_dict())
  cfg = dataclasses.replace(cfg, image_start_id=manifest["image_start_id"],
                            image_end_id=manifest["image_end_id"], image_pad_id=manifest["image_pad_id"])
  save_checkpoint(tmp_path / "init", QwenVL(cfg, rngs=nnx.Rngs(0)), cfg, tokenizer_file=manifest["tokenizer"])
  assert vision_warmup.main(["--init", str(tmp_path / "init"), "--data", str(data_dir), "--out",
                             str(tmp_path / "out"), "--steps", "2", "--batch-size", "4",
                             "--result", str(tmp_path / "warm.json")]) == 0
  before, _, _ = load_checkpoint(tmp_path / "init")
  after, _, tok = load_checkpoint(tmp_path / "out")
  assert tok is not None
  b, a = nnx.state(before).to_pure_dict(), nnx.state(after).to_pure_dict()
  for x, y in zip(jax_leaves(b["llm"]), jax_leaves(a["llm"])):
    np.testing.assert_array_equal(x, y)
  assert any(not np.array_equal(x, y) for x, y in zip(jax_leaves(b["visual"]), jax_leaves(a["visual"])))
  assert any(not np.array_equal(x, y) for x, y in zip(jax_leaves(b["adapter"]), jax_leaves(a["adapter"])))
  curve = json.loads((tmp_path / "warm.json").read_text())["curve"]
  assert curve[-1]["step"] == 2 and 0 <= curve[-1]["heldout"]["word_acc"] <= 1


def jax_leaves(tree):
  import jax
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_window_ablation_from_a_checkpoint_needs_its_vocabulary(tmp_path):
  from experiments import ablations
  with pytest.raises(SystemExit) as e:
    ablations.main(["window", "--work", str(tmp_path), "--init", str(tmp_path / "ckpt")])
  assert e.value.code == 2


def test_grounding_errors_tell_a_wrong_object_from_a_loose_box():
  from experiments import grounding_errors
  from qwenvl_jax.evals.metrics.grounding import grounding_accuracy
  record = {"id": "scene", "width": 100, "height": 100,
            "objects": [{"box": [10, 10, 30, 30], "category": "circle"},
                        {"box": [60, 60, 90, 90], "category": "star"}]}
  predictions = [{"question_id": "scene/obj0", "answer": "<box>(100,100),(300,300)</box>"},  # right
                 {"question_id": "scene/obj1", "answer": "(100,100),(300,300)"},  # the other object
                 {"question_id": "scene/obj0", "answer": "(100,200),(300,400)"}]  # 10 px low: IoU 1/3
  out = grounding_errors.breakdown([record], predictions)
  eval_accuracy = grounding_accuracy([p["answer"] for p in predictions],
                                     [[10, 10, 30, 30], [60, 60, 90, 90], [10, 10, 30, 30]], [(100, 100)] * 3)
  assert out["all"]["accuracy"] == pytest.approx(eval_accuracy.score / 100) == pytest.approx(1 / 3)
  assert out["all"]["chose_asked_object"] == pytest.approx(2 / 3)
  assert out["all"]["accuracy_when_chosen"] == pytest.approx(0.5)
  # median over the two chosen answers: y errors 0 and 10 px, x errors ~0
  np.testing.assert_allclose(out["all"]["median_error_px_x1y1x2y2"], [0, 5, 0, 5], atol=0.1)
  assert set(out["by_objects_in_scene"]) == {"2"}
  assert out["by_category"]["star"]["chose_asked_object"] == 0.0
  with pytest.raises(KeyError, match="'elsewhere'"):
    grounding_errors.breakdown([record], [{"question_id": "elsewhere/obj0", "answer": ""}])
  with pytest.raises(ValueError, match="grounding item id"):
    grounding_errors.breakdown([record], [{"question_id": "scene/qa0", "answer": ""}])


def test_box_probe_reads_a_linear_box_and_not_noise():
  from experiments.probe_boxes import ridge_errors
  rng = np.random.default_rng(0)
  tokens = rng.normal(size=(400, 16))
  boxes = tokens[:, :4] * 10 + 50  # the box is a linear function of the token
  exact = ridge_errors(tokens[:300], boxes[:300], tokens[300:], boxes[300:], lam=1e-3)
  assert max(exact) < 0.05
  noise = rng.normal(size=(400, 16))
  blind = ridge_errors(noise[:300], boxes[:300], noise[300:], boxes[300:], lam=1e-3)
  assert min(blind) > 4  # |N(0, 10)| has median 6.7
