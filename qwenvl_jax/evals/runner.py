"""Runs a task through any model and scores it: the plain-callable seam between evals and the model.

The model side provides
  predict_fn(requests: list[dict]) -> list[str]         generation, one output per request, where a
      request is {"id", "segments": [{"image": path} | {"text": str}, ...], "max_new_tokens",
      "min_new_tokens", "chat": bool [, "label_pictures": bool]}; decode greedily, skip special tokens
      (the runner strips). A chat request is one fresh ChatML user turn; with label_pictures False its
      images are bare `<img>..</img>` spans (MME's released query), else "Picture N: " labelled.
  score_fn(requests: list[dict]) -> list[list[float]]   likelihood tasks (ScienceQA-Img, SEED-Bench),
      a request is {"id", "segments", "options": [" A", " B", ...]}; return per option the mean
      cross-entropy of the option's tokens appended to the prompt.
Segments are the prompt in order; an image segment stands for `<img>path</img>` (never parse paths out
of text). Batches are at most `batch_size`; spreading a batch over devices is the model side's job.

`evaluate` writes {out_dir}/{task}_{split}_{k}shot.predictions.jsonl batch by batch and the metrics next
to it. It is resumable: ids already in the JSONL are skipped, items run in the reader's order and
few-shot examples depend only on (seed, query id), so an interrupted and resumed run ends with the same
predictions file and metrics as an uninterrupted one. A sidecar .config.json refuses to mix runs with
different settings in one file.
"""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Callable

from qwenvl_jax.evals import predictions as P
from qwenvl_jax.evals.metrics.multiple_choice import choose_letter, option_targets
from qwenvl_jax.evals.tasks import TASKS, Task, get_task, prompts, score_items
from qwenvl_jax.evals.tasks.scoring import GROUND_TRUTH

PredictFn = Callable[[list[dict]], list[str]]
ScoreFn = Callable[[list[dict]], list[list[float]]]


def _task(task) -> Task:
  return task if isinstance(task, Task) else get_task(task)


def shot_pool(task: Task, data_path, shot_data_path=None) -> list[dict]:
  if task.shot_split is None:
    raise ValueError(f"task {task.name} has no few-shot setting (the paper evaluates it zero-shot)")
  pool = task.read(shot_data_path or data_path, task.shot_split)
  return [it for it in pool if it.get("captions") or prompts.shot_answer(it)]


def build_requests(task: Task, items: list[dict], shots: int = 0, pool: list[dict] | None = None,
                   seed: int = 0) -> list[dict]:
  """The requests handed to predict_fn / score_fn, in item order."""
  if shots and task.likelihood:
    raise ValueError(f"task {task.name}: few-shot is not offered for likelihood scoring")
  out = []
  for it in items:
    segs = prompts.with_shots(task.prompt, it, prompts.pick_shots(pool or [], shots, seed, it["id"]), seed) \
      if shots else prompts.merge_text(task.prompt(it))
    req = {"id": it["id"], "segments": segs}
    if task.likelihood:
      req["options"] = option_targets(len(it["choices"]))
    else:
      req.update(max_new_tokens=task.max_new_tokens, min_new_tokens=task.min_new_tokens, chat=task.chat)
      if task.chat:
        req["label_pictures"] = task.label_pictures
    out.append(req)
  return out


def output_stem(task: Task, split: str, shots: int, shard=(0, 1)) -> str:
  stem = f"{task.name}_{split}_{shots}shot"
  if shard[1] > 1:
    stem += f"_shard{shard[0]}of{shard[1]}"
  return stem


def _check_config(path: pathlib.Path, config: dict):
  if path.exists():
    old = json.loads(path.read_text())
    if old != config:
      raise ValueError(f"{path.parent} holds predictions made with other settings ({old}); "
                       "use another output folder or remove them")
  else:
    P.write_json_atomic(path, config)


def references(task: Task, item: dict):
  """The item's ground truth as its metric reads it (None on splits without public answers)."""
  return item.get(GROUND_TRUTH[task.family])


def _with_samples(task: Task, records: list[dict], batch: list[dict], items: list[dict]) -> list[dict]:
  """--log-samples: each line also holds the prompt as the released scripts write it and the references."""
  return [{**rec, "prompt": prompts.render(r["segments"]), "references": references(task, it)}
          for rec, r, it in zip(records, batch, items)]


def _run_batch(task: Task, batch: list[dict], predict_fn, score_fn) -> list[dict]:
  if task.likelihood:
    if score_fn is None:
      raise ValueError(f"task {task.name} is scored by likelihood: pass score_fn")
    losses = score_fn(batch)
    if len(losses) != len(batch):
      raise ValueError(f"score_fn returned {len(losses)} results for {len(batch)} requests")
    return [{"question_id": r["id"], "answer": choose_letter(l), "losses": [float(x) for x in l]}
            for r, l in zip(batch, losses)]
  if predict_fn is None:
    raise ValueError(f"task {task.name} needs predict_fn")
  texts = predict_fn(batch)
  if len(texts) != len(batch):
    raise ValueError(f"predict_fn returned {len(texts)} outputs for {len(batch)} requests")
  if not all(isinstance(t, str) for t in texts):
    raise TypeError("predict_fn must return strings")
  return [{task.id_key: r["id"], task.output_key: t.strip()} for r, t in zip(batch, texts)]


def evaluate(task, data_path, predict_fn: PredictFn | None = None, out_dir="eval_out", shots: int = 0,
             limit: int | None = None, batch_size: int = 8, *, split: str | None = None,
             score_fn: ScoreFn | None = None, variant: str | None = None, seed: int = 0,
             shot_data_path=None, shard: tuple[int, int] = (0, 1), progress: bool = True,
             log_samples: bool = False) -> dict:
  """Predicts what is missing from the predictions file, then scores. Returns the metrics dict
  (without a score when `shard` splits the run: score the shard files together with
  `score_predictions`). `log_samples`: prediction lines also carry "prompt" and "references"."""
  from tqdm import tqdm

  task = _task(task)
  split = split or task.default_split
  if batch_size < 1:
    raise ValueError("batch_size must be at least 1")
  items = task.read(data_path, split)
  if limit is not None:
    items = items[:limit]
  index, count = shard
  items = items[index::count]
  pool = shot_pool(task, data_path, shot_data_path) if shots else None

  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  stem = output_stem(task, split, shots, shard)
  pred_path = out_dir / f"{stem}.predictions.jsonl"
  config = {"task": task.name, "split": split, "shots": shots, "seed": seed,
            "shot_data": str(shot_data_path) if shot_data_path else None}
  registered = TASKS.get(task.name)
  if registered is not None and not task.likelihood and task.max_new_tokens != registered.max_new_tokens:
    config["max_new_tokens"] = task.max_new_tokens  # recorded only when overridden: old runs still resume
  _check_config(out_dir / f"{stem}.config.json", config)
  P.repair(pred_path)
  done = set(P.outputs_by_id(P.read_records(pred_path), task.id_key, task.output_key))
  todo = [it for it in items if str(it["id"]) not in done]

  bar = tqdm(total=len(items), initial=len(items) - len(todo), desc=f"{task.name}/{split}",
             disable=not progress, file=sys.stderr)
  with P.Writer(pred_path) as writer:
    for start in range(0, len(todo), batch_size):
      chunk = todo[start:start + batch_size]
      batch = build_requests(task, chunk, shots, pool, seed)
      records = _run_batch(task, batch, predict_fn, score_fn)
      writer.write(_with_samples(task, records, batch, chunk) if log_samples else records)
      bar.update(len(batch))
  bar.close()

  if count > 1:
    return {"task": task.name, "split": split, "shots": shots, "predictions": str(pred_path),
            "shard": list(shard), "score": None}
  metrics = _score(task, items, [pred_path], split, variant)
  metrics.update(shots=shots, seed=seed)
  P.write_json_atomic(out_dir / f"{stem}.metrics.json", metrics)
  return metrics


def _score(task: Task, items: list[dict], files, split: str, variant: str | None) -> dict:
  outputs = {}
  for f in files:
    outputs.update(P.outputs_by_id(P.read_records(f), task.id_key, task.output_key))
  known = {str(it["id"]) for it in items}
  result = score_items(task, items, outputs, variant)
  n_missing = len(known - set(outputs))
  if n_missing:
    print(f"warning: {task.name}/{split}: {n_missing} of {len(items)} items have no prediction; "
          "scored on the rest", file=sys.stderr)
  return {"task": task.name, "split": split, **result.to_dict(), "n_missing": n_missing,
          "n_unknown": len(set(outputs) - known), "predictions": [str(f) for f in files]}


def score_predictions(task, data_path, predictions_file, *, split: str | None = None,
                      variant: str | None = None, limit: int | None = None) -> dict:
  """Metrics of an existing predictions JSONL (or a list of shard files), no model involved."""
  task = _task(task)
  split = split or task.default_split
  items = task.read(data_path, split)
  if limit is not None:
    items = items[:limit]
  files = predictions_file if isinstance(predictions_file, (list, tuple)) else [predictions_file]
  for f in files:
    if not pathlib.Path(f).is_file():
      raise FileNotFoundError(f"predictions file {f} does not exist")
  return _score(task, items, files, split, variant)
