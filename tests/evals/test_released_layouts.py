"""Benchmarks laid out exactly as released (archives unpacked as shipped, Qwen-VL's converted files)."""

import os

import pytest
from PIL import Image

from qwenvl_jax.evals.tasks import get_task, score_items
from tests.evals.fixtures import BUILDERS, _json, _jsonl, _png


def test_mme_release_folder_both_subtask_layouts(tmp_path):
  base = tmp_path / "MME_Benchmark_release_version"
  _png(base / "existence" / "000000006040.jpg")  # image + txt side by side
  (base / "existence" / "000000006040.txt").write_text(
    "Is there a train in this image? Please answer yes or no.\tYes\n"
    "Is there a bed in this image? Please answer yes or no.\tNo\n")
  _png(base / "artwork" / "images" / "toy_dataset" / "10002.jpg")  # images/ + questions_answers_YN/
  (base / "artwork" / "questions_answers_YN").mkdir(parents=True)
  (base / "artwork" / "questions_answers_YN" / "99999.txt").write_text("Unshipped image?\tYes\n")  # left out
  (base / "artwork" / "questions_answers_YN" / "10002.txt").write_text(
    "Is this artwork created by Giotto? Please answer yes or no.\tYes\n"
    "Is this artwork created by Monet? Please answer yes or no.\tNo\n")
  for root in (tmp_path, base):  # the folder itself or its parent
    items = get_task("mme").read(root)
    assert [it["id"] for it in items] == ["existence/000000006040.jpg/0", "existence/000000006040.jpg/1",
                                          "artwork/10002.jpg/0", "artwork/10002.jpg/1"]
    assert items[2]["image"] == str(base / "artwork" / "images" / "toy_dataset" / "10002.jpg")
    assert [it["answer"] for it in items] == ["Yes", "No", "Yes", "No"]
    assert items[1]["question"] == "Is there a bed in this image? Please answer yes or no."
  res = score_items(get_task("mme"), items, {it["id"]: it["answer"] for it in items})
  assert res.details["perception"] == 400.0


def test_mme_missing_files_error_names_both_layouts(tmp_path):
  with pytest.raises(FileNotFoundError, match="MME_Benchmark_release_version.*<subtask>.txt"):
    get_task("mme").read(tmp_path)


def test_ai2d_archive_layout(tmp_path):
  BUILDERS["ai2d"](tmp_path / "ai2d")  # questions/ (+ ids) inside ai2d/ ...
  os.replace(tmp_path / "ai2d" / "ai2d_test_ids.csv", tmp_path / "ai2d_test_ids.csv")  # ... ids beside it
  _png(tmp_path / "ai2d" / "images" / "0.png")
  items = get_task("ai2d").read(tmp_path, "test")
  assert len(items) == 1 and items[0]["image"] == str(tmp_path / "ai2d" / "images" / "0.png")


def test_refcoco_images_where_refer_lays_them(tmp_path):
  BUILDERS["refcoco"](tmp_path / "data" / "refcoco")
  img = tmp_path / "data" / "images" / "mscoco" / "images" / "train2014" / "COCO_train2014_000000000001.jpg"
  _png(img)
  items = get_task("refcoco").read(tmp_path / "data" / "refcoco", "val")
  assert os.path.samefile(items[0]["image"], img)


def test_nocaps_validation_folder(tmp_path):
  BUILDERS["nocaps"](tmp_path)
  _png(tmp_path / "validation" / "0013ea2087020901.jpg")
  assert get_task("nocaps").read(tmp_path)[0]["image"] == str(tmp_path / "validation" / "0013ea2087020901.jpg")


def test_flickr_file_as_evaluate_caption_reads_it(tmp_path):
  # eval_mm/evaluate_caption.py: json.load(test)['images'] with id + image; COCO(annotation) for scoring
  _json(tmp_path / "flickr30k_karpathy_test.json", {
    "images": [{"id": 1000092795, "image": "data/flickr30k/flickr30k-images/1000092795.jpg"}],
    "annotations": [{"image_id": 1000092795, "id": 0, "caption": "Two young guys with shaggy hair."},
                    {"image_id": 1000092795, "id": 1, "caption": "Two young men outside."}]})
  items = get_task("flickr30k").read(tmp_path, "test")
  assert items[0]["id"] == 1000092795 and len(items[0]["captions"]) == 2
  _json(tmp_path / "flickr30k_karpathy_test.json", {"images": [{"id": 1}], "annotations": []})
  with pytest.raises(ValueError, match=r"images\[0\] needs 'id' and 'file_name'.*'image'"):
    get_task("flickr30k").read(tmp_path, "test")


def test_qwenvl_converted_textvqa_scored_against_the_official_annotations(tmp_path):
  _jsonl(tmp_path / "textvqa_val.jsonl", [
    {"image": "data/textvqa/train_images/003a8ae2ef43b901.jpg", "question": "what is the brand of this camera?",
     "question_id": 34602, "answer": "dakota"}])
  _json(tmp_path / "textvqa_val_annotations.json", {"annotations": [
    {"question_id": 34602, "image_id": "003a8ae2ef43b901",
     "answers": [{"answer": "dakota", "answer_id": i} for i in range(9)] + [{"answer": "dakota digital", "answer_id": 9}]}]})
  _png(tmp_path / "train_images" / "003a8ae2ef43b901.jpg")
  items = get_task("textvqa").read(tmp_path)
  assert items[0]["id"] == 34602 and items[0]["answers"] == ["dakota"] * 9 + ["dakota digital"]
  assert items[0]["image"] == str(tmp_path / "train_images" / "003a8ae2ef43b901.jpg")  # longest existing suffix
  assert score_items(get_task("textvqa"), items, {"34602": "dakota digital"}).score == pytest.approx(30.0)


def test_qwenvl_converted_chartqa_and_refcoco(tmp_path):
  _jsonl(tmp_path / "c" / "test_human.jsonl", [{"image": "data/chartqa/test/png/a.png", "question": "How many?",
                                                "question_id": 0, "answer": "3"}])
  _jsonl(tmp_path / "c" / "test_augmented.jsonl", [{"image": "data/chartqa/test/png/b.png", "question": "Max?",
                                                    "question_id": 0, "answer": "95.1"}])
  items = get_task("chartqa").read(tmp_path / "c", "test")
  assert [it["id"] for it in items] == ["human/0", "augmented/0"] and items[1]["subset"] == "augmented"
  res = score_items(get_task("chartqa"), items, {"human/0": "3", "augmented/0": "100"})
  assert res.details["subsets"] == {"human": 100.0, "augmented": 0.0} and res.score == 50.0

  # eval_mm/evaluate_grounding.py: image, sent, bbox (xyxy pixels), width, height; no id
  _jsonl(tmp_path / "r" / "refcoco_val.jsonl", [
    {"image": "data/coco/train2014/COCO_train2014_000000380440.jpg", "sent": "the man in yellow coat",
     "bbox": [374.31, 65.06, 510.0, 267.0], "height": 640, "width": 512}])
  (item,) = get_task("refcoco").read(tmp_path / "r", "val")
  assert item["id"] == 0 and item["box"] == [374.31, 65.06, 510.0, 267.0] and item["expression"].startswith("the man")


def test_missing_files_error_names_official_and_converted(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"TextVQA_0.5.1_val.json.*textvqa_val.jsonl"):
    get_task("textvqa").read(tmp_path)
  with pytest.raises(FileNotFoundError, match=r"refs.json.*refcoco,refcoco\+,refcocog\}_val.jsonl"):
    get_task("refcoco").read(tmp_path, "val")


def test_mmbench_rotations_and_images(tmp_path):
  BUILDERS["mmbench"](tmp_path)
  items = get_task("mmbench").read(tmp_path)
  first = [it for it in items if it["group"] == 241]
  assert [it["id"] for it in first] == [241, 1_000_241, 2_000_241, 3_000_241]
  assert [it["choices"][0] for it in first] == ["red", "green", "blue", "black"]
  assert [it["answer"] for it in first] == ["B", "A", "D", "C"]  # "green" wherever it moved
  assert all(it["choices"][ord(it["answer"]) - 65] == "green" for it in first)
  two = [it for it in items if it["group"] == 1011]
  assert [it["choices"] for it in two] == [["yes", "no"], ["no", "yes"]] and two[0]["hint"] == "A simple image."
  assert first[0]["hint"] == ""  # "nan" in the TSV
  with Image.open(first[0]["image"]) as im:
    assert im.size == (8, 6)
  from qwenvl_jax.evals.tasks import prompts
  text = prompts.render(get_task("mmbench").prompt(first[1]))
  assert text.endswith("Context: N/A\nQuestion: What is the color of the square?\n"
                       "Options: A. green\nB. blue\nC. black\nD. red\nAnswer:")


def test_mmbench_tsv_with_its_rotations_is_read_as_is(tmp_path):
  """The released dev TSV carries the circular copies itself (index + k * 1e6, options already shifted):
  no further rotation, grouped by index % 1e6 as mmbench_evaluation.py does."""
  from tests.evals.fixtures import _b64_png
  header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image"]
  img = _b64_png()
  rows = [[7, "Color?", "nan", "red", "green", "", "", "B", "attr", img],
          [1_000_007, "Color?", "nan", "green", "red", "", "", "A", "attr", img]]
  (tmp_path / "mmbench_dev_20230712.tsv").write_text(
    "\n".join("\t".join(map(str, r)) for r in [header] + rows) + "\n", encoding="utf-8")
  items = get_task("mmbench").read(tmp_path)
  assert [(it["id"], it["group"], it["choices"], it["answer"]) for it in items] == [
    (7, 7, ["red", "green"], "B"), (1_000_007, 7, ["green", "red"], "A")]
  res = score_items(get_task("mmbench"), items, {"7": "B", "1000007": "B"})  # second rotation wrong
  assert res.score == 0.0 and res.details["per_rotation_accuracy"] == 50.0
