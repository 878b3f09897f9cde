"""Model parameters in Orbax files: save / load whole models, read arrays, stream writes.

The directory layouts (a checkpoint dir, a training workdir) and how a path resolves to one are in
`checkpoint.py`; `load_checkpoint` accepts anything `checkpoint.resolve_checkpoint` does (a
workdir: the latest step).
Restores go straight onto the mesh shardings from `sharding.param_shardings` (no host copy), so a
checkpoint saved on one mesh restores on any other.

Streaming saves (`save_lazy_params`): leaves are `LazyArray`s whose blocks are produced one at a
time while Orbax writes, so a conversion holds one layer slice in memory, not the model. This
uses a small NumpyHandler subclass (serialised writes, slice by slice); stacked arrays are chunked
per layer on disk so `ParamReader` can read them back one layer at a time.
"""

from __future__ import annotations

import json
import pathlib
from typing import Callable, Iterator, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts
from etils import epath
from flax import nnx

from qwenvl_jax.ckpt import hf_layout
from qwenvl_jax.ckpt.atomic import atomic_directory
from qwenvl_jax.ckpt.checkpoint import (PARAMS, CheckpointError, CheckpointRef, copy_tokenizer,
                                        flatten_dict, read_model_config, resolve_checkpoint,
                                        unflatten_dict, write_model_config)
from qwenvl_jax.config import ModelConfig

CHUNK_BYTES = 256 << 20  # cap on one on-disk chunk


# --------------------------------------------------------------------------------------------
# Metadata and slice reads.

def param_metadata(params_dir) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """Dotted name -> (shape, dtype) of every array in an Orbax PyTree checkpoint (no data read)."""
  with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as ckptr:
    md = ckptr.metadata(epath.Path(params_dir))
  tree = getattr(md, "item_metadata", md)
  tree = getattr(tree, "tree", tree)
  return {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in flatten_dict(tree).items()}


class ParamReader:
  """Reads arrays (or one layer of a stacked array) straight from the Orbax files via TensorStore."""

  def __init__(self, params_dir):
    self.params_dir = pathlib.Path(params_dir)
    self.meta = param_metadata(self.params_dir)
    md = json.loads((self.params_dir / "_METADATA").read_text())
    self._use_zarr3 = bool(md.get("use_zarr3", False))
    self._ocdbt = ocp.type_handlers.is_ocdbt_checkpoint(epath.Path(self.params_dir))
    self._ctx = ocp.type_handlers.get_ts_context(use_ocdbt=self._ocdbt)
    self._open: dict[str, ts.TensorStore] = {}

  def _store(self, name: str):
    if name not in self._open:
      if name not in self.meta:
        raise KeyError(f"{name} is not in the checkpoint at {self.params_dir}")
      info = ocp.type_handlers.ParamInfo(name=name, parent_dir=epath.Path(self.params_dir),
                                         is_ocdbt_checkpoint=self._ocdbt, use_zarr3=self._use_zarr3)
      spec = ocp.type_handlers.get_json_tspec_read(info, use_ocdbt=self._ocdbt)
      self._open[name] = ts.open(spec, open=True, context=self._ctx).result()
    return self._open[name]

  def chunk_shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._store(name).chunk_layout.read_chunk.shape)

  def read(self, name: str, index=None) -> np.ndarray:
    """The array, or `array[index]` (an int picks one layer of a stacked array)."""
    t = self._store(name)
    return np.asarray((t if index is None else t[index]).read().result())


# --------------------------------------------------------------------------------------------
# Streaming (lazy) saves.

class LazyArray:
  """An array written block by block while Orbax saves it.

  `pieces(chunk_shape)` yields (index, ndarray) pairs covering the array; it receives the on-disk
  chunk shape so blocks can cover whole chunks (each chunk is then written exactly once).
  `chunk_bytes` caps the on-disk chunk size (Orbax then splits the largest dims: the vocab rows
  of embed / lm_head); `chunk_axis=0` in addition makes every chunk a single layer of a stacked
  array. (Orbax reduces a prioritised axis all the way to 1, so it must only be used for layers:
  1-row chunks of an embedding mean one OCDBT commit per row.)
  """

  def __init__(self, shape, dtype, pieces: Callable[[tuple], Iterator[tuple[tuple, np.ndarray]]],
               *, chunk_axis: int | None = None, chunk_bytes: int | None = None):
    self.shape = tuple(int(d) for d in shape)
    self.dtype = np.dtype(dtype)
    self.ndim = len(self.shape)
    self.size = int(np.prod(self.shape))
    self.chunk_axis, self.chunk_bytes = chunk_axis, chunk_bytes
    self._pieces = pieces

  def pieces(self, chunk_shape: tuple[int, ...]):
    return self._pieces(tuple(chunk_shape))

  def save_args(self) -> ocp.SaveArgs:
    if self.chunk_axis is not None:
      return ocp.SaveArgs(chunk_byte_size=self.chunk_bytes, shard_axes=(self.chunk_axis,))
    if self.chunk_bytes is not None:
      return ocp.SaveArgs(chunk_byte_size=self.chunk_bytes)
    if self.size * self.dtype.itemsize > CHUNK_BYTES:
      return ocp.SaveArgs(chunk_byte_size=CHUNK_BYTES)
    return ocp.SaveArgs()


class _LazyHandler(ocp.type_handlers.NumpyHandler):
  """Writes LazyArrays one block at a time, one array at a time (bounded host memory).

  Orbax gathers one write coroutine per array; this one blocks its (background) event loop until
  the array is written, so the coroutines run strictly one after another and an exception in one
  leaves no others half-way.
  """

  def __init__(self):
    super().__init__(deepcopy_host_arrays=False)
    self._failed = False

  async def _open_and_write(self, value, tspec, ts_context):
    if self._failed:  # an earlier array failed: the save is lost, do no more work
      return
    try:
      t = ts.open(ts.Spec(tspec), create=True, open=True, context=ts_context).result()
      for index, block in value.pieces(t.chunk_layout.write_chunk.shape):
        block = np.asarray(block, dtype=value.dtype)
        t[index].write(block, can_reference_source_data_indefinitely=True).result()
        del block
    except BaseException:
      self._failed = True
      raise


def save_lazy_params(params_dir, flat: Mapping[str, LazyArray]):
  """Writes {dotted name: LazyArray} as an Orbax PyTree checkpoint (the nested pure dict)."""
  tree = unflatten_dict(flat)
  registry = ocp.type_handlers.create_type_handler_registry((LazyArray, _LazyHandler()))
  save_args = jax.tree.map(lambda leaf: leaf.save_args(), tree)
  with ocp.Checkpointer(ocp.PyTreeCheckpointHandler(type_handler_registry=registry)) as ckptr:
    ckptr.save(epath.Path(params_dir), args=ocp.args.PyTreeSave(tree, save_args=save_args))


# --------------------------------------------------------------------------------------------
# Save / load of real models.

def _pure_dict(model_or_state) -> dict:
  if isinstance(model_or_state, nnx.Module):
    return nnx.state(model_or_state).to_pure_dict()
  if isinstance(model_or_state, nnx.State):
    return model_or_state.to_pure_dict()
  return dict(model_or_state)


def save_checkpoint(dst_dir, model_or_state, model_cfg: ModelConfig, tokenizer_file=None,
                    overwrite: bool = False) -> pathlib.Path:
  """Writes `dst_dir` atomically from a QwenVL, its nnx.State or the pure dict (sharded or not)."""
  pure = _pure_dict(model_or_state)
  flat = flatten_dict(pure)
  hf_layout.check_tensors({k: tuple(v.shape) for k, v in flat.items()}, model_cfg, side="ours",
                          where="model state")
  dst_dir = pathlib.Path(dst_dir)
  with atomic_directory(dst_dir, overwrite=overwrite) as tmp:
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as ckptr:
      ckptr.save(epath.Path(tmp / PARAMS), args=ocp.args.PyTreeSave(pure))
    write_model_config(tmp, model_cfg)
    if tokenizer_file is not None:
      copy_tokenizer(tokenizer_file, tmp)
  return dst_dir


def check_checkpoint(ref: CheckpointRef, cfg: ModelConfig):
  """Raises CheckpointError naming missing / unexpected keys, shapes or the disagreeing config field."""
  meta = param_metadata(ref.params_dir)
  try:
    hf_layout.check_tensors({k: s for k, (s, _) in meta.items()}, cfg, side="ours",
                            where=f"checkpoint {ref.params_dir}")
  except hf_layout.LayoutError as e:
    raise CheckpointError(f"{e} (config: {ref.config_path})") from None


def load_checkpoint(ckpt_dir, mesh: jax.sharding.Mesh | None = None, rules=None):
  """-> (QwenVL, ModelConfig, tokenizer path or None), parameters restored onto `mesh`.

  Without a mesh everything lands on the first device.
  """
  from qwenvl_jax.model.qwenvl import QwenVL
  from qwenvl_jax.sharding import abstract_state

  ref = resolve_checkpoint(ckpt_dir)
  cfg = read_model_config(ref)
  check_checkpoint(ref, cfg)
  graphdef, abs_state = abstract_state(lambda: QwenVL(cfg, rngs=nnx.Rngs(0)), mesh, rules)
  target = abs_state.to_pure_dict()
  if mesh is None:
    single = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=single), target)
  restore_args = ocp.checkpoint_utils.construct_restore_args(target)
  with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as ckptr:
    restored = ckptr.restore(epath.Path(ref.params_dir),
                             args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args))
  nnx.replace_by_pure_dict(abs_state, restored)
  return nnx.merge(graphdef, abs_state), cfg, ref.tokenizer_path


__all__ = ["save_checkpoint", "load_checkpoint", "check_checkpoint", "param_metadata", "ParamReader",
           "LazyArray", "save_lazy_params"]
