"""Per-step metrics: JSONL + TensorBoard event files (process 0 only), throughput and MFU.

`WORKDIR/metrics.jsonl` gets one JSON object per step: step, loss, lr (the base schedule), lr/<group>,
grad_norm, target_tokens, tokens_per_s, images_per_s, step_time_s, model_tflops_per_s and mfu (null
when the device's peak is unknown, e.g. on CPU, unless `peak_flops` is set). TensorBoard scalars
go to `WORKDIR/tb/`.
"""

from __future__ import annotations

import json
import math
import pathlib

import jax

from qwenvl_jax.config import ModelConfig
from qwenvl_jax.model import flops as model_flops

PARTS = {"visual": "vit", "adapter": "adapter", "llm": "llm"}


def trainable_parts(frozen: tuple[str, ...]) -> tuple[str, ...]:
  """Model parts with trained weights, for the backward-pass FLOP factors (a part counts as trained
  unless its whole top-level module is frozen)."""
  return tuple(part for module, part in PARTS.items() if module not in frozen)


def model_flops_per_token(cfg: ModelConfig, seq_len: int, image_size: int | None = None,
                          images_per_row: float = 1.0,
                          trainable: tuple[str, ...] = ("vit", "adapter", "llm")) -> float:
  """Training FLOPs (forward + backward, matmuls only) per token of a `seq_len` row.

  One row holds `images_per_row` images through the ViT and adapter and `seq_len` tokens through the
  LLM; its FLOPs are divided over its tokens. The forward counts come from `model.flops` (2 FLOPs per
  multiply-add, attention over the full row, checked against XLA's cost analysis); the backward
  doubles trained parts, adds only input gradients (1x) for a frozen part that has trained parts
  before it, and nothing for a frozen part with nothing trained before it.
  """
  f = model_flops.step_flops(cfg, 1, seq_len, images_per_row, image_size, trainable=trainable)
  return f.train / seq_len


def peak_flops_per_device(override: float = 0.0) -> float | None:
  if override:
    return override
  kind = jax.devices()[0].device_kind
  for name, spec in model_flops.TPU_SPECS.items():
    if kind.lower() == name.lower():
      return spec["peak_flops"]
  return None


class MetricsWriter:
  """Appends step records to metrics.jsonl and TensorBoard (process 0); other processes do nothing."""

  def __init__(self, workdir: str | pathlib.Path, resume_step: int = 0):
    self.enabled = jax.process_index() == 0
    self.path = pathlib.Path(workdir) / "metrics.jsonl"
    self._tb = None
    if not self.enabled:
      return
    if self.path.exists():  # a killed run may have logged steps past its last checkpoint
      keep = [line for line in self.path.read_text().splitlines()
              if line.strip() and json.loads(line)["step"] <= resume_step]
      self.path.write_text("".join(line + "\n" for line in keep))
    from tensorboardX import SummaryWriter
    self._tb = SummaryWriter(str(pathlib.Path(workdir) / "tb"))
    self._file = self.path.open("a")

  def write(self, record: dict):
    if not self.enabled:
      return
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) and k != "loss" else v)
             for k, v in record.items()}
    self._file.write(json.dumps(clean) + "\n")
    self._file.flush()
    step = record["step"]
    for k, v in record.items():
      if k != "step" and isinstance(v, (int, float)) and v is not None and math.isfinite(v):
        self._tb.add_scalar(k, v, step)

  def close(self):
    if self.enabled:
      self._file.close()
      self._tb.close()


def read_metrics(workdir: str | pathlib.Path) -> list[dict]:
  path = pathlib.Path(workdir) / "metrics.jsonl"
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
