"""LoRA / Q-LoRA fine-tuning runs (the `lora` config section and the model: ckpt/lora_run.py).

Everything but the LoRA factors and `modules_to_save` is frozen: those leaves are labelled frozen in
the optimizer (no moments, no gradients computed: `train/step.py` differentiates only the trained
leaves); a quantised base is not an `nnx.Param` at all and travels with the buffers. The run's
workdir gets `finetune.json` (this section) so chat / eval / convert rebuild the same model.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil

import jax
from flax import nnx

from qwenvl_jax.ckpt.lora_run import (FINETUNE_FILE, LoRAConfig, load_finetuned,
                                      save_paths, transform)
from qwenvl_jax.config import ConfigError, ModelConfig
from qwenvl_jax.model.qwenvl import QwenVL


def frozen_paths(params: dict, cfg: LoRAConfig) -> tuple[str, ...]:
  """Every parameter path except the LoRA factors and modules_to_save (the optimizer's `frozen`)."""
  from qwenvl_jax.train.optim import path_str

  keep = set(save_paths(cfg))
  out = []
  for path, _ in jax.tree_util.tree_leaves_with_path(params):
    p = path_str(path)
    if p.rsplit(".", 1)[-1] in ("lora_a", "lora_b") or p in keep:
      continue
    out.append(p)
  return tuple(out)


def base_params(source: str, model_cfg: ModelConfig, mesh, cfg: LoRAConfig, seed: int,
                log=print):
  """The fine-tuned model from a base checkpoint (`source`) and optionally a PEFT adapter
  (`cfg.init`): loaded sharded, quantised, LoRA added, adapter tensors loaded."""
  from qwenvl_jax.ckpt import peft
  from qwenvl_jax.sharding import abstract_state, shard_model
  from qwenvl_jax.ckpt import checkpoint as ckpt_lib

  graphdef, abs_state = abstract_state(lambda: QwenVL(model_cfg, rngs=nnx.Rngs(0)), mesh)
  full = ckpt_lib.load_params(source, abs_state.to_pure_dict(), model_cfg, log=log)
  state = nnx.state(nnx.merge(graphdef, abs_state))
  state.replace_by_pure_dict(full)
  model = nnx.merge(graphdef, state)
  transform(model, cfg, seed)
  if cfg.init:
    adapter = peft.read_adapter(cfg.init)
    if adapter.rank != cfg.rank or tuple(adapter.targets) != tuple(cfg.targets):
      raise ConfigError(f"lora.init {cfg.init}: adapter has r={adapter.rank} targets "
                        f"{list(adapter.targets)}; the config has r={cfg.rank} {list(cfg.targets)}")
    peft.load_arrays(model, peft.adapter_to_ours(adapter, model_cfg, cfg.init))
    log(f"loaded LoRA adapter {cfg.init}")
  return shard_model(model, mesh)


def write_settings(workdir, cfg: LoRAConfig) -> None:
  if jax.process_index() == 0:
    (pathlib.Path(workdir) / FINETUNE_FILE).write_text(json.dumps(dataclasses.asdict(cfg), indent=2))


def _refuse_existing(dst, overwrite: bool) -> None:
  """Refuses an existing destination before the run is loaded (minutes for a 7B run); the
  atomic write checks again when it starts."""
  if pathlib.Path(dst).exists() and not overwrite:
    raise FileExistsError(f"destination {dst} already exists (use overwrite / --overwrite to replace it)")


def _check_destination(run_dir, dst, overwrite: bool) -> None:
  """`dst` must not be, hold or lie inside the run (its workdir when `run_dir` is a step inside it)."""
  from qwenvl_jax.ckpt.atomic import check_disjoint
  from qwenvl_jax.ckpt.checkpoint import resolve_checkpoint

  check_disjoint(dst, run_dir)
  check_disjoint(dst, resolve_checkpoint(run_dir).root)
  _refuse_existing(dst, overwrite)


def write_merged_checkpoint(run_dir, dst, overwrite: bool = False,
                            tokenizer_file=None) -> pathlib.Path:
  """A LoRA run's latest step with LoRA merged into the kernels, as a plain checkpoint folder
  (params/ + model_config.json + tokenizer/: `tokenizer_file`, else the run's) that `convert --to hf`
  and chat / eval read. Written atomically (orbax_io.save_checkpoint): `dst` appears only when complete."""
  from qwenvl_jax.ckpt.orbax_io import save_checkpoint

  _check_destination(run_dir, dst, overwrite)
  model, model_cfg, _, tokenizer = load_finetuned(run_dir, merge=True)
  return save_checkpoint(dst, model, model_cfg, tokenizer_file=tokenizer_file or tokenizer,
                         overwrite=overwrite)


def write_merged_hf(run_dir, dst, *, overwrite: bool = False, tokenizer_file=None,
                    **hf_options) -> pathlib.Path:
  """A LoRA run merged into full weights in the released HF layout (`convert --to hf --merge-lora`;
  `hf_options` as ckpt.convert.convert_orbax_to_hf's dtype / shard_size / fmt / progress).

  The merged Orbax checkpoint is an intermediate inside the one temporary folder of `dst`, so an
  interrupted export leaves only that folder (removed by the next write into `dst`)."""
  from qwenvl_jax.ckpt.atomic import atomic_directory, check_disjoint
  from qwenvl_jax.ckpt.convert import convert_orbax_to_hf

  check_disjoint(dst, tokenizer_file, what="--dst")
  _check_destination(run_dir, dst, overwrite)
  with atomic_directory(dst, overwrite=overwrite) as tmp:
    merged = write_merged_checkpoint(run_dir, tmp / ".merged", tokenizer_file=tokenizer_file)
    hf = convert_orbax_to_hf(merged, tmp / ".hf", **hf_options)
    shutil.rmtree(merged)
    for f in hf.iterdir():
      f.rename(tmp / f.name)
    hf.rmdir()
  return pathlib.Path(dst)


def export_peft(run_dir, dst, base_model: str = "", overwrite: bool = False) -> pathlib.Path:
  """A LoRA run's latest factors (and modules_to_save) as a PEFT adapter folder (atomic)."""
  from qwenvl_jax.ckpt import peft

  _check_destination(run_dir, dst, overwrite)
  model, model_cfg, cfg, _ = load_finetuned(run_dir)
  return peft.export_adapter(model, model_cfg, dst, alpha=cfg.alpha, dropout=cfg.dropout,
                             targets=cfg.targets, modules_to_save=cfg.modules_to_save,
                             base_model=base_model, overwrite=overwrite)
