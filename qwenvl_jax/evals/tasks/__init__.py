"""The task registry: `TASKS[name]` -> Task (reader, the paper's prompt, decoding, metric).

Every number the registry produces names its metric variant; the first variant of each task is the one
that reproduces the paper (eval-metrics.md). Readers document the files they expect under --data.
"""

from __future__ import annotations

import dataclasses

from qwenvl_jax.evals.metrics import anls, exact_match, grounding, multiple_choice, relaxed_accuracy, vqa_accuracy
from qwenvl_jax.evals.metrics import mme as mme_metric
from qwenvl_jax.evals.metrics import pope
from qwenvl_jax.evals.tasks import (caption, general_vqa, mme, mmbench, prompts, qwenvl_jsonl, rec, seed_bench,
                                    synthetic, text_vqa)
from qwenvl_jax.evals.tasks.files import FILES
from qwenvl_jax.evals.tasks.base import Item, Task
from qwenvl_jax.evals.tasks.scoring import score_items

_or_converted = qwenvl_jsonl.or_converted  # the official files, else Qwen-VL's converted jsonl
_CIDER = ("coco", "coco-java")  # python PTB tokenisation (default) or pycocoevalcap's Java one
_REC = dict(family="rec", prompt=prompts.grounding, metric="grounding_accuracy", variants=grounding.VARIANTS,
            max_new_tokens=28, min_new_tokens=10)
_VQA = dict(family="vqa", prompt=prompts.vqa, metric="vqa_accuracy", variants=("qwenvl", "official", "lmms"))
# lmms-eval scores TextVQA, OK-VQA and VizWiz with its EvalAIAnswerProcessor on both sides (',' and '?'
# deleted, "'s" split off first), unlike its VQAv2: their `lmms` is that metric variant.
_VQA_EVALAI = dict(_VQA, variant_map=(("lmms", "lmms-evalai"),))
_CAPTION = dict(family="caption", prompt=prompts.caption, metric="cider", variants=_CIDER,
                max_new_tokens=30, min_new_tokens=8)
# "qwenvl" exact match (its GQA answer clean-up) is offered on GQA only.
_EM = dict(family="vqa", prompt=prompts.vqa, metric="exact_match", variants=("plain",))
_CHOICE = dict(family="choice", metric="choice_accuracy", variants=multiple_choice.VARIANTS)

_ALL = [
  # Image caption (Table 4)
  Task("nocaps", reader=caption.read_nocaps, splits=("val", "test"), description="Nocaps val, CIDEr",
       **_CAPTION),
  Task("flickr30k", reader=caption.read_flickr30k, splits=("test", "val", "train"), shot_split="train",
       description="Flickr30K Karpathy test, CIDEr", **_CAPTION),
  # General VQA (Table 4)
  Task("vqav2", reader=_or_converted("vqav2", general_vqa.read_vqav2),
       splits=("val2014", "test-dev2015", "train2014"),
       shot_split="train2014", description="VQAv2 (test-dev: predictions for the server)", **_VQA),
  Task("okvqa", reader=_or_converted("okvqa", general_vqa.read_okvqa),
       splits=("val2014", "train2014"), shot_split="train2014",
       description="OK-VQA val, VQA accuracy", **_VQA_EVALAI),
  Task("gqa", reader=_or_converted("gqa", general_vqa.read_gqa),
       splits=("testdev_balanced", "val_balanced", "train_balanced"),
       shot_split="train_balanced", family="vqa", prompt=prompts.vqa, metric="exact_match",
       variants=exact_match.VARIANTS[::-1], description="GQA test-dev balanced, exact match"),
  Task("vizwiz", reader=_or_converted("vizwiz", general_vqa.read_vizwiz),
       splits=("val", "test", "train"), shot_split="train",
       description="VizWiz VQA (test: predictions for the server)", **_VQA_EVALAI),
  Task("scienceqa_img", reader=general_vqa.read_scienceqa, splits=("test", "val", "train"),
       prompt=prompts.scienceqa, description="ScienceQA image test, choice by likelihood", **_CHOICE),
  # Text-oriented VQA (Table 5)
  Task("textvqa", reader=_or_converted("textvqa", text_vqa.read_textvqa),
       splits=("val", "test", "train"), shot_split="train",
       description="TextVQA val, VQA accuracy", **_VQA_EVALAI),
  Task("docvqa", reader=_or_converted("docvqa", text_vqa.read_docvqa),
       splits=("val", "test", "train"), shot_split="train",
       family="vqa", prompt=prompts.vqa, metric="anls", variants=anls.VARIANTS, max_new_tokens=100,
       description="DocVQA (paper: test via the server; val scored here), ANLS"),
  Task("chartqa", reader=_or_converted("chartqa", text_vqa.read_chartqa),
       splits=("test", "val", "train"), shot_split="train",
       family="vqa", prompt=prompts.vqa, metric="relaxed_accuracy", variants=relaxed_accuracy.VARIANTS,
       max_new_tokens=100, description="ChartQA test human+augmented, relaxed accuracy"),
  Task("ocrvqa", reader=_or_converted("ocrvqa", text_vqa.read_ocrvqa),
       splits=("test", "val", "train"), shot_split="train",
       max_new_tokens=100, description="OCR-VQA test, exact match", **_EM),
  Task("ai2d", reader=_or_converted("ai2d", text_vqa.read_ai2d),
       splits=("test", "train", "all"), shot_split="train",
       description="AI2D test, exact match", **_EM),
  # Referring expression comprehension (Table 6)
  Task("refcoco", reader=rec.read_refcoco, splits=("val", "testA", "testB", "train"),
       eval_splits=("val", "testA", "testB"), description="RefCOCO, accuracy@IoU0.5", **_REC),
  Task("refcoco+", reader=rec.read_refcoco, splits=("val", "testA", "testB", "train"),
       eval_splits=("val", "testA", "testB"), description="RefCOCO+, accuracy@IoU0.5", **_REC),
  Task("refcocog", reader=rec.read_refcoco, splits=("val", "test", "train"), eval_splits=("val", "test"),
       description="RefCOCOg (umd), accuracy@IoU0.5", **_REC),
  Task("grit", reader=rec.read_grit, splits=("test", "ablation"),
       description="GRIT refexp (test: predictions for the server)", **_REC),
  # Instruction following (Table 7)
  Task("mme", reader=mme.read_mme, splits=("all",), family="mme", prompt=prompts.mme, metric="mme",
       variants=mme_metric.VARIANTS, max_new_tokens=32, chat=True, label_pictures=False,
       description="MME perception + cognition (chat model)"),
  Task("seed_bench", reader=seed_bench.read_seed_bench, splits=("image",), prompt=prompts.seed_bench,
       description="SEED-Bench image dimensions, choice by likelihood", **_CHOICE),
  # Further benchmarks with their official metrics
  Task("mmbench", reader=mmbench.read_mmbench, splits=("dev",), family="choice", prompt=prompts.scienceqa,
       metric="circular_accuracy", variants=("circular",),
       description="MMBench dev, CircularEval over option rotations, choice by likelihood"),
  Task("infographicvqa", reader=text_vqa.read_infographicvqa, splits=("val", "test", "train"),
       shot_split="train", family="vqa", prompt=prompts.vqa, metric="anls", variants=anls.VARIANTS,
       max_new_tokens=100, description="InfographicVQA val, ANLS"),
  Task("pope", reader=general_vqa.read_pope, splits=general_vqa.POPE_SPLITS, eval_splits=general_vqa.POPE_SPLITS,
       family="vqa", prompt=prompts.vqa, metric="pope", variants=pope.VARIANTS,
       description="POPE random/popular/adversarial: accuracy (+precision, recall, F1, yes-ratio)"),
  # The project's synthetic held-out sets (see tasks/synthetic.py for the JSONL schema)
  Task("synth_grounding", reader=synthetic.reader("grounding"), splits=("test", "train"),
       description="synthetic grounding, accuracy@IoU0.5", **_REC),
  Task("synth_ocr", reader=synthetic.reader("ocr"), splits=("test", "train"), shot_split="train",
       max_new_tokens=32, extra_metrics=("anls",), description="synthetic OCR, exact match (+ANLS)", **_EM),
  Task("synth_caption", reader=synthetic.reader("caption"), splits=("test", "train"), shot_split="train",
       description="synthetic captions, CIDEr (training prompt)", **{**_CAPTION, "prompt": prompts.pretrain_caption}),
  Task("synth_vqa", reader=synthetic.reader("vqa"), splits=("test", "train"), shot_split="train",
       description="synthetic VQA, exact match", **_EM),
  # The same sets asked as ChatML turns in the stage-3 wording (text/chat_requests.py): for chat models.
  # Grounding answers "<ref>..</ref><box>..</box>", so it gets room for the phrase before the box.
  Task("synth_grounding_chat", reader=synthetic.reader("grounding"), splits=("test",), chat=True,
       description="synthetic grounding asked in ChatML, accuracy@IoU0.5",
       **{**_REC, "prompt": prompts.chat_grounding, "max_new_tokens": 48}),
  Task("synth_ocr_chat", reader=synthetic.reader("ocr"), splits=("test",), chat=True, max_new_tokens=32,
       extra_metrics=("anls",), description="synthetic OCR asked in ChatML, exact match (+ANLS)",
       **{**_EM, "prompt": prompts.chat_question}),
  Task("synth_caption_chat", reader=synthetic.reader("caption"), splits=("test",), chat=True,
       description="synthetic captions asked in ChatML, CIDEr", **{**_CAPTION, "prompt": prompts.chat_caption}),
  Task("synth_vqa_chat", reader=synthetic.reader("vqa"), splits=("test",), chat=True,
       description="synthetic VQA asked in ChatML, exact match", **{**_EM, "prompt": prompts.chat_question}),
]

TASKS: dict[str, Task] = {t.name: dataclasses.replace(t, files=FILES[t.name]) for t in _ALL}


def get_task(name: str) -> Task:
  if name not in TASKS:
    raise KeyError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
  return TASKS[name]


__all__ = ["TASKS", "Item", "Task", "get_task", "score_items"]
