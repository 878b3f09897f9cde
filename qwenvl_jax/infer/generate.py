"""KV-cache generation: one jitted prefill, one jitted decode loop, static shapes.

Why this shape:
* Every request is padded to a *bucket* (prompt length, new-token budget, batch, images per row), so
  a chat session or an eval run compiles each function once per bucket and never per request. All
  sampling knobs (temperature, top-k, top-p, min/max new tokens, stop ids, NTK alpha) are traced
  values, not static arguments, for the same reason.
* Rows of different lengths are LEFT padded with segment 0 (the mask ignores them) and get per-row
  positions starting at 0 at their first real token, so a row's output does not depend on its batch
  mates. (The reference uses raw array indices, i.e. left padding shifts its positions; ours equal
  the reference's unpadded single-row run.) Left padding puts every row's last prompt token in the
  same column, so prefill computes logits for that column only.
* The decode loop is a `jax.lax.while_loop` inside one jit: one dispatch per request instead of one
  per token, and it exits as soon as every row has stopped. `step` is the same single-token forward,
  jitted on its own for tests and streaming.
* Dynamic NTK (alpha from the longest real prompt, fixed for the whole request, as the reference
  fixes it at the first pass) and log-n query scaling follow the model config's inference flags.

Sharding: pass a mesh and the model's (already sharded) parameters stay where they are; the KV cache
is created inside prefill and constrained to (batch over data+fsdp, heads over tensor).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from qwenvl_jax.model import pixels
from qwenvl_jax.model import layers
from qwenvl_jax.model.llm import KVCache, init_cache, is_per_layer, per_layer_cache
from qwenvl_jax.model.qwenvl import check_image_spans
from qwenvl_jax.sharding import batch_sharding, constrain

MAX_STOP_IDS = 4  # stop ids travel as a fixed-size array (padded with -1) so they never recompile


def decode_compiler_options() -> dict[str, str]:
  """XLA options for the jitted decode loops (`Generator`'s step/decode, the serving engine's chunk).

  On CPU, XLA routes a dot with more than one row (and the elementwise ops around it) to YNNPACK
  fusions by default; at decode's 2..16 rows x 384..4096 those ran at half the FLOP/s of XLA's own
  Eigen matmul on this AVX2 EPYC (16 rows: 20-23 GFLOP/s vs 38-41, every LLM weight product of
  configs/small.py; docs/serving.md). Empty = no YNNPACK fusions. Set per compiled function, so
  nothing else the process compiles changes; other backends get no options."""
  return {"xla_cpu_experimental_ynn_fusion_type": ""} if jax.default_backend() == "cpu" else {}


class ContextLengthError(ValueError):
  """A prompt does not fit the model's context window."""


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """temperature 0 = greedy; top_k 0 = off; top_p 1 = off (HF semantics: top-k, then top-p)."""
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  max_new_tokens: int = 512
  min_new_tokens: int = 0
  seed: int = 0

  @property
  def greedy(self) -> bool:
    return self.temperature <= 0


# The released chat model's generation_config (sampling, top_p 0.3, top_k off, 512 new tokens).
CHAT_DEFAULTS = SamplingConfig(temperature=1.0, top_k=0, top_p=0.3, max_new_tokens=512)
# What the evaluations use: greedy decoding.
GREEDY = SamplingConfig(temperature=0.0)


# --------------------------------------------------------------------------------------------
# Buckets.


def next_pow2(n: int) -> int:
  return 1 << max(0, int(n) - 1).bit_length()


def prompt_bucket(n: int, minimum: int = 64, pow2_until: int = 1024, step: int = 512) -> int:
  """Powers of two (>= minimum) up to `pow2_until`, then multiples of `step` (bounded waste)."""
  if n <= pow2_until:
    return max(minimum, next_pow2(n))
  return -(-n // step) * step


def new_tokens_bucket(n: int, minimum: int = 16) -> int:
  return max(minimum, next_pow2(n))


def batch_bucket(n: int) -> int:
  return next_pow2(n)


# --------------------------------------------------------------------------------------------
# Sampling (pure, jittable).


def filter_logits(x: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
  """Masks logits outside the top-k and then outside the top-p nucleus (always keeps the best)."""
  neg = jnp.finfo(x.dtype).min
  v = x.shape[-1]
  desc = -jnp.sort(-x, axis=-1)
  rank = jnp.arange(v)
  k = jnp.where(top_k > 0, jnp.minimum(top_k, v), v)
  desc = jnp.where(rank < k, desc, neg)
  probs = jax.nn.softmax(desc, axis=-1)
  before = jnp.cumsum(probs, axis=-1) - probs  # mass of strictly better tokens
  keep = (before < top_p) | (rank == 0)
  keep &= rank < k
  n_keep = keep.sum(-1, keepdims=True)
  threshold = jnp.take_along_axis(desc, n_keep - 1, axis=-1)
  return jnp.where(x >= threshold, x, neg)


def sample_logits(logits: jax.Array, key: jax.Array, temperature: jax.Array, top_k: jax.Array,
                  top_p: jax.Array) -> jax.Array:
  """[B, V] logits -> [B] int32 tokens; branches are `lax.cond`s so greedy never sorts."""
  logits = logits.astype(jnp.float32)

  def greedy(_):
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)

  def sample(_):
    x = logits / jnp.maximum(temperature, 1e-6)
    x = jax.lax.cond((top_k > 0) | (top_p < 1.0), lambda y: filter_logits(y, top_k, top_p),
                     lambda y: y, x)
    return jax.random.categorical(key, x, axis=-1).astype(jnp.int32)

  return jax.lax.cond(temperature <= 0, greedy, sample, None)


# --------------------------------------------------------------------------------------------
# Host-side batch preparation.


@dataclasses.dataclass
class Batch:
  """A left-padded, bucketed batch ready for prefill (numpy arrays)."""
  ids: np.ndarray  # [B, P] int32
  segment_ids: np.ndarray  # [B, P] 1 = real, 0 = padding
  positions: np.ndarray  # [B, P] 0.. from each row's first real token
  lengths: np.ndarray  # [B] real prompt lengths
  images: np.ndarray | None  # [B, M, H, W, 3] uint8 pixels (or float32 normalised)
  num_images: np.ndarray  # [B]
  n_rows: int  # real rows (the rest pad the batch bucket)


class CompileCounter:
  """Counts XLA backend compilations while active (any function, jitted or eager)."""

  EVENT = "/jax/core/compile/backend_compile_duration"

  def __init__(self):
    self.count = 0

  def _listener(self, event, duration, **kwargs):
    del duration, kwargs
    if event == self.EVENT:
      self.count += 1

  def __enter__(self):
    jax.monitoring.register_event_duration_secs_listener(self._listener)
    return self

  def __exit__(self, *exc):
    jax.monitoring.unregister_event_duration_listener(self._listener)


# --------------------------------------------------------------------------------------------
# The generator.


@dataclasses.dataclass
class Timing:
  prefill_s: float = 0.0  # prompt forward + first-token logits (time to first token, minus sampling)
  decode_s: float = 0.0
  new_tokens: int = 0  # decode steps run (the same for every row)


class Generator:
  """Bucketed, jitted prefill + decode for a `QwenVL` model (a snapshot of its parameters).

  `pad_id` fills padding; `stop_ids` end a row (the stop token itself is not returned);
  `valid_vocab` masks the embedding's padded rows (151860.. in the released model) so they are never
  sampled; `max_window` is the longest accepted prompt.
  """

  def __init__(self, model, *, pad_id: int, stop_ids: Sequence[int], valid_vocab: int | None = None,
               max_window: int | None = None, mesh=None, min_prompt_bucket: int = 64,
               unstack_layers: bool | None = None):
    cfg = model.cfg
    self.cfg = cfg
    self.graphdef, self.state = nnx.split(model)
    # Per-layer LLM weights made CPU decode 2.2x faster at 0.64B (`QwenLM.unstack_layers`) at the
    # cost of a second copy of the blocks; the default spares accelerator memory that copy.
    # Per-layer blocks decode over a per-layer, heads-first KV cache (`llm.per_layer_cache`).
    self.per_layer = bool(unstack_layers if unstack_layers is not None
                          else jax.default_backend() == "cpu")
    if self.per_layer:
      view = nnx.merge(self.graphdef, self.state)  # shares the arrays; `model` stays stacked
      view.llm.unstack_layers()
      self.graphdef, self.state = nnx.split(view)
    self.pad_id = int(pad_id)
    self.stop_ids = tuple(int(s) for s in stop_ids)
    if len(self.stop_ids) > MAX_STOP_IDS:
      raise ValueError(f"at most {MAX_STOP_IDS} stop ids, got {self.stop_ids}")
    self.valid_vocab = int(valid_vocab or cfg.llm.vocab_size)
    self.max_window = int(max_window or 3 * cfg.llm.seq_length)
    self.mesh = mesh
    self.min_prompt_bucket = min_prompt_bucket
    self.logn = bool(cfg.llm.use_logn_attn)
    self._prefill = jax.jit(
        functools.partial(_prefill, self.graphdef, self.logn, per_layer=self.per_layer),
        static_argnames=("cache_len",))
    options = decode_compiler_options()
    self._step = jax.jit(functools.partial(_step_fn, self.graphdef, self.logn),
                         donate_argnums=(1,), compiler_options=options)  # cache written in place
    self._decode = jax.jit(
        functools.partial(_decode, self.graphdef, self.logn, self.pad_id, self.valid_vocab),
        static_argnames=("gen_len",), compiler_options=options)

  # ---- bookkeeping -----------------------------------------------------------------------

  def compiled_count(self) -> int:
    """Compiled variants across prefill/step/decode (one per bucket)."""
    return sum(f._cache_size() for f in (self._prefill, self._step, self._decode))

  def _ctx(self):
    return jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()

  def _put(self, x):
    if x is None or self.mesh is None:
      return x
    data = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
    sharding = (batch_sharding(self.mesh, x.ndim) if x.ndim and x.shape[0] % data == 0
                else NamedSharding(self.mesh, P()))
    return jax.device_put(x, sharding)

  def alpha_for(self, lengths) -> float:
    """Dynamic-NTK alpha from the longest real prompt (1 when disabled or within seq_length)."""
    if not self.cfg.llm.use_dynamic_ntk:
      return 1.0
    return float(layers.ntk_alpha(int(np.max(lengths)), self.cfg.llm.seq_length))

  # ---- host-side preparation --------------------------------------------------------------

  def prepare(self, prompts: Sequence[Sequence[int]], images: Sequence[Sequence[np.ndarray]] | None = None,
              *, prompt_len: int | None = None, batch_size: int | None = None) -> Batch:
    """Left-pads token lists to a prompt bucket and images to [B, M, H, W, 3]."""
    if not prompts:
      raise ValueError("no prompts given")
    lengths = np.array([len(p) for p in prompts], np.int32)
    if lengths.min() == 0:
      raise ValueError("empty prompt")
    if lengths.max() > self.max_window:
      raise ContextLengthError(
          f"prompt of {int(lengths.max())} tokens is longer than the context window "
          f"({self.max_window} tokens)")
    n = len(prompts)
    b = batch_size or batch_bucket(n)
    if batch_size is None and self.mesh is not None:  # pad to split rows over every data-parallel device
      shards = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
      b = -(-b // shards) * shards
    plen = prompt_len or prompt_bucket(int(lengths.max()), self.min_prompt_bucket)
    if b < n or plen < lengths.max():
      raise ValueError(f"batch {n} x {int(lengths.max())} tokens does not fit a {b} x {plen} bucket")
    ids = np.full((b, plen), self.pad_id, np.int32)
    seg = np.zeros((b, plen), np.int32)
    pos = np.zeros((b, plen), np.int32)
    full_lengths = np.ones(b, np.int32)
    for i, p in enumerate(prompts):
      t = len(p)
      ids[i, plen - t:] = np.asarray(p, np.int32)
      seg[i, plen - t:] = 1
      pos[i, plen - t:] = np.arange(t)
      full_lengths[i] = t
    # Padding rows: one real token so nothing is fully masked on their last column.
    seg[n:, -1] = 1
    counts = np.zeros(b, np.int32)
    image_arr = None
    if images is not None and any(len(row) for row in images):
      m = next_pow2(max(len(row) for row in images))
      size = self.cfg.vision.image_size
      image_arr = pixels.stack_rows(images, b, size, m)  # uint8 when the images are
      for i, row in enumerate(images):
        counts[i] = len(row)
    check_image_spans(ids, counts, self.cfg.tokens_per_image, self.cfg.image_start_id,
                      self.cfg.image_end_id)
    return Batch(ids, seg, pos, full_lengths, image_arr, counts, n)

  # ---- device calls -----------------------------------------------------------------------

  def prefill(self, batch: Batch, max_new_tokens: int):
    """-> (last-position logits [B, V] float32, cache, gen_len); gen_len = the new-token bucket."""
    gen_len = new_tokens_bucket(max_new_tokens)
    alpha = jnp.float32(self.alpha_for(batch.lengths[: batch.n_rows]))
    with self._ctx():
      logits, cache = self._prefill(
          self.state, self._put(batch.ids), self._put(batch.segment_ids),
          self._put(batch.positions), self._put(batch.images), self._put(batch.num_images), alpha,
          cache_len=batch.ids.shape[1] + gen_len)
    return logits, cache, gen_len, alpha

  def step(self, cache: KVCache, tokens, positions, alpha=1.0):
    """One token per row: tokens/positions [B] -> (logits [B, V] float32, cache)."""
    with self._ctx():
      return self._step(self.state, cache, jnp.asarray(tokens, jnp.int32),
                        jnp.asarray(positions, jnp.int32), jnp.float32(alpha))

  def decode(self, cache, logits, lengths, alpha, gen_len: int, sampling: SamplingConfig,
             stop_ids: Sequence[int] | None = None, n_rows: int | None = None):
    """Runs the decode loop -> (tokens [B, gen_len] int32 numpy, steps run)."""
    if sampling.max_new_tokens > gen_len:
      raise ValueError(f"max_new_tokens {sampling.max_new_tokens} > cache bucket {gen_len}")
    stops = tuple(stop_ids if stop_ids is not None else self.stop_ids)
    if len(stops) > MAX_STOP_IDS:
      raise ValueError(f"at most {MAX_STOP_IDS} stop ids, got {stops}")
    stop_arr = np.full(MAX_STOP_IDS, -1, np.int32)
    stop_arr[: len(stops)] = stops
    knobs = dict(temperature=jnp.float32(sampling.temperature), top_k=jnp.int32(sampling.top_k),
                 top_p=jnp.float32(sampling.top_p), min_new=jnp.int32(sampling.min_new_tokens),
                 max_new=jnp.int32(sampling.max_new_tokens))
    with self._ctx():
      active = np.arange(len(lengths)) < (len(lengths) if n_rows is None else n_rows)
      tokens, steps = self._decode(self.state, cache, logits, jnp.asarray(lengths, jnp.int32),
                                   jnp.asarray(active),
                                   jax.random.key(sampling.seed), jnp.asarray(stop_arr), alpha,
                                   gen_len=gen_len, **knobs)
    return np.asarray(tokens), int(steps)

  def generate_ids(self, prompts: Sequence[Sequence[int]],
                   images: Sequence[Sequence[np.ndarray]] | None = None,
                   sampling: SamplingConfig = GREEDY, stop_ids: Sequence[int] | None = None,
                   timing: Timing | None = None) -> list[list[int]]:
    """Token lists in -> generated token lists out (up to, not including, the first stop id)."""
    if sampling.max_new_tokens < 1:
      return [[] for _ in prompts]
    batch = self.prepare(prompts, images)
    t0 = time.perf_counter()
    logits, cache, gen_len, alpha = self.prefill(batch, sampling.max_new_tokens)
    if timing is not None:
      jax.block_until_ready(logits)
      t1 = time.perf_counter()
    tokens, steps = self.decode(cache, logits, batch.lengths, alpha, gen_len, sampling, stop_ids,
                                batch.n_rows)
    if timing is not None:
      timing.prefill_s, timing.decode_s = t1 - t0, time.perf_counter() - t1
      timing.new_tokens = steps
    stops = set(stop_ids if stop_ids is not None else self.stop_ids)
    out = []
    for row in tokens[: batch.n_rows, :steps].tolist():
      cut = next((i for i, t in enumerate(row) if t in stops), len(row))
      out.append(row[:cut])
    return out


# --------------------------------------------------------------------------------------------
# Jitted bodies (graphdef and static flags bound with functools.partial).


def _constrain_cache(cache: KVCache) -> KVCache:
  if is_per_layer(cache):  # [B, H, S, D] per layer
    names = ("act_batch", "act_heads", "act_kv_length", None)
    one = lambda xs: tuple(constrain(x, names) for x in xs)
  else:  # [L, B, S, H, D]
    one = lambda x: constrain(x, (None, "act_batch", "act_kv_length", "act_heads", None))
  return cache._replace(k=one(cache.k), v=one(cache.v))


def _prefill(graphdef, logn, state, ids, segment_ids, positions, images, num_images, alpha, *,
             cache_len, per_layer=False, prefix=None):
  """-> (last-position logits [B, V], cache of `cache_len` columns). `prefix` (k, v [L, B, K, H, D],
  segment ids, positions [B, K]): keys/values computed earlier for the first K columns (the serving
  engine's prefix cache; segment 0 = padding); `ids` then holds the rest of each prompt, in the
  last columns, its positions following those of its prefix."""
  model = nnx.merge(graphdef, state)
  cfg = model.cfg
  b = ids.shape[0]
  cache = init_cache(cfg.llm, b, cache_len, layers.dtype_of(cfg.dtype))
  if prefix is not None:
    k, v, seg, pos = prefix
    n = seg.shape[1]
    cache = KVCache(cache.k.at[:, :, :n].set(k.astype(cache.k.dtype)),
                    cache.v.at[:, :, :n].set(v.astype(cache.v.dtype)),
                    cache.segment_ids.at[:, :n].set(seg), cache.positions.at[:, :n].set(pos),
                    jnp.int32(n))
  cache = _constrain_cache(cache)
  x = model.embed(ids, images, num_images if images is not None else None)
  hidden, cache = model.llm(x, positions, segment_ids, cache=cache, rope_alpha=alpha, logn=logn)
  logits = model.llm.logits(hidden[:, -1:])[:, 0].astype(jnp.float32)
  return logits, _constrain_cache(per_layer_cache(cache) if per_layer else cache)


def _forward_one(model, logn, cache, tokens, positions, alpha):
  x = model.llm.embed_tokens(tokens[:, None])
  seg = jnp.ones_like(tokens)[:, None]
  hidden, cache = model.llm(x, positions[:, None], seg, cache=cache, rope_alpha=alpha, logn=logn)
  return model.llm.logits(hidden)[:, 0].astype(jnp.float32), _constrain_cache(cache)


def _step_fn(graphdef, logn, state, cache, tokens, positions, alpha):
  return _forward_one(nnx.merge(graphdef, state), logn, cache, tokens, positions, alpha)


def _decode(graphdef, logn, pad_id, valid_vocab, state, cache, logits, lengths, active, key,
            stop_ids, alpha, *, gen_len, temperature, top_k, top_p, min_new, max_new):
  b = logits.shape[0]
  vocab_ok = jnp.arange(logits.shape[-1]) < valid_vocab
  is_stop = lambda t: (t[:, None] == stop_ids[None, :]).any(-1)
  stop_mask = jnp.zeros(logits.shape[-1], bool).at[jnp.where(stop_ids >= 0, stop_ids, 0)].max(
      stop_ids >= 0)

  def cond(carry):
    step, _, done, _, _, _ = carry
    return (step < max_new) & ~done.all()

  def body(carry):
    step, tokens, done, cache, logits, state = carry
    neg = jnp.finfo(jnp.float32).min
    logits = jnp.where(vocab_ok, logits, neg)
    logits = jnp.where(stop_mask & (step < min_new), neg, logits)
    tok = sample_logits(logits, jax.random.fold_in(key, step), temperature, top_k, top_p)
    tok = jnp.where(done, pad_id, tok)
    tokens = jax.lax.dynamic_update_slice(tokens, tok[:, None], (0, step))
    done = done | is_stop(tok)
    # The parameters ride in the carry (unchanged, so XLA aliases them): NNX refuses to merge
    # variables traced at an outer level inside the loop body.
    model = nnx.merge(graphdef, state)
    logits, cache = _forward_one(model, logn, cache, tok, lengths + step, alpha)
    return step + 1, tokens, done, cache, logits, state

  init = (jnp.int32(0), jnp.full((b, gen_len), pad_id, jnp.int32), ~active, cache, logits, state)
  step, tokens, *_ = jax.lax.while_loop(cond, body, init)
  return tokens, step


__all__ = ["Generator", "SamplingConfig", "CHAT_DEFAULTS", "GREEDY", "ContextLengthError", "Batch",
           "CompileCounter", "Timing", "prompt_bucket", "new_tokens_bucket", "sample_logits",
           "filter_logits"]
