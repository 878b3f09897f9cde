"""Counting skipped samples, so a bad image never kills a run and never disappears uncounted.

Readers call `SkipCounter.add` for every sample they drop; the first few of each reason are logged as
warnings, all of them are counted, and `summary()` is printed at the end of a run. Counters are plain data
(`as_dict`/`merge`) so counts made in worker processes can be sent back and summed in the parent.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading

log = logging.getLogger(__name__)


@dataclasses.dataclass
class SkipCounter:
  """Per-reason counts of skipped samples, with a few example names per reason."""
  warn_first: int = 5
  keep_examples: int = 10
  counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  examples: dict = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    self._lock = threading.Lock()

  def __getstate__(self):  # picklable for worker processes: the lock is recreated, not sent
    state = dict(self.__dict__)
    state.pop("_lock")
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def add(self, reason: str, name: str = "", detail: str = ""):
    with self._lock:
      self.counts[reason] += 1
      n = self.counts[reason]
      ex = self.examples.setdefault(reason, [])
      if len(ex) < self.keep_examples:
        ex.append(name)
    if n <= self.warn_first:
      log.warning("skipping sample %s (%s)%s%s", name, reason, ": " if detail else "", detail)
    elif n == self.warn_first + 1:
      log.warning("further '%s' skips are counted but not logged", reason)

  @property
  def total(self) -> int:
    return sum(self.counts.values())

  def as_dict(self) -> dict:
    return {"counts": dict(self.counts), "examples": {k: list(v) for k, v in self.examples.items()}}

  def merge(self, other: "SkipCounter | dict"):
    d = other.as_dict() if isinstance(other, SkipCounter) else other
    with self._lock:
      self.counts.update(d["counts"])
      for reason, names in d.get("examples", {}).items():
        ex = self.examples.setdefault(reason, [])
        ex.extend(names[:max(0, self.keep_examples - len(ex))])

  def summary(self) -> str:
    if not self.total:
      return "skipped 0 samples"
    parts = ", ".join(f"{r}: {c}" for r, c in sorted(self.counts.items()))
    return f"skipped {self.total} samples ({parts})"
