"""grain input pipeline: records -> tokenized, image-preprocessed, fixed-shape batches, resumably.

  source (JSONL / ArrayRecord records)
    -> host shard [i::n] -> seeded global shuffle -> repeat (reshuffled each epoch)
    -> random_map(pick a task, tokenize, decode + preprocess images)     } worker processes
    -> mp_prefetch(num_workers)                                           }
    -> drop and count skipped samples                                     main process
    -> layout: one sample per row (unpacked) or packed rows (stage 2)
    -> batch

Bad samples (corrupt / missing image, too long, malformed markup, no applicable task) are not dropped in
the workers: the sample builder returns a small skip marker and the main process drops and counts it. So
the counts are exact whatever the number of workers, the batches do not depend on `num_workers`, and the
counts are part of the iterator state (a resumed run keeps counting from where it stopped).

Determinism: every random choice comes from the pipeline seed (grain's per-element RNGs), so two
iterators with the same config give identical batches, and `iterator.set_state(saved)` continues with
exactly the next batch (resume with the same `num_workers`: grain's state records the worker layout).

Packing (`layout="packed"`) is `text.packing.pack_samples` (first fit, whole samples) over consecutive
windows of `pack_window` samples; the iterator state is the window's start plus the rows already
emitted, so a resume re-packs the same window identically and skips what was consumed.

Rows have the fields of the training batch contract (`train/batch.py`; `T = seq_len`,
`M = max_images`, `S = image_size`):
  tokens      int32 [T]   padded with <|endoftext|>
  segment_ids int32 [T]   1, 2, .. per sample in the row; 0 = padding
  positions   int32 [T]   restart at 0 in every segment
  loss_mask   bool  [T]   token t is a training target (never the first token of a segment)
  images      uint8 [M, S, S, 3]    the row's images (resized pixels, normalised on the device) in
                                    order of appearance; zeros where unused
  num_images  int32 []    real images in the row (the first ones of `images`)
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import Any, Sequence

import grain
import numpy as np

from qwenvl_jax.data import preprocess, sources, tasks
from qwenvl_jax.data.preprocess import CorruptImageError
from qwenvl_jax.data.skips import SkipCounter

_SKIP = "_skip"


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  paths: tuple[str, ...]
  tokenizer: str  # path given to `text.tokenizer.load_tokenizer`
  format: str = "auto"  # "chatml" (conversations), "pretrain" (raw records via `tasks`), "auto": by record
  # Pretraining tasks to draw from, one example per record visit, uniformly among the record's
  # examples: a task named k times is drawn k times as often.
  tasks: tuple[str, ...] = tuple(tasks.TASKS)
  ocr_max_regions: int = 32
  seq_len: int = 2048
  batch_size: int = 8  # per host
  image_size: int = 448
  n_image_tokens: int = 256
  max_images: int = 1
  seed: int = 0
  shuffle: bool = True
  num_epochs: int | None = None  # None: repeat forever
  num_workers: int = 0
  # Per process: threads running the sample builder and the elements they may run ahead. Each element
  # holds uint8 images (0.6 MB at 448px), so grain's defaults (16 threads, 500 elements) would hold
  # hundreds of megabytes per process.
  read_threads: int = 2
  read_prefetch: int = 16
  worker_buffer: int = 4  # finished elements each worker process may queue
  shard_index: int | None = None  # None: jax.process_index()
  shard_count: int | None = None  # None: jax.process_count()
  drop_remainder: bool = True
  layout: str = "unpacked"  # or "packed" (stage 2: several samples per row)
  pack_window: int = 64  # samples packed together; larger packs tighter, costs memory and latency
  tfds_dir: str | None = None  # data_dir of prepared TFDS datasets named in `paths` as "tfds:NAME:SPLIT"

  def __post_init__(self):
    if isinstance(self.paths, (str, pathlib.Path)):
      object.__setattr__(self, "paths", (str(self.paths),))
    if self.format not in ("auto", "chatml", "pretrain"):
      raise ValueError(f"format must be 'auto', 'chatml' or 'pretrain', got {self.format!r}")
    unknown = set(self.tasks) - set(tasks.TASKS)
    if unknown:
      raise ValueError(f"unknown tasks {sorted(unknown)}; known: {sorted(tasks.TASKS)}")
    if self.layout not in ("unpacked", "packed"):
      raise ValueError(f"layout must be 'unpacked' or 'packed', got {self.layout!r}")
    if self.seq_len < 8 or self.batch_size < 1 or self.max_images < 0 or self.pack_window < 1:
      raise ValueError("seq_len >= 8, batch_size >= 1, max_images >= 0 and pack_window >= 1 are required")


class _ConcatRecords:
  """Several random-access record sources read as one."""

  def __init__(self, parts: Sequence):
    self.parts = list(parts)
    self.starts = np.cumsum([0] + [len(p) for p in self.parts])

  def __len__(self) -> int:
    return int(self.starts[-1])

  def __getitem__(self, i: int):
    k = int(np.searchsorted(self.starts, i, side="right")) - 1
    return self.parts[k][int(i) - int(self.starts[k])]


def open_source(paths: Sequence[str], tfds_dir: str | None = None):
  """A random-access record source: ArrayRecord files, prepared TFDS splits ("tfds:NAME:SPLIT"), or
  JSONL/JSON files read into memory."""
  paths = [str(p) for p in paths]
  if all(p.startswith(TFDS_PREFIX) for p in paths):
    from qwenvl_jax.data.tfds_source import TfdsRecords
    parts = [TfdsRecords(*p[len(TFDS_PREFIX):].split(":", 1), data_dir=tfds_dir or None) for p in paths]
    return parts[0] if len(parts) == 1 else _ConcatRecords(parts)
  if any(p.startswith(TFDS_PREFIX) for p in paths):
    raise ValueError("mixing TFDS and file sources is not supported")
  if all(p.endswith(".array_record") for p in paths):
    source = sources.ArrayRecordSource(paths)
    if not len(source):
      raise sources.SourceError(f"{', '.join(paths)}: no records")
    return source
  if any(p.endswith(".array_record") for p in paths):
    raise ValueError("mixing ArrayRecord and JSONL sources is not supported; pack the JSONL first")
  records = []
  for p in paths:
    n = len(records)
    records.extend(sources.read_jsonl(p))
    if len(records) == n:
      raise sources.SourceError(f"{p}: no records (the file is empty)")
  return records


@functools.lru_cache(maxsize=4)
def _tokenizer(path: str):
  from qwenvl_jax.text.tokenizer import load_tokenizer
  return load_tokenizer(path)


def _skip(reason: str, name: str, detail: str = "") -> dict:
  return {_SKIP: reason, "name": name, "detail": detail}


class SampleBuilder:
  """record, rng -> {"tokens", "loss_mask", "images" [k, S, S, 3]} or a skip marker. Runs in the workers;
  picklable; loads the tokenizer lazily (once per process)."""

  def __init__(self, cfg: PipelineConfig):
    self.cfg = cfg

  def tokenize(self, record: dict, rng: np.random.Generator):
    """The `TokenizedSample` for a record; raises `tasks.TaskNotApplicable` / `MarkupError`."""
    from qwenvl_jax.text import conversation, interface

    cfg, tok = self.cfg, _tokenizer(self.cfg.tokenizer)
    kind = "chatml" if "conversations" in record else "pretrain"
    if cfg.format != "auto" and kind != cfg.format:
      raise tasks.TaskNotApplicable(f"record {record.get('id')} is not in the {cfg.format} format")
    if kind == "chatml":
      return conversation.chatml_from_record(tok, record, n_image_tokens=cfg.n_image_tokens)
    options = tasks.examples(record, cfg.tasks, max_regions=cfg.ocr_max_regions)
    if not options:
      raise tasks.TaskNotApplicable(f"record {record.get('id')}: none of the tasks {cfg.tasks} applies")
    _, prompt, target = options[int(rng.integers(len(options)))]
    return conversation.pretrain_sample(tok, interface.parse_markup(prompt), interface.parse_markup(target),
                                        n_image_tokens=cfg.n_image_tokens)

  def __call__(self, record: dict, rng: np.random.Generator) -> dict:
    from qwenvl_jax.text.interface import MarkupError

    cfg = self.cfg
    name = str(record.get("id", "?"))
    try:
      sample = self.tokenize(record, rng)
    except tasks.TaskNotApplicable as e:
      return _skip("no_task", name, str(e))
    except MarkupError as e:
      return _skip("bad_markup", name, str(e))
    n = len(sample.ids)
    if n > cfg.seq_len:
      return _skip("too_long", name, f"{n} tokens > seq_len {cfg.seq_len}")
    if len(sample.images) > cfg.max_images:
      return _skip("too_many_images", name, f"{len(sample.images)} > max_images {cfg.max_images}")
    try:
      pil = sources.load_images(record)
    except CorruptImageError as e:
      return _skip("corrupt_image", e.name, e.reason)
    if len(pil) != len(sample.images):
      return _skip("image_count_mismatch", name, f"{len(sample.images)} <img> tags, {len(pil)} images")
    images = np.zeros((len(pil), cfg.image_size, cfg.image_size, 3), np.uint8)
    for i, im in enumerate(pil):
      images[i] = preprocess.pixels(im, cfg.image_size)  # normalised on the device (train/batch.py)
    return {"tokens": sample.ids, "loss_mask": sample.loss_mask, "images": images}


# ------------------------------------------------------------------------------------------------
# Layouts (main process): variable-length samples -> fixed-shape rows.


def _to_sample(x: dict):
  from qwenvl_jax.text.conversation import TokenizedSample
  return TokenizedSample(x["tokens"], x["loss_mask"], list(x["images"]))


def _row_dict(row, cfg: PipelineConfig) -> dict:
  images = np.zeros((cfg.max_images, cfg.image_size, cfg.image_size, 3), np.uint8)
  for i, im in enumerate(row.images):
    images[i] = im
  return {"tokens": row.tokens, "segment_ids": row.segment_ids, "positions": row.positions,
          "loss_mask": row.loss_mask, "images": images, "num_images": np.int32(len(row.images))}


class _PadOne:
  """The unpacked layout: one sample per row (`text.packing.pad_samples`)."""

  def __init__(self, cfg: PipelineConfig):
    self.cfg = cfg

  def __call__(self, x: dict) -> dict:
    from qwenvl_jax.text.packing import pad_samples
    (row,), _ = pad_samples([_to_sample(x)], self.cfg.seq_len, tokenizer=_tokenizer(self.cfg.tokenizer),
                            overlong="error")
    return _row_dict(row, self.cfg)


# ------------------------------------------------------------------------------------------------
# Main-process stages with their own iterator state: skip counting and packing.


class NoUsableSamplesError(ValueError):
  """Every sample in a long run was skipped: the data cannot feed this configuration."""


class _CountSkipsIterator(grain.DatasetIterator):
  def __init__(self, parent, counter: SkipCounter, max_consecutive: int):
    super().__init__(parent)
    self._counter = counter
    self._max_consecutive = max_consecutive

  def __next__(self):
    run = 0
    while True:
      x = next(self._parent)
      if isinstance(x, dict) and _SKIP in x:
        self._counter.add(x[_SKIP], x["name"], x["detail"])
        run += 1
        if run >= self._max_consecutive:  # e.g. seq_len below every sample: would spin forever
          raise NoUsableSamplesError(f"the last {run} samples were all skipped ({self._counter.summary()}); "
                                     f"check seq_len, max_images, format and tasks against the data")
        continue
      return x

  def get_state(self):
    return {"parent": self._parent.get_state(), "skips": self._counter.as_dict()}

  def set_state(self, state):
    self._parent.set_state(state["parent"])
    self._counter.counts.clear()
    self._counter.examples.clear()
    self._counter.merge(state["skips"])


class _CountSkips(grain.IterDataset):
  """Drops skip markers, counting them in `counter` (whose counts travel in the iterator state)."""

  def __init__(self, parent, counter: SkipCounter, max_consecutive: int):
    super().__init__(parent)
    self._counter = counter
    self._max_consecutive = max_consecutive

  def __iter__(self):
    return _CountSkipsIterator(self._parent.__iter__(), self._counter, self._max_consecutive)


class _PackIterator(grain.DatasetIterator):
  def __init__(self, parent, cfg: PipelineConfig):
    super().__init__(parent)
    self._cfg = cfg
    self._rows, self._emitted, self._window_start = [], 0, None

  def _fill(self):
    from qwenvl_jax.text.packing import pack_samples

    cfg = self._cfg
    self._window_start = self._parent.get_state()
    samples = []
    for _ in range(cfg.pack_window):
      try:
        samples.append(_to_sample(next(self._parent)))
      except StopIteration:
        break
    if not samples:
      raise StopIteration
    rows, _ = pack_samples(samples, cfg.seq_len, tokenizer=_tokenizer(cfg.tokenizer), overlong="error",
                           max_images_per_row=cfg.max_images)
    self._rows, self._emitted = [_row_dict(r, cfg) for r in rows], 0

  def __next__(self):
    while self._emitted >= len(self._rows):
      self._fill()
    self._emitted += 1
    return self._rows[self._emitted - 1]

  def get_state(self):
    if self._window_start is None or self._emitted >= len(self._rows):
      return {"window_start": self._parent.get_state(), "emitted": 0}
    return {"window_start": self._window_start, "emitted": self._emitted}

  def set_state(self, state):
    self._parent.set_state(state["window_start"])
    self._rows, self._emitted, self._window_start = [], 0, None
    if state["emitted"]:  # re-pack the same window and skip the rows already consumed
      self._fill()
      self._emitted = state["emitted"]


class _Pack(grain.IterDataset):
  """`text.packing.pack_samples` over consecutive windows of `cfg.pack_window` samples."""

  def __init__(self, parent, cfg: PipelineConfig):
    super().__init__(parent)
    self._cfg = cfg

  def __iter__(self):
    return _PackIterator(self._parent.__iter__(), self._cfg)


@dataclasses.dataclass
class Pipeline:
  """The grain dataset and the counter its iterators report skipped samples to."""
  dataset: Any  # grain IterDataset of batches
  skips: SkipCounter
  num_records: int

  def __iter__(self):
    return iter(self.dataset)


def _shard(cfg: PipelineConfig) -> tuple[int, int]:
  if cfg.shard_index is not None and cfg.shard_count is not None:
    return cfg.shard_index, cfg.shard_count
  import jax
  return jax.process_index(), jax.process_count()


def make_pipeline(cfg: PipelineConfig, source=None) -> Pipeline:
  """Builds the pipeline of the module docstring; `source` overrides `cfg.paths` (any sequence of records)."""
  source = open_source(cfg.paths, cfg.tfds_dir) if source is None else source
  index, count = _shard(cfg)
  ds = grain.MapDataset.source(source).seed(cfg.seed)
  ds = ds[index::count]
  shard_records = len(ds)
  if cfg.shuffle:
    ds = ds.shuffle()
  ds = ds.repeat(cfg.num_epochs)
  ds = ds.random_map(SampleBuilder(cfg))
  read = grain.ReadOptions(num_threads=cfg.read_threads, prefetch_buffer_size=cfg.read_prefetch)
  it = ds.to_iter_dataset(read)
  if cfg.num_workers > 0:
    from absl import flags
    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; outside absl.app nobody parsed them
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.num_workers,
                                                     per_worker_buffer_size=cfg.worker_buffer))
  counter = SkipCounter()
  # Two passes over the shard without one usable sample (random task choices aside) mean none will come.
  it = _CountSkips(it, counter, max_consecutive=min(2 * shard_records + 10, 10_000))
  it = _Pack(it, cfg) if cfg.layout == "packed" else it.map(_PadOne(cfg))
  it = it.batch(cfg.batch_size, drop_remainder=cfg.drop_remainder)
  return Pipeline(it, counter, len(source))


# ------------------------------------------------------------------------------------------------
# Training: a stage config's `data` section -> this process's batches in the `train/batch.py` contract.

_SOURCE_SUFFIX = {"jsonl": (".jsonl", ".json"), "array_record": (".array_record",), "tfds": ()}
TFDS_PREFIX = "tfds:"


def _config_error(field: str, msg: str):
  from qwenvl_jax.config import ConfigError
  return ConfigError(f"config field 'data.{field}': {msg}")


def check_tokenizer_fits(tok, model_cfg, tokenizer_path: str):
  """The tokenizer's ids must exist in the model's embedding and its image ids be the model's."""
  if tok.vocab_size > model_cfg.llm.vocab_size:
    raise _config_error("tokenizer", f"{tokenizer_path} has {tok.vocab_size} ids but "
                                     f"model.llm.vocab_size is {model_cfg.llm.vocab_size}")
  wrong = {k: v for k, v in tok.model_config_ids().items() if getattr(model_cfg, k) != v}
  if wrong:
    have = ", ".join(f"model.{k}={getattr(model_cfg, k)}" for k in wrong)
    fix = " ".join(f"--set model.{k}={v}" for k, v in wrong.items())
    raise _config_error("tokenizer", f"{tokenizer_path} puts the image tokens at {wrong} but the model "
                                     f"has {have} (fix the model config, e.g. {fix}, or size the "
                                     f"tokenizer with `qwenvl-jax tokenize --model-vocab`)")


def pipeline_config_for_training(config, process_index: int = 0,
                                 process_count: int = 1) -> PipelineConfig:
  """The `PipelineConfig` of this process for a run config (its typed `data` section, validated by
  `config.run_config_from_dict`), after the checks that need the disk: the source is a record source,
  the files exist, the tokenizer loads and fits the model, the task names are known. Raises
  ConfigError naming the `data.<field>`.

  From the rest of the config: seq_len, rows = batch_size / process_count, the model's image size and
  tokens per image; the seed defaults to the run's.
  """
  from qwenvl_jax.config import ConfigError, run_config_from_dict

  run_cfg = run_config_from_dict(config)
  train_cfg, model_cfg, data = run_cfg.train, run_cfg.model, run_cfg.train.data
  if data.source not in _SOURCE_SUFFIX:
    raise _config_error("source", f"{data.source!r} is not a record source; expected one of "
                                  f"{sorted(_SOURCE_SUFFIX)} (or 'synthetic')")
  paths = data.paths
  if not paths:
    raise _config_error("paths", f"no files given for source {data.source!r} (e.g. --set "
                                 f"\"data.paths=('train.jsonl',)\")")
  if data.source == "tfds":  # paths name prepared datasets: "NAME" or "NAME:SPLIT"
    paths = tuple(TFDS_PREFIX + (p if ":" in p else f"{p}:train") for p in paths)
  for p in paths if data.source != "tfds" else ():
    if not p.endswith(_SOURCE_SUFFIX[data.source]):
      raise _config_error("paths", f"{p} is not a {data.source} file "
                                   f"({' / '.join(_SOURCE_SUFFIX[data.source])})")
    if not pathlib.Path(p).is_file():
      raise _config_error("paths", f"file not found: {p}")
  if not data.tokenizer:
    raise _config_error("tokenizer", "no tokenizer given (a .tiktoken / .model file or a directory "
                                     "holding one)")
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"process {process_index} of {process_count}")
  if train_cfg.batch_size % process_count:
    raise ConfigError(f"config field 'batch_size': {train_cfg.batch_size} is not divisible by "
                      f"{process_count} processes")
  unknown_tasks = sorted(set(data.tasks) - set(tasks.TASKS))
  if unknown_tasks:
    raise _config_error("tasks", f"unknown tasks {unknown_tasks}; known: {sorted(tasks.TASKS)}")
  cfg = PipelineConfig(
      paths=paths, tokenizer=data.tokenizer, format=data.format, tasks=data.tasks or tuple(tasks.TASKS),
      ocr_max_regions=data.ocr_max_regions, seq_len=train_cfg.seq_len,
      batch_size=train_cfg.batch_size // process_count, image_size=model_cfg.vision.image_size,
      n_image_tokens=model_cfg.tokens_per_image, max_images=data.max_images,
      seed=train_cfg.seed if data.seed is None else data.seed, shuffle=data.shuffle,
      num_epochs=data.num_epochs, num_workers=data.num_workers, read_threads=data.read_threads,
      read_prefetch=data.read_prefetch, worker_buffer=data.worker_buffer, shard_index=process_index,
      shard_count=process_count, layout=data.layout, pack_window=data.pack_window,
      tfds_dir=data.tfds_dir or None)
  try:
    tok = _tokenizer(data.tokenizer)
  except (FileNotFoundError, ValueError) as e:
    raise _config_error("tokenizer", str(e)) from None
  check_tokenizer_fits(tok, model_cfg, data.tokenizer)
  return cfg


def to_train_batch(batch: dict) -> dict:
  """A pipeline batch (already in the contract's names) in the dtypes of `train/batch.py`; text-only
  batches (max_images = 0) carry no images."""
  out = {"tokens": np.asarray(batch["tokens"], np.int32), "loss_mask": np.asarray(batch["loss_mask"], bool),
         "segment_ids": np.asarray(batch["segment_ids"], np.int32),
         "positions": np.asarray(batch["positions"], np.int32)}
  if batch["images"].shape[1]:
    out["images"] = np.asarray(batch["images"], np.uint8)
    out["num_images"] = np.asarray(batch["num_images"], np.int32)
  return out


class TrainIterator:
  """This process's training batches; `get_state()` is JSON (stored with each checkpoint) and
  `set_state(saved)` continues with exactly the batch after the one it was taken at."""

  def __init__(self, pipeline: Pipeline):
    self.pipeline = pipeline
    self._it = iter(pipeline.dataset.map(to_train_batch))

  @property
  def skips(self) -> SkipCounter:
    """Samples dropped so far (too long, corrupt image, ...), counted exactly across resumes."""
    return self.pipeline.skips

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    return next(self._it)

  def get_state(self):
    return self._it.get_state()

  def set_state(self, state):
    self._it.set_state(state)


def make_train_iterator(config, process_index: int, process_count: int) -> TrainIterator:
  """The batches of process `process_index` of `process_count` for a stage config whose `data.source`
  is a record source (`train.loop.make_iterator` calls this). Each process reads a disjoint shard
  of the records (record i goes to process i % process_count) and yields batch_size / process_count
  rows per step."""
  cfg = pipeline_config_for_training(config, process_index, process_count)
  try:
    return TrainIterator(make_pipeline(cfg))
  except FileNotFoundError as e:  # a TFDS dataset that is not prepared (files were checked above)
    raise _config_error("paths", str(e)) from None
