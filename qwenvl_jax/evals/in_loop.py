"""Evaluation during training (big_vision style): benchmarks run on the live parameters every N steps.

The stage config names them:

    config.evals = dict(
        ocr=dict(task="synth_ocr", data="data/synth/text_test.jsonl", every=500, limit=200),
        grounding=dict(task="synth_grounding", data="...", every=1000, split="test", batch_size=16),
    )

Per entry: `task` (a registry name, `qwenvl-jax eval --task list`), `data` (as `eval --data`), `every`
(steps; the last step always evaluates too), and optionally `split`, `limit`, `batch_size` (default
8; padded to the mesh's data x fsdp), `variant`, `shots`, `max_new_tokens`, `tokenizer` (default
`config.data.tokenizer`). The loop calls `InLoopEvals(step, graphdef, params, buffers)` each step; on
a due step the model is assembled from the very arrays being trained (no checkpoint written or read),
evaluated with `evals.runner`, and the scalar results come back as `eval/<name>/<metric>` entries of
that step's metrics record (so metrics.jsonl and TensorBoard get them). Predictions go to
WORKDIR/evals/step_<N>/. Each evaluation builds a fresh predictor (its jit caches are per predictor),
so every eval compiles its decoding functions once. Single-process runs (multi-host: not yet).
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from typing import Any, Callable

_KEYS = {"task", "data", "every", "split", "limit", "batch_size", "variant", "shots", "max_new_tokens",
         "tokenizer"}


@dataclasses.dataclass(frozen=True)
class EvalSpec:
  name: str
  task: str
  data: str
  every: int
  split: str | None = None
  limit: int | None = None
  batch_size: int = 8
  variant: str | None = None
  shots: int = 0
  max_new_tokens: int | None = None
  tokenizer: str = ""


def parse_specs(evals, default_tokenizer: str = "") -> list[EvalSpec]:
  """config.evals -> specs; a bad entry fails at startup with its name and key."""
  from qwenvl_jax.evals.tasks import TASKS

  specs = []
  for name, raw in dict(evals or {}).items():
    entry = dict(raw)
    unknown = set(entry) - _KEYS
    if unknown:
      raise ValueError(f"evals.{name}: unknown key(s) {sorted(unknown)}; known: {sorted(_KEYS)}")
    for key in ("task", "data", "every"):
      if not entry.get(key):
        raise ValueError(f"evals.{name}: '{key}' is required")
    if entry["task"] not in TASKS:
      raise ValueError(f"evals.{name}: unknown task {entry['task']!r}")
    if int(entry["every"]) < 1:
      raise ValueError(f"evals.{name}: every must be >= 1")
    entry.setdefault("tokenizer", default_tokenizer)
    specs.append(EvalSpec(name=name, **entry))
  return specs


def _scalars(prefix: str, metrics: dict) -> dict[str, float]:
  """The headline score plus the numeric top-level details (F1, perception, ...)."""
  out = {}
  if metrics.get("score") is not None:
    out[f"{prefix}/{metrics['metric']}"] = float(metrics["score"])
  for k, v in (metrics.get("details") or {}).items():
    if isinstance(v, (int, float)) and not isinstance(v, bool):
      out[f"{prefix}/{k}"] = float(v)
  return out


class InLoopEvals:
  """Callable the training loop runs every step: -> {} or the due evals' scalars."""

  def __init__(self, specs: list[EvalSpec], *, total_steps: int, mesh, workdir, log: Callable = print):
    self.specs, self.total_steps, self.mesh = specs, total_steps, mesh
    self.workdir = pathlib.Path(workdir)
    self.log = log
    self._tokenizers: dict[str, Any] = {}

  def due(self, step: int) -> list[EvalSpec]:
    return [s for s in self.specs if step % s.every == 0 or step == self.total_steps]

  def _tokenizer(self, path: str):
    from qwenvl_jax.text.tokenizer import load_tokenizer
    if not path:
      raise ValueError("in-loop evals need a tokenizer: set evals.<name>.tokenizer or data.tokenizer")
    if path not in self._tokenizers:
      self._tokenizers[path] = load_tokenizer(path)
    return self._tokenizers[path]

  def __call__(self, step: int, graphdef, params, buffers) -> dict[str, float]:
    due = self.due(step)
    if not due:
      return {}
    from flax import nnx

    from qwenvl_jax.evals import runner
    from qwenvl_jax.evals.adapters import from_predictor
    from qwenvl_jax.evals.tasks import get_task
    from qwenvl_jax.infer.api import Predictor

    model = nnx.merge(graphdef, params, buffers)  # the live arrays, not a copy
    out: dict[str, float] = {}
    for spec in due:
      t0 = time.perf_counter()
      task = get_task(spec.task)
      if spec.max_new_tokens and not task.likelihood:
        task = dataclasses.replace(task, max_new_tokens=spec.max_new_tokens,
                                   min_new_tokens=min(task.min_new_tokens, spec.max_new_tokens))
      pred = Predictor(model, self._tokenizer(spec.tokenizer), mesh=self.mesh, batch_size=spec.batch_size)
      predict, score = from_predictor(pred)
      m = runner.evaluate(task, spec.data, predict, out_dir=self.workdir / "evals" / f"step_{step}" / spec.name,
                          shots=spec.shots, limit=spec.limit, batch_size=spec.batch_size, split=spec.split,
                          score_fn=score, variant=spec.variant, progress=False)
      scalars = _scalars(f"eval/{spec.name}", m)
      scalars[f"eval/{spec.name}/seconds"] = time.perf_counter() - t0
      out.update(scalars)
      shown = "n/a" if m["score"] is None else f"{m['score']:.2f}"
      self.log(f"step {step} eval {spec.name} ({spec.task}/{m['split']}): {m['metric']} {shown} n={m['n']}")
    return out


def from_config(config, *, total_steps: int, mesh, workdir, log: Callable = print) -> InLoopEvals | None:
  """The loop's evaluator for `config.evals`, or None when the config names none."""
  evals = config.get("evals") if hasattr(config, "get") else None
  if not evals:
    return None
  data = config.get("data") or {}
  specs = parse_specs(evals, str(data.get("tokenizer", "") or ""))
  return InLoopEvals(specs, total_steps=total_steps, mesh=mesh, workdir=workdir, log=log) if specs else None
