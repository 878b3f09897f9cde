"""What each task expects under --data, as `eval --task NAME --describe` prints it (the readers'
docstrings hold the field-level detail). "or" lists alternatives tried in order."""

_QWENVL = "or Qwen-VL's converted files (eval_mm, its EVALUATION.md): "
_SYNTH = ("a .jsonl file, or a folder with {{split}}.jsonl (flat schema, see tasks/synthetic.py) or the raw "
          "`qwenvl-jax data synth` export ({raw}); image paths relative to the jsonl")

FILES = {
  "nocaps": "nocaps_val_4500_captions.json (COCO caption format; test: nocaps_test_image_info.json)\n"
            "or Qwen-VL's nocaps_val.json (images[].image + annotations)\n"
            "images: validation/ (as released), val/ or images/",
  "flickr30k": "dataset_flickr30k.json (Karpathy split: images[].filename/split/sentences[].raw)\n"
               "or flickr30k_karpathy_{split}.json (COCO captions; images[].file_name, or images[].image as\n"
               "  Qwen-VL's evaluate_caption.py reads it)\n"
               "images: flickr30k-images/ or images/",
  "vqav2": "v2_OpenEnded_mscoco_{split}_questions.json + v2_mscoco_{split}_annotations.json\n"
           + _QWENVL + "vqav2_val.jsonl / vqav2_train.jsonl / vqav2_testdev.jsonl (+ the annotations above)\n"
           "images: COCO_{subtype}_{id:012d}.jpg in val2014/ (test2015/ for test-dev), images/ or as the jsonl says",
  "okvqa": "OpenEnded_mscoco_{split}_questions.json + mscoco_{split}_annotations.json\n"
           + _QWENVL + "okvqa_val.jsonl / okvqa_train.jsonl (+ mscoco_val2014_annotations.json)\n"
           "images: COCO val2014/ or images/",
  "gqa": "{split}_questions.json ({qid: {imageId, question, answer}}), images/{imageId}.jpg\n"
         + _QWENVL + "testdev_balanced.jsonl / train.jsonl",
  "vizwiz": "Annotations/{split}.json or {split}.json ([{image, question, answers}]), images in {split}/\n"
            + _QWENVL + "vizwiz_val.jsonl (+ vizwiz_val_annotations.json) / vizwiz_test.jsonl",
  "scienceqa_img": "problems.json (ScienceQA release), images/{split}/{pid}/image.png",
  "textvqa": "TextVQA_0.5.1_{split}.json, images train_images/{image_id}.jpg (val too) or test_images/\n"
             + _QWENVL + "textvqa_val.jsonl + textvqa_val_annotations.json (VQA format; scores use it)",
  "docvqa": "{split}/{split}_v1.0.json or {split}_v1.0.json, images relative to that JSON\n"
            + _QWENVL + "val.jsonl / test.jsonl",
  "chartqa": "{split}/{split}_human.json + {split}/{split}_augmented.json, images {split}/png/\n"
             + _QWENVL + "test_human.jsonl + test_augmented.jsonl (mean of the two is reported)",
  "ocrvqa": "dataset.json (OCR-VQA release), images/{imageId}.jpg\n" + _QWENVL + "ocrvqa_test.jsonl / ocrvqa_val.jsonl",
  "ai2d": "questions/*.json + images/ (or the archive as unpacked: ai2d/{images,questions,annotations}/)\n"
          "  + ai2d_test_ids.csv beside them or beside ai2d/\n" + _QWENVL + "test.jsonl",
  "refcoco": "refs(unc).p or refs.json + instances.json (refer toolkit)\n"
             "images: images/, train2014/, or images/mscoco/images/train2014/ here or in the parent (refer's layout)\n"
             + _QWENVL + "refcoco_{val,testA,testB}.jsonl",
  "refcoco+": "refs(unc).p or refs.json + instances.json (refer toolkit)\n"
              "images: images/, train2014/, or images/mscoco/images/train2014/ here or in the parent\n"
              + _QWENVL + "refcoco+_{val,testA,testB}.jsonl",
  "refcocog": "refs(umd).p (or refs(google).p / refs.json) + instances.json (refer toolkit)\n"
              "images: images/, train2014/, or images/mscoco/images/train2014/ here or in the parent\n"
              + _QWENVL + "refcocog_{val,test}.jsonl",
  "grit": "samples/{split}/refexp.json (GRIT), images/{image_id}",
  "mme": "MME_Benchmark_release_version/<subtask>/ as released (image + txt pairs, or images/ +\n"
         "  questions_answers_YN/; txt lines question<TAB>answer), the folder itself or its parent\n"
         "or <subtask>.txt files (image<TAB>question<TAB>answer; Your_Results format) with images in\n"
         "  images/<subtask>/ (Qwen-VL's eval_mm/mme layout)",
  "seed_bench": "SEED-Bench.json, images in SEED-Bench-image/ or images/",
  "mmbench": "mmbench_dev_20230712.tsv (or any mmbench*_{split}*.tsv): index, question, hint, A..D, answer,\n"
             "  category, image (base64); the option rotations are its rows index + k*1e6 (made here if absent)",
  "infographicvqa": "infographicsVQA_{split}_v1.0.json ({data: [{questionId, question, image_local_name,\n"
                    "  answers}]}), images in infographicsvqa_images/ or images/",
  "pope": "coco_pope_{random,popular,adversarial}.json (lines {question_id, image, text, label}),\n"
          "  images in val2014/ or images/",
  "synth_grounding": _SYNTH.format(raw="shapes.jsonl"),
  "synth_ocr": _SYNTH.format(raw="text.jsonl or docs.jsonl"),
  "synth_caption": _SYNTH.format(raw="shapes.jsonl"),
  "synth_vqa": _SYNTH.format(raw="shapes.jsonl"),
}
for _name in ("grounding", "ocr", "caption", "vqa"):
  FILES[f"synth_{_name}_chat"] = FILES[f"synth_{_name}"]
