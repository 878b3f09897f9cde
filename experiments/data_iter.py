"""Stage config -> the grain pipeline's batches in the train loop's contract (experiments only).

A stop-gap for the runs of issue 11: `qwenvl_jax.data.pipeline.make_train_iterator` (being written
elsewhere) is the real entry point; this adapter maps the pipeline's rows
(ids, image_valid, ...) onto `train/batch.py`'s contract (tokens, num_images, ...) so the experiments
can call `train.loop.train(config, workdir, iterator=...)` in-process until then.
"""

from __future__ import annotations

import numpy as np

from qwenvl_jax.data import pipeline


def data_config(config) -> pipeline.DataConfig:
  data = dict(config.data)
  fields = {f for f in pipeline.DataConfig.__dataclass_fields__}
  kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in fields}
  return pipeline.DataConfig(**{
      **kwargs, "paths": tuple(data["paths"]), "seq_len": int(config.seq_len),
      "batch_size": int(config.batch_size), "image_size": int(config.model.vision.image_size),
      "n_image_tokens": int(config.model.adapter.n_queries), "seed": int(config.seed),
      "shard_index": 0, "shard_count": 1})


class ContractIterator:
  """Wraps a grain iterator of pipeline batches; renames fields, keeps get_state / set_state."""

  def __init__(self, grain_iterator):
    self._it = grain_iterator

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    b = next(self._it)
    return {"tokens": np.asarray(b["ids"], np.int32), "loss_mask": np.asarray(b["loss_mask"], bool),
            "segment_ids": np.asarray(b["segment_ids"], np.int32),
            "positions": np.asarray(b["positions"], np.int32),
            "images": np.asarray(b["images"], np.float32),
            "num_images": np.asarray(b["image_valid"], bool).sum(-1).astype(np.int32)}

  def get_state(self):
    return self._it.get_state()

  def set_state(self, state):
    self._it.set_state(state)


def make_iterator(config) -> ContractIterator:
  pipe = pipeline.make_pipeline(data_config(config))
  return ContractIterator(iter(pipe.dataset))
