"""Tiny benchmark fixtures written in each benchmark's published annotation format.

`BUILDERS[task](root) -> (split, n_items)` writes the files under `root` (images only where the reader
needs to open them). Every builder is hand-written from the benchmark's documented format.
"""

from __future__ import annotations

import json
import pathlib
import pickle


def _json(path: pathlib.Path, obj):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(obj), encoding="utf-8")


def _jsonl(path: pathlib.Path, rows):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _png(path: pathlib.Path, size=(64, 48)):
  from PIL import Image
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.new("RGB", size, (200, 30, 30)).save(path)


def nocaps(root):
  _json(root / "nocaps_val_4500_captions.json", {
    "info": {}, "licenses": [],
    "images": [{"id": 0, "file_name": "0013ea2087020901.jpg", "height": 480, "width": 640, "domain": "in-domain"},
               {"id": 1, "file_name": "00223fe5f9f2d5ec.jpg", "height": 480, "width": 640, "domain": "near-domain"}],
    "annotations": [{"image_id": 0, "id": 0, "caption": "A dog runs on the grass."},
                    {"image_id": 0, "id": 1, "caption": "a brown dog playing outside"},
                    {"image_id": 1, "id": 2, "caption": "A red car parked on a street."},
                    {"image_id": 1, "id": 3, "caption": "a car next to a building"}]})
  return "val", 2


def flickr30k(root):
  def img(i, split, sents):
    return {"filename": f"{1000 + i}.jpg", "imgid": i, "split": split, "sentids": list(range(len(sents))),
            "sentences": [{"raw": s, "tokens": s.lower().split(), "imgid": i, "sentid": j}
                          for j, s in enumerate(sents)]}
  _json(root / "dataset_flickr30k.json", {"dataset": "flickr30k", "images": [
    img(0, "test", ["Two men play chess.", "Men playing a board game."]),
    img(1, "test", ["A child jumps into a pool.", "A kid swimming."]),
    img(2, "train", ["A woman rides a bike.", "Cyclist on a road."]),
    img(3, "train", ["A cat sleeps.", "A sleeping cat."])]})
  return "test", 2


def _vqa_pair(root, qname, aname, subtype="val2014"):
  _json(root / qname, {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "data_subtype": subtype,
                       "questions": [{"image_id": 42, "question": "How many dogs?", "question_id": 420},
                                     {"image_id": 73, "question": "What color is the bus?", "question_id": 730}]})
  answers = {420: ["2"] * 10, 730: ["red"] * 7 + ["orange"] * 3}
  _json(root / aname, {"info": {}, "data_subtype": subtype, "annotations": [
    {"question_id": q, "image_id": 42 if q == 420 else 73, "question_type": "how many", "answer_type": "number",
     "multiple_choice_answer": a[0], "answers": [{"answer": x, "answer_confidence": "yes", "answer_id": i + 1}
                                                 for i, x in enumerate(a)]} for q, a in answers.items()]})
  return "val2014", 2


def vqav2(root):
  return _vqa_pair(root, "v2_OpenEnded_mscoco_val2014_questions.json", "v2_mscoco_val2014_annotations.json")


def okvqa(root):
  return _vqa_pair(root, "OpenEnded_mscoco_val2014_questions.json", "mscoco_val2014_annotations.json")


def gqa(root):
  _json(root / "testdev_balanced_questions.json", {
    "201307251": {"imageId": "n161313", "question": "Is the sky blue?", "answer": "yes",
                  "fullAnswer": "Yes, the sky is blue.", "types": {"structural": "verify"}},
    "201640614": {"imageId": "n235859", "question": "What animal is this?", "answer": "horse",
                  "fullAnswer": "This is a horse.", "types": {"structural": "query"}}})
  return "testdev_balanced", 2


def vizwiz(root):
  ans = ([{"answer": "soup", "answer_confidence": "yes"}] * 8
         + [{"answer": "unanswerable", "answer_confidence": "no"}] * 2)
  _json(root / "Annotations" / "val.json", [
    {"image": "VizWiz_val_00000000.jpg", "question": "What is this?", "answers": ans, "answer_type": "other",
     "answerable": 1},
    {"image": "VizWiz_val_00000001.jpg", "question": "What color?",
     "answers": [{"answer": "blue", "answer_confidence": "yes"}] * 10, "answer_type": "other", "answerable": 1}])
  return "val", 2


def scienceqa_img(root):
  base = {"hint": "", "task": "closed choice", "grade": "grade2", "subject": "natural science", "topic": "biology",
          "category": "x", "skill": "y", "lecture": "", "solution": ""}
  _json(root / "problems.json", {
    "5": {**base, "question": "Which animal is a mammal?", "choices": ["frog", "dog"], "answer": 1,
          "image": "image.png", "split": "test"},
    "9": {**base, "question": "What is 1+1?", "choices": ["1", "2", "3"], "answer": 1, "image": None, "split": "test"},
    "12": {**base, "hint": "Look at the map.", "question": "Which state is highlighted?",
           "choices": ["Ohio", "Utah", "Iowa"], "answer": 2, "image": "image.png", "split": "test"},
    "20": {**base, "question": "Q?", "choices": ["a", "b"], "answer": 0, "image": "image.png", "split": "train"}})
  return "test", 2


def textvqa(root):
  _json(root / "TextVQA_0.5.1_val.json", {"dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1",
    "data": [{"question_id": 34602, "question": "what is the brand of this camera?", "image_id": "003a8ae2ef43b901",
              "image_classes": ["Camera"], "image_width": 1024, "image_height": 664, "set_name": "val",
              "answers": ["dakota"] * 9 + ["dakota digital"]},
             {"question_id": 34603, "question": "what does the small white text spell?", "image_id": "003a8ae2ef43b901",
              "image_classes": ["Camera"], "image_width": 1024, "image_height": 664, "set_name": "val",
              "answers": ["copenhagen"] * 10}]})
  return "val", 2


def docvqa(root):
  _json(root / "val" / "val_v1.0.json", {"dataset_name": "SP-DocVQA", "dataset_split": "val", "dataset_version": "1.0",
    "data": [{"questionId": 49153, "question": "What is the ‘actual’ value per 1000, during the year 1975?",
              "question_types": ["figure/diagram"], "image": "documents/pybv0228_81.png", "docId": 14465,
              "ucsf_document_id": "pybv0228", "ucsf_document_page_no": "81", "answers": ["0.28"], "data_split": "val"},
             {"questionId": 24580, "question": "What is the date mentioned?", "question_types": ["form"],
              "image": "documents/nkbl0226_1.png", "docId": 1, "answers": ["March 3, 1977", "3/3/77"],
              "data_split": "val"}]})
  return "val", 2


def chartqa(root):
  _json(root / "test" / "test_human.json",
        [{"imgname": "41699051005347.png", "query": "How many bars are there?", "label": "3"}])
  _json(root / "test" / "test_augmented.json", [{"imgname": "two_col_100022.png", "query": "What is the value in 2019?",
                                                 "label": "95.1"},
                                                {"imgname": "two_col_100022.png", "query": "Which year is highest?",
                                                 "label": "2019"}])
  return "test", 3


def ocrvqa(root):
  _json(root / "dataset.json", {
    "1234567": {"imageURL": "http://ecx.images-amazon.com/images/I/51Bxxx.jpg", "title": "The Book",
                "authorName": "Jane Doe", "genre": "Comedy", "genreID": "3",
                "questions": ["Who wrote this book?", "What is the title of this book?", "Is this a comedy book?"],
                "answers": ["Jane Doe", "The Book", "Yes"], "split": 3},
    "7654321": {"imageURL": "http://ecx.images-amazon.com/images/I/41Yyyy.gif", "title": "Other",
                "authorName": "A B", "genre": "Travel", "genreID": "1",
                "questions": ["Who wrote this book?"], "answers": ["A B"], "split": 1}})
  return "test", 3


def ai2d(root):
  for name, qs in (("0.png", {"Which stage comes after egg?": (["larva", "adult", "pupa"], 0, "0.png-0")}),
                   ("1.png", {"What does the sun give?": (["energy", "water"], 0, "1.png-0")})):
    _json(root / "questions" / f"{name}.json", {"imageName": name, "questions": {
      text: {"abcLabel": False, "answerTexts": a, "correctAnswer": c, "questionId": qid}
      for text, (a, c, qid) in qs.items()}})
  (root / "ai2d_test_ids.csv").write_text("0\n")
  return "test", 1


def _instances(root):
  _json(root / "instances.json", {"images": [{"id": 1, "file_name": "COCO_train2014_000000000001.jpg",
                                              "width": 640, "height": 480}],
                                  "annotations": [
                                    {"id": 10, "image_id": 1, "bbox": [10, 20, 100, 200], "category_id": 1},
                                    {"id": 11, "image_id": 1, "bbox": [300, 50, 200, 300], "category_id": 1}],
                                  "categories": [{"id": 1, "name": "person"}]})


def _refs(splits):
  return [{"ref_id": i, "ann_id": 10 + i % 2, "image_id": 1, "split": s, "category_id": 1,
           "file_name": f"COCO_train2014_000000000001_{10 + i % 2}.jpg",
           "sentences": [{"sent": f"person {i} left", "raw": f"Person {i} left", "tokens": [], "sent_id": 2 * i},
                         {"sent": f"guy {i}", "raw": f"guy {i}", "tokens": [], "sent_id": 2 * i + 1}]}
          for i, s in enumerate(splits)]


def refcoco(root):
  _instances(root)
  _json(root / "refs.json", _refs(["val", "testA", "testB", "train"]))
  return "val", 2


def refcoco_plus(root):  # the refer toolkit's pickle, as published
  _instances(root)
  root.mkdir(parents=True, exist_ok=True)
  with open(root / "refs(unc).p", "wb") as f:
    pickle.dump(_refs(["val", "val", "testB"]), f)
  return "val", 4


def refcocog(root):
  _instances(root)
  _json(root / "refs.json", _refs(["val", "test", "train"]))
  return "val", 2


def grit(root):
  _png(root / "images" / "coco" / "test2015" / "COCO_test2015_000000000016.jpg", (64, 48))
  _json(root / "samples" / "ablation" / "refexp.json", [
    {"input": {"example_id": "refexp_ablation_0", "image_id": "coco/test2015/COCO_test2015_000000000016.jpg",
               "task_name": "refexp", "task_query": "the red square", "task_bbox": None, "output_options": None},
     "output": {"example_id": "refexp_ablation_0", "bboxes": [[8, 6, 40, 30]]},
     "meta": {"is_distorted": False}}])
  return "ablation", 1


def mme(root):
  lines = {"existence": [("000000006040.jpg", "Is there a train in this image? Please answer yes or no.", "Yes"),
                         ("000000006040.jpg", "Is there a bed in this image? Please answer yes or no.", "No")],
           "code_reasoning": [("0001.png", "Will this code print 3? Please answer yes or no.", "Yes"),
                              ("0001.png", "Will this code print 5? Please answer yes or no.", "No")]}
  root.mkdir(parents=True, exist_ok=True)
  for task, rows in lines.items():
    (root / f"{task}.txt").write_text("".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
  return "all", 4


def seed_bench(root):
  _json(root / "SEED-Bench.json", {"question_type": {"Scene Understanding": 1, "Instance Identity": 2,
                                                     "Action Recognition": 10},
    "questions": [
      {"answer": "A", "choice_a": "a park", "choice_b": "a beach", "choice_c": "a room", "choice_d": "a road",
       "data_id": "1454426_2591111986", "data_type": "image", "question": "Where is this?", "question_id": "101669",
       "question_type_id": 1},
      {"answer": "C", "choice_a": "cat", "choice_b": "dog", "choice_c": "bird", "choice_d": "fish",
       "data_id": "4202098_1014578418", "data_type": "image", "question": "What animal?", "question_id": "101670",
       "question_type_id": 2},
      {"answer": "B", "choice_a": "x", "choice_b": "y", "choice_c": "z", "choice_d": "w", "data_id": "v.mp4",
       "data_type": "video", "question": "What happens?", "question_id": "9", "question_type_id": 10}]})
  return "image", 2


def synth_grounding(root):
  _jsonl(root / "test.jsonl", [
    {"question_id": "g0", "image": "images/0.png", "width": 224, "height": 224, "expression": "the red circle",
     "box": [10, 10, 60, 60]},
    {"question_id": "g1", "image": "images/1.png", "width": 224, "height": 224, "expression": "the blue square",
     "box": [100, 120, 200, 210]}])
  return "test", 2


def synth_ocr(root):
  rows = [{"question_id": f"o{i}", "image": f"images/{i}.png", "question": f"What is word {i}?",
           "answers": [f"word{i}"]} for i in range(10)]
  _jsonl(root / "test.jsonl", rows)
  _jsonl(root / "train.jsonl", [{**r, "question_id": f"t{i}", "image": f"images/t{i}.png"} for i, r in enumerate(rows)])
  return "test", 10


def synth_caption(root):
  _jsonl(root / "test.jsonl", [
    {"image_id": "c0", "image": "images/0.png", "captions": ["a red circle on a white background"]},
    {"image_id": "c1", "image": "images/1.png", "captions": ["two blue squares", "blue squares side by side"]}])
  return "test", 2


def synth_vqa(root):  # a raw export of `qwenvl-jax data synth --kind shapes`: expanded per qa pair
  _jsonl(root / "shapes.jsonl", [
    {"id": "shapes-0-00000000", "image": "images/shapes-0-00000000.png", "width": 224, "height": 224,
     "caption": "a red circle", "objects": [{"phrase": "the red circle", "box": [10, 10, 60, 60]}], "words": [],
     "qa": [{"question": "What color is the circle?", "answer": "red"},
            {"question": "How many shapes are there?", "answer": "1"}]}])
  return "test", 2


def _b64_png(size=(8, 6)) -> str:
  import base64
  import io

  from PIL import Image
  buf = io.BytesIO()
  Image.new("RGB", size, (10, 200, 10)).save(buf, format="PNG")
  return base64.b64encode(buf.getvalue()).decode()


def mmbench(root):
  """mmbench_dev_20230712.tsv as released: base64 image column, empty C/D when a question has 2 options."""
  header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source",
            "l2-category", "comment", "split"]
  rows = [[241, "What is the color of the square?", "nan", "red", "green", "blue", "black", "B",
           "attribute_recognition", _b64_png(), "MMBench", "finegrained_perception", "nan", "dev"],
          [1011, "Is this a photo?", "A simple image.", "yes", "no", "", "", "A", "image_style", _b64_png((5, 5)),
           "MMBench", "coarse_perception", "nan", "dev"]]
  root.mkdir(parents=True, exist_ok=True)
  (root / "mmbench_dev_20230712.tsv").write_text(
    "\n".join("\t".join(map(str, r)) for r in [header] + rows) + "\n", encoding="utf-8")
  return "dev", 6  # 4 rotations + 2 rotations


def infographicvqa(root):
  _json(root / "infographicsVQA_val_v1.0_withQT.json", {"dataset_name": "infographicVQA", "dataset_split": "val",
    "data": [{"questionId": 65718, "question": "What percentage of people use Facebook?",
              "image_local_name": "38447.jpeg", "image_url": "https://example.invalid/38447.jpeg",
              "ocr_output_file": "38447.json", "answers": ["79%", "79"], "data_split": "val"},
             {"questionId": 65719, "question": "Which country is shown?", "image_local_name": "38448.jpeg",
              "ocr_output_file": "38448.json", "answers": ["india"], "data_split": "val"}]})
  return "val", 2


def pope(root):
  rows = [{"question_id": 1, "image": "COCO_val2014_000000310196.jpg", "text": "Is there a snowboard in the image?",
           "label": "yes"},
          {"question_id": 2, "image": "COCO_val2014_000000310196.jpg", "text": "Is there a dog in the image?",
           "label": "no"},
          {"question_id": 3, "image": "COCO_val2014_000000210789.jpg", "text": "Is there a car in the image?",
           "label": "yes"}]
  for split in ("random", "popular", "adversarial"):
    _jsonl(root / f"coco_pope_{split}.json", rows)
  return "random", 3


BUILDERS = {
  "nocaps": nocaps, "flickr30k": flickr30k, "vqav2": vqav2, "okvqa": okvqa, "gqa": gqa, "vizwiz": vizwiz,
  "scienceqa_img": scienceqa_img, "textvqa": textvqa, "docvqa": docvqa, "chartqa": chartqa,
  "ocrvqa": ocrvqa, "ai2d": ai2d, "refcoco": refcoco, "refcoco+": refcoco_plus, "refcocog": refcocog,
  "grit": grit, "mme": mme, "seed_bench": seed_bench, "synth_grounding": synth_grounding,
  "synth_ocr": synth_ocr, "synth_caption": synth_caption, "synth_vqa": synth_vqa,
  "mmbench": mmbench, "infographicvqa": infographicvqa, "pope": pope,
}
BUILDERS.update({f"{name}_chat": BUILDERS[name] for name in ("synth_grounding", "synth_ocr", "synth_caption",
                                                             "synth_vqa")})  # same sets, ChatML prompts
