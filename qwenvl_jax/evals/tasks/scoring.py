"""Task-level scoring: items + outputs (id -> text) -> MetricResult, by the task's metric and variant."""

from __future__ import annotations

import collections

from qwenvl_jax.evals.metrics import anls, cider, exact_match, grounding, mme, multiple_choice, pope
from qwenvl_jax.evals.metrics import relaxed_accuracy, vqa_accuracy
from qwenvl_jax.evals.metrics.base import MetricResult, check_variant
from qwenvl_jax.evals.tasks.base import Item, Task

GROUND_TRUTH = {"caption": "captions", "vqa": "answers", "rec": "box", "choice": "answer", "mme": "answer"}


def _java_ptb(texts: dict[str, list[str]]) -> dict[str, list[str]]:
  """pycocoevalcap's Java PTB tokenizer (the `coco-java` CIDEr variant); needs Java + pycocoevalcap."""
  from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
  return PTBTokenizer().tokenize({k: [{"caption": t} for t in v] for k, v in texts.items()})


def _cider(ids, preds, items, variant) -> MetricResult:
  cands = dict(zip(ids, preds))
  refs = {i: it["captions"] for i, it in zip(ids, items)}
  if variant == "coco-java":
    cands = {k: v[0] for k, v in _java_ptb({k: [v] for k, v in cands.items()}).items()}
    refs = _java_ptb(refs)
    res = cider.cider(cands, refs, tokenize=False)
    res.details["tokenizer"] = "java-ptb (pycocoevalcap)"
  else:
    res = cider.cider(cands, refs)
  res.variant = variant
  return res


def _relaxed(preds, items, variant) -> MetricResult:
  by_subset = collections.defaultdict(lambda: ([], []))
  for p, it in zip(preds, items):
    by_subset[it.get("subset", "all")][0].append(p)
    by_subset[it.get("subset", "all")][1].append(it["answers"])
  subsets = {k: relaxed_accuracy.relaxed_accuracy(p, a, variant).score for k, (p, a) in by_subset.items()}
  pooled = relaxed_accuracy.relaxed_accuracy(preds, [it["answers"] for it in items], variant)
  # ChartQA is reported as the mean of its human and augmented test sets.
  score = sum(subsets.values()) / len(subsets)
  return MetricResult("relaxed_accuracy", variant, score, len(preds),
                      {"subsets": subsets, "pooled": pooled.score, "aggregate": "mean over subsets"})


def _choice(preds, items) -> MetricResult:
  res = multiple_choice.choice_accuracy(preds, [it["answer"] for it in items])
  per_cat = collections.defaultdict(list)
  for p, it in zip(preds, items):
    per_cat[str(it.get("category"))].append(float(p.strip().upper() == it["answer"]))
  if len(per_cat) > 1:
    res.details["categories"] = {k: 100 * sum(v) / len(v) for k, v in sorted(per_cat.items())}
  return res


def score_items(task: Task, items: list[Item], outputs: dict[str, str], variant: str | None = None) -> MetricResult:
  """Scores the items that have an output; the caller reports how many had none."""
  variant = check_variant(variant, task.variants, task.metric)
  items = [it for it in items if str(it["id"]) in outputs]
  ids = [str(it["id"]) for it in items]
  preds = [outputs[i] for i in ids]
  gt_key = GROUND_TRUTH[task.family]
  if any(it.get(gt_key) is None for it in items):
    return MetricResult(task.metric, variant, None, len(items),
                        {"note": "this split has no public ground truth: predictions only"})
  answers = [it.get("answers") for it in items]
  m = task.metric
  if m == "cider":
    res = _cider(ids, preds, items, variant)
  elif m == "vqa_accuracy":
    res = vqa_accuracy.vqa_accuracy(preds, answers, task.metric_variant(variant))
    if task.metric_variant(variant) != variant:
      res.details["metric_variant"] = task.metric_variant(variant)
      res.variant = variant
  elif m == "exact_match":
    res = exact_match.exact_match_accuracy(preds, answers, variant)
  elif m == "anls":
    res = anls.anls(preds, answers)
  elif m == "relaxed_accuracy":
    res = _relaxed(preds, items, variant)
  elif m == "grounding_accuracy":
    sizes = [(it["width"], it["height"]) for it in items]
    res = grounding.grounding_accuracy(preds, [it["box"] for it in items], sizes)
  elif m == "choice_accuracy":
    res = _choice(preds, items)
  elif m == "circular_accuracy":
    res = multiple_choice.circular_accuracy([(it["group"], p, it["answer"]) for p, it in zip(preds, items)])
  elif m == "pope":
    res = pope.pope_scores(preds, [it["answers"][0] for it in items])
  elif m == "mme":
    res = mme.mme_scores((it["subtask"], it["image_name"], p, it["answer"]) for p, it in zip(preds, items))
  else:
    raise ValueError(f"task {task.name}: unknown metric {m!r}")
  if "anls" in task.extra_metrics:
    res.details["anls"] = anls.anls(preds, answers).score
  return res
