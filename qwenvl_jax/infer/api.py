"""Python API: load a checkpoint, then `generate` (raw prompts, batched), `score_options` and `chat`.

    pred = load_predictor("ckpts/qwen-vl")                 # Orbax dir, or an HF dir (converted)
    pred.generate([[{"image": "a.jpg"}, {"text": "Generate the caption in English:"}]], 30)
    pred.score_options([{"image": "q.png"}, {"text": "Answer:"}], [" A", " B"])
    answer, history = pred.chat("What is this?", images=["a.jpg"])

Prompts are segment lists (see `qwenvl_jax.text.interface`): `{"image": path}` becomes `<img>` +
pads + `</img>` with the image's features, `{"text": ...}` is plain text. `generate` uses the raw
prompt format of the evaluations (no ChatML, greedy, special tokens dropped from the output);
`chat` uses ChatML and the chat model's sampling defaults.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import pathlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from qwenvl_jax.data.preprocess import load_pixels, pixels
from qwenvl_jax.infer import chat as chat_lib
from qwenvl_jax.infer.generate import (CHAT_DEFAULTS, GREEDY, Generator, SamplingConfig, Timing)
from qwenvl_jax.infer.score import Scorer
from qwenvl_jax.model.layers import dtype_of
from qwenvl_jax.text import interface
from qwenvl_jax.text.conversation import DEFAULT_SYSTEM, chat_prompt, chat_stop_ids
from qwenvl_jax.text.tokenizer import Tokenizer, load_tokenizer


class CheckpointMismatchError(ValueError):
  """The checkpoint's model config does not agree with its tokenizer or tensors."""


# --------------------------------------------------------------------------------------------
# Loading.


def is_hf_dir(path: pathlib.Path) -> bool:
  """An HF-layout checkpoint: config.json plus safetensors / .bin weights."""
  return (path / "config.json").is_file() and (
      any(path.glob("*.safetensors")) or any(path.glob("pytorch_model*.bin")))


def set_compute_dtype(model: nnx.Module, dtype) -> nnx.Module:
  """A copy of `model` with parameters cast to `dtype` and every layer computing in it.

  For bf16 inference from an fp32 checkpoint: decoding is memory-bound, so halving the parameter
  bytes roughly halves the step time. Norm statistics and softmax stay float32 inside the layers.
  (Layers read `self.dtype` at call time, so setting it on a fresh copy is enough.)
  """
  dtype = dtype_of(dtype)
  graphdef, state = nnx.split(model)
  state = jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                       state)
  model = nnx.merge(graphdef, state)  # new module objects: the caller's model is left alone
  for _, module in model.iter_modules():
    if hasattr(module, "dtype"):
      module.dtype = dtype
  name = np.dtype(dtype).name
  model.cfg = dataclasses.replace(model.cfg, dtype=name, param_dtype=name)
  return model


CACHE_ENV = "QWENVL_JAX_CACHE"


def cache_root() -> pathlib.Path:
  """$QWENVL_JAX_CACHE, else $XDG_CACHE_HOME/qwenvl-jax, else ~/.cache/qwenvl-jax."""
  if os.environ.get(CACHE_ENV):
    return pathlib.Path(os.environ[CACHE_ENV])
  xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return pathlib.Path(xdg) / "qwenvl-jax"


def _digest(text: str, n: int) -> str:
  import hashlib

  return hashlib.sha256(text.encode()).hexdigest()[:n]


def converted_cache_dir(hf_dir) -> pathlib.Path:
  """Where the Orbax conversion of an HF directory is cached:
  `cache_root()/converted/<name>-<hash of its path>-<hash of its files>`.

  The files' identity is (name, size, mtime, inode) of every file in the folder, so replacing or
  editing any of them (a new download, a re-export) gives a new cache entry instead of stale weights.
  """
  src = pathlib.Path(hf_dir).resolve()
  files = []
  for f in sorted(src.iterdir()):
    if f.is_file() and not f.name.startswith("."):
      st = f.stat()
      files.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}")
  return cache_root() / "converted" / f"{src.name}-{_digest(str(src), 8)}-{_digest(chr(10).join(files), 16)}"


def _convert_hf_cached(hf_dir: pathlib.Path, target: pathlib.Path | None) -> pathlib.Path:
  """The converted checkpoint of `hf_dir`: reused when its cache entry exists, else converted; older
  entries of the same folder (its files have changed since) are removed."""
  import shutil

  from qwenvl_jax.ckpt import convert

  if target is None:
    target = converted_cache_dir(hf_dir)
    stale_prefix = target.name[:target.name.rindex("-") + 1]
    if target.parent.is_dir():
      for old in target.parent.iterdir():
        if old.name.startswith(stale_prefix) and old.name != target.name and old.is_dir():
          shutil.rmtree(old, ignore_errors=True)
  target = pathlib.Path(target)
  if not target.exists():
    try:
      convert.convert_hf_to_orbax(hf_dir, target)
    except (FileExistsError, OSError):
      if not (target / "model_config.json").exists():  # not a concurrent conversion that won: real
        raise
  return target


def load_model(path, *, mesh=None, rules=None, dtype=None, tokenizer=None, converted_dir=None,
               merge_lora=False, quantize: str | None = None):
  """An Orbax checkpoint directory or an HF directory -> (model, model_cfg, tokenizer).

  A LoRA / Q-LoRA run (its workdir has finetune.json) loads with its factors kept apart, or folded
  into the weights with `merge_lora=True` (refused for a checkpoint that is no LoRA run).

  HF directories are converted first, into `converted_dir` if given (reused if it exists), else into
  the cache entry `converted_cache_dir(path)` (keyed by the files' identity, so a changed HF folder
  is converted again). `tokenizer` overrides the checkpoint's own tokenizer file.
  `quantize` ("int8", "int4", "nf4"; see `qwenvl_jax.model.quant`) stores the LLM and ViT linear
  kernels quantised after loading (weight-only: activations stay in the compute dtype).
  """
  from qwenvl_jax.ckpt import lora_run
  from qwenvl_jax.ckpt.orbax_io import load_checkpoint

  path = pathlib.Path(path)
  if not path.is_dir():
    raise FileNotFoundError(f"checkpoint directory not found: {path}")
  lora = lora_run.is_lora_run(path)
  if merge_lora and not lora:
    raise ValueError(f"merge_lora: {path} is not a LoRA run (no {lora_run.FINETUNE_FILE} with "
                     "lora.enabled)")
  if is_hf_dir(path):
    path = _convert_hf_cached(path, pathlib.Path(converted_dir) if converted_dir else None)
  if lora:
    model, cfg, _, tok_path = lora_run.load_finetuned(path, merge=merge_lora, mesh=mesh, rules=rules)
  else:
    model, cfg, tok_path = load_checkpoint(path, mesh=mesh, rules=rules)
  tok_path = tokenizer or tok_path
  if tok_path is None:
    raise FileNotFoundError(f"checkpoint {path} holds no tokenizer file: pass tokenizer=PATH")
  tok = load_tokenizer(tok_path)
  if dtype is not None:
    model = set_compute_dtype(model, dtype)
    cfg = model.cfg
  if quantize:
    from qwenvl_jax.model.quant import quantize_model

    quantize_model(model, quantize)
  return model, cfg, tok


def load_predictor(ckpt_dir, *, mesh=None, rules=None, dtype=None, tokenizer=None,
                   quantize: str | None = None, merge_lora: bool = False, **kwargs) -> "Predictor":
  """`load_model` + `Predictor(model, tokenizer, mesh=mesh, **kwargs)`."""
  model, _, tok = load_model(ckpt_dir, mesh=mesh, rules=rules, dtype=dtype, tokenizer=tokenizer,
                             quantize=quantize, merge_lora=merge_lora)
  return Predictor(model, tok, mesh=mesh, **kwargs)


def check_tokenizer(cfg, tok: Tokenizer):
  """The model's image ids and vocabulary must agree with the tokenizer's."""
  want = tok.model_config_ids()
  have = {k: getattr(cfg, k) for k in want}
  if have != want:
    raise CheckpointMismatchError(f"checkpoint config image ids {have} do not match the tokenizer's "
                                  f"{want}")
  if tok.vocab_size > cfg.llm.vocab_size:
    raise CheckpointMismatchError(f"tokenizer has {tok.vocab_size} ids but the model's vocabulary "
                                  f"is {cfg.llm.vocab_size}")


# --------------------------------------------------------------------------------------------
# The predictor.


class Predictor:
  """A model + tokenizer with bucketed, jitted generation and scoring.

  `batch_size` bounds the rows per device call in `generate` (longer lists are split, sorted by
  length so similar prompts share a bucket); `max_window` is the longest prompt accepted (default
  3 x the training length: 6144 for the released model, its chat `max_window_size`).
  """

  def __init__(self, model, tokenizer: Tokenizer, *, mesh=None, max_window: int | None = None,
               batch_size: int = 8, image_cache: int = 64):
    check_tokenizer(model.cfg, tokenizer)
    self.model, self.cfg, self.tokenizer = model, model.cfg, tokenizer
    self.batch_size = batch_size
    self.generator = Generator(model, pad_id=tokenizer.pad_id, stop_ids=chat_stop_ids(tokenizer),
                               valid_vocab=tokenizer.vocab_size, max_window=max_window, mesh=mesh)
    self.scorer = Scorer(model, pad_id=tokenizer.pad_id, max_window=self.generator.max_window,
                         mesh=mesh)
    self._images: collections.OrderedDict = collections.OrderedDict()
    self._image_cache = image_cache
    self.last_timing = Timing()

  # ---- inputs -----------------------------------------------------------------------------

  def image_array(self, src: Any) -> np.ndarray:
    """A path / bytes / PIL image -> uint8 [S, S, 3] resized pixels (normalised on the device; paths
    cached); a preprocessed array: uint8 pixels as they are, anything else as normalised float32."""
    size = self.cfg.vision.image_size
    if isinstance(src, np.ndarray):
      if src.shape != (size, size, 3):
        raise ValueError(f"image array must be preprocessed to {(size, size, 3)}, got {src.shape}")
      return src if src.dtype == np.uint8 else src.astype(np.float32)
    if hasattr(src, "convert"):  # PIL image
      return pixels(src, size)
    if isinstance(src, (str, os.PathLike)):
      key = os.fspath(src)
      if key not in self._images:
        self._images[key] = load_pixels(key, size)
        while len(self._images) > self._image_cache:
          self._images.popitem(last=False)
      self._images.move_to_end(key)
      return self._images[key]
    return load_pixels(src, size)

  def encode(self, segments: Sequence[dict]) -> tuple[list[int], list]:
    """Raw-prompt segments -> (ids, image sources) with `<img>` + pads + `</img>` spans."""
    enc = interface.encode_segments(self.tokenizer, segments,
                                    n_image_tokens=self.cfg.tokens_per_image)
    return enc.ids, enc.images

  def chat_prompt(self, history, query_segments, system: str = DEFAULT_SYSTEM,
                  label_pictures: bool = True):
    sample = chat_prompt(self.tokenizer, history, query_segments, system=system,
                         n_image_tokens=self.cfg.tokens_per_image, label_pictures=label_pictures)
    return sample.ids.tolist(), sample.images

  # ---- generation -------------------------------------------------------------------------

  def generate_from_ids(self, prompts: Sequence[Sequence[int]], images: Sequence[Sequence[Any]],
                        sampling: SamplingConfig) -> list[list[int]]:
    """Token prompts (+ image sources per row) -> generated ids per row, in `batch_size` chunks."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list = [None] * len(prompts)
    timing = Timing()
    for start in range(0, len(order), self.batch_size):
      idx = order[start:start + self.batch_size]
      rows = [list(prompts[i]) for i in idx]
      arrays = [[self.image_array(s) for s in images[i]] for i in idx]
      part = Timing()
      results = self.generator.generate_ids(rows, arrays, sampling, timing=part)
      timing.prefill_s += part.prefill_s
      timing.decode_s += part.decode_s
      timing.new_tokens += part.new_tokens
      for i, r in zip(idx, results):
        out[i] = r
    self.last_timing = timing
    return out

  def generate(self, prompts: Sequence[Sequence[dict]], max_new_tokens: int = 512,
               min_new_tokens: int = 0, *, sampling: SamplingConfig | None = None,
               skip_special: bool = True) -> list[str]:
    """Raw prompts (segment lists) -> decoded, stripped continuations (greedy by default)."""
    sampling = sampling or GREEDY
    sampling = dataclasses.replace(sampling, max_new_tokens=max_new_tokens,
                                   min_new_tokens=min_new_tokens)
    encoded = [self.encode(p) for p in prompts]
    ids = self.generate_from_ids([e[0] for e in encoded], [e[1] for e in encoded], sampling)
    return [self.tokenizer.decode(r, skip_special=skip_special).strip() for r in ids]

  def generate_chat(self, prompts: Sequence[Sequence[dict]], max_new_tokens: int = 512,
                    min_new_tokens: int = 0, label_pictures: bool = True) -> list[str]:
    """One fresh ChatML turn per prompt (segment lists), greedy (the MME protocol: the chat model
    with near-greedy top_p=0.01) -> decoded, stripped replies. `label_pictures=False`: bare `<img>`
    spans, no "Picture N: " (MME's released query)."""
    sampling = dataclasses.replace(GREEDY, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens)
    turns = [self.chat_prompt([], segments, label_pictures=label_pictures) for segments in prompts]
    outs = self.generate_from_ids([t[0] for t in turns], [t[1] for t in turns], sampling)
    return [self.tokenizer.decode(out, skip_special=True).strip() for out in outs]

  def score_options(self, prompt_segments: Sequence[dict], options: Sequence) -> list[float]:
    """Mean CE over each option's tokens after the prompt (lower = more likely).

    Options are strings (encoded on their own, so include any leading space) or segment lists.
    """
    ids, sources = self.encode(prompt_segments)
    opts = [self.tokenizer.encode(o) if isinstance(o, str) else self.encode(o)[0] for o in options]
    return self.scorer.score(ids, opts, [self.image_array(s) for s in sources])

  def chat(self, query: str, history=None, images=(), *, sampling: SamplingConfig = CHAT_DEFAULTS,
           system: str = DEFAULT_SYSTEM):
    """-> (answer, new_history); see `qwenvl_jax.infer.chat`."""
    return chat_lib.chat(self, query, history, images, sampling=sampling, system=system)
