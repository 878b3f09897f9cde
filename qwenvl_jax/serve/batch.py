"""Offline batch inference over a JSONL file with the serving engine (`qwenvl-jax generate`).

Each input line is a JSON object with an optional "id" and either OpenAI-style "messages" (plus any
of max_tokens / temperature / top_p / seed / stop) or {"images": [paths], "prompt": "..."} (paths
relative to the input file's folder). Answers are appended to the output one JSON line at a time
(written whole, flushed and fsynced), so an interrupted run loses at most the line being written; a
rerun drops a torn last line and skips the ids already answered.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import queue
import sys
from typing import Iterator

from qwenvl_jax.serve.engine import BatchEngine, Request
from qwenvl_jax.serve.messages import APIError, ServeLimits, parse_request


@dataclasses.dataclass
class Job:
  id: str
  line_no: int
  body: dict


class InputError(ValueError):
  """A bad input line; the message names the file and line."""


def read_jobs(path: pathlib.Path) -> Iterator[Job | InputError]:
  """Jobs in file order; bad lines come as InputError values (the run goes on without them)."""
  seen = set()
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f"{path}:{n}"
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        yield InputError(f"{where}: not valid JSON ({e.msg})")
        continue
      if not isinstance(record, dict):
        yield InputError(f"{where}: a line must be a JSON object")
        continue
      job_id = str(record.pop("id", f"line-{n}"))
      if job_id in seen:
        yield InputError(f"{where}: duplicate id {job_id!r}")
        continue
      seen.add(job_id)
      if "messages" not in record:
        if not isinstance(record.get("prompt"), str):
          yield InputError(f"{where}: needs 'messages' or a string 'prompt'")
          continue
        images = record.pop("images", [])
        if not isinstance(images, list) or not all(isinstance(p, str) for p in images):
          yield InputError(f"{where}: 'images' must be a list of paths")
          continue
        parts = [{"type": "image_url",
                  "image_url": {"url": (path.parent / p).resolve().as_uri()}} for p in images]
        record["messages"] = [{"role": "user",
                               "content": parts + [{"type": "text", "text": record.pop("prompt")}]}]
      yield Job(job_id, n, record)


def done_ids(path: pathlib.Path) -> set[str]:
  """Ids already answered; a torn last line (a crash mid-write) is cut off the file first."""
  if not path.exists():
    return set()
  data = path.read_bytes()
  keep = data[:data.rfind(b"\n") + 1]
  if keep != data:  # rewrite without the torn tail: temp file + rename, never in place
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(keep)
    os.replace(tmp, path)
  ids = set()
  for line in keep.decode("utf-8").splitlines():
    if line.strip():
      ids.add(str(json.loads(line)["id"]))
  return ids


def run_batch(predictor, engine: BatchEngine, in_path, out_path, *, defaults: dict,
              model_name: str = "model", window: int = 64, progress: bool = True) -> tuple[int, int]:
  """Answers every job of `in_path` not yet in `out_path` -> (answered now, failed)."""
  in_path, out_path = pathlib.Path(in_path), pathlib.Path(out_path)
  finished = done_ids(out_path)
  jobs, failed = [], 0
  for job in read_jobs(in_path):
    if isinstance(job, InputError):
      print(f"error: {job}", file=sys.stderr)
      failed += 1
    elif job.id not in finished:
      jobs.append(job)
  limits = ServeLimits(image_root=pathlib.Path("/"))  # the caller's own files
  tok = predictor.tokenizer
  done_q: queue.Queue = queue.Queue()
  bar = None
  if progress:
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), unit="req", desc="generate", file=sys.stderr)
  answered, in_flight, it = 0, 0, iter(jobs)
  with open(out_path, "a", encoding="utf-8") as out:
    while True:
      while in_flight < window:
        job = next(it, None)
        if job is None:
          break
        try:
          chat = parse_request({"model": model_name, **defaults, **job.body}, predictor, limits,
                               model_names=[model_name])
        except APIError as e:
          print(f"error: {in_path}:{job.line_no} ({job.id}): {e.message}"
                + (f" [{e.param}]" if e.param else ""), file=sys.stderr)
          failed += 1
          continue
        ids: list[int] = []

        def emit(new, reason, ids=ids, job=job, chat=chat):
          ids.extend(new)
          if reason is not None:
            done_q.put((job, chat, ids, reason))

        engine.submit(Request(chat.ids, chat.images, chat.max_tokens, emit,
                              temperature=chat.temperature, top_p=chat.top_p, seed=chat.seed))
        in_flight += 1
      if in_flight == 0:
        break
      job, chat, ids, reason = done_q.get()
      in_flight -= 1
      if reason.startswith("error"):
        print(f"error: {in_path}:{job.line_no} ({job.id}): {reason}", file=sys.stderr)
        failed += 1
        continue
      text = tok.decode(ids, skip_special=False)
      for s in chat.stop:
        if s in text:
          text, reason = text[:text.find(s)], "stop"
      record = {"id": job.id, "answer": text.strip(), "finish_reason": reason,
                "usage": {"prompt_tokens": len(chat.ids), "completion_tokens": len(ids)}}
      out.write(json.dumps(record, ensure_ascii=False) + "\n")  # one write per line
      out.flush()
      os.fsync(out.fileno())
      answered += 1
      if bar is not None:
        bar.update(1)
  if bar is not None:
    bar.close()
  return answered, failed
