"""Continuous batching: one jitted decode loop over a fixed set of slots, shared by all requests.

Why this shape:
* A background thread owns the device. Between decode chunks (`chunk` steps each, one dispatch) it
  admits waiting requests into free slots, so a new request joins at the next step boundary instead
  of waiting for the current batch to end, and a finished row frees its slot at once.
* The model's KV cache has one write column for all rows (`KVCache.index`). The engine's cache is a
  ring of L columns: every step writes column `index` of every row and the index wraps mod L.
  Joining requests are prefilled together, one call per prompt bucket P (left padded exactly as
  `Generator` does, so each row's logits equal a `chat` call's), and each row's P columns are
  copied into its slot's row at columns index-P .. index-1 (mod L), after the row's old segment
  ids are cleared. The attention mask reads segment ids and positions, never column order, so the
  row then sees exactly its own prompt and tokens. A request fits while P + max_tokens <= L; the
  ring grows (rolled so the write column restarts at 0) when one needs more, shrinks to what the
  busy rows need once the request that grew it ends (every step reads the whole ring: at 1024
  columns a 16-row step of configs/small.py costs 2.3x what it does at 128), and is dropped when
  the engine goes idle.
* Prompts that begin like an earlier one (a shared system prompt, a chat's earlier turns) reuse
  its keys/values from a pool of cached blocks and prefill only the rest (`serve/prefix.py`). A
  finished row's answer blocks are copied from the ring into that pool, so a chat's next turn
  reuses its previous answer too.
* Each chunk runs only the first `next_pow2(highest busy slot + 1)` rows, so one client does not
  pay for sixteen. Joining requests take the lowest free slots, and when rows that end leave the
  busy ones spread out (a long answer in slot 9 after slots 0-8 ended), the busy rows move down
  (their ring rows copied) before the next chunk.
* Sampling knobs are per row (temperature, top-k, top-p, seed): traced arrays, never recompiles.
  A row's t-th token uses key fold_in(key(seed), t), so its tokens do not depend on batch mates.
* Tokens are handed out on the host after each chunk; stop ids and max_tokens end a row there
  (a row may compute a few steps past its end inside a chunk; they are dropped).
* Clients that were served together tend to come back together (a batch job with N workers, an
  eval harness): when the engine goes idle after requests ended, it waits up to `gather_s` (from
  going idle) until as many new requests as ended are queued, besides those queued already, so
  they share one prefill and finish together. Admitting the first one alone cost a 1-row prefill
  and chunk before the others joined, and one more chunk at the end of every wave (HTTP, 16
  closed-loop clients: 9 chunks per wave instead of 8); counting the early returners of a
  staggered wave merges it back. One client never waits: one ended, one is back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import logging
import threading
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import SingleDeviceSharding

from qwenvl_jax.infer.generate import (ContextLengthError, _constrain_cache, _forward_one, _prefill,
                                       decode_compiler_options, next_pow2, prompt_bucket,
                                       sample_logits)
from qwenvl_jax.model import layers
from qwenvl_jax.model.llm import KVCache, init_cache, is_per_layer, per_layer_cache
from qwenvl_jax.serve import prefix
from qwenvl_jax.serve.prefix import BLOCK, PrefixIndex

log = logging.getLogger(__name__)

MIN_RING = 128  # shortest ring: short chats share one compiled shape


def ring_columns(need: int) -> int:
  """The ring length that holds `need` columns (a prompt bucket + its answer budget)."""
  return max(MIN_RING, next_pow2(need))


class EngineClosed(RuntimeError):
  """The engine is draining or stopped and takes no new requests."""


@dataclasses.dataclass
class Request:
  """One generation: prompt ids + preprocessed images in, tokens out through `emit`.

  `emit(new_token_ids, finish_reason)` is called from the engine thread: with new tokens as they
  come, and once with a finish reason ("stop", "length" or "cancelled"; "error: ..." on failure).
  """
  ids: Sequence[int]
  images: Sequence[np.ndarray]
  max_tokens: int
  emit: Callable[[list[int], str | None], None]
  temperature: float = 0.0
  top_p: float = 1.0
  top_k: int = 0
  seed: int = 0
  # engine-owned state
  generated: int = 0
  done: bool = False
  cancelled: bool = False
  submitted: float = dataclasses.field(default_factory=time.perf_counter)

  def cancel(self):
    """Frees the slot at the next step boundary (client gone, or a stop string matched)."""
    self.cancelled = True


# --------------------------------------------------------------------------------------------
# Jitted pieces (graphdef and static flags bound with functools.partial).


def _sample_rows(logits, valid_vocab, seeds, counters, temps, top_k, top_p):
  """[B, V] -> [B] tokens with per-row knobs; all-greedy batches skip the sort entirely."""
  logits = jnp.where(jnp.arange(logits.shape[-1]) < valid_vocab, logits,
                     jnp.finfo(jnp.float32).min)

  def mixed(_):
    keys = jax.vmap(lambda s, c: jax.random.fold_in(jax.random.key(s), c))(seeds, counters)
    one = lambda l, k, t, tk, tp: sample_logits(l[None], k, t, tk, tp)[0]
    return jax.vmap(one)(logits, keys, temps, top_k, top_p)

  greedy = lambda _: jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return jax.lax.cond((temps <= 0).all(), greedy, mixed, None)


def _prefill_rows(graphdef, logn, per_layer, state, pool, table, reused, src_rows, src_cols, dst,
                  ids, segment_ids, positions, images, num_images, alpha, *, cache_len):
  """A group's prefill with the prefix cache -> (logits [B, V], cache of `cache_len` columns, pool).

  `pool` (k, v [L, N, BLOCK, H, D]) or None; `table` [B, K]: each row's cached prefix blocks
  (its last `reused` // BLOCK entries; the others are padding), filling the K * BLOCK columns
  before `ids`, the rest of each prompt. Then the blocks (`src_rows`, `src_cols`: first column) of
  the new cache are written to pool slots `dst` (slots >= N are dropped)."""
  cached = None
  if table.shape[1]:
    take = lambda p: p[:, table].reshape(p.shape[0], table.shape[0], -1, *p.shape[3:])
    col = jnp.arange(table.shape[1] * BLOCK)[None, :]
    first = table.shape[1] * BLOCK - reused[:, None]  # the prefix is right-aligned
    cached = (take(pool[0]), take(pool[1]), (col >= first).astype(jnp.int32),
              jnp.maximum(col - first, 0))
  logits, small = _prefill(graphdef, logn, state, ids, segment_ids, positions, images, num_images,
                           alpha, cache_len=cache_len, prefix=cached)
  if pool is not None:
    cols = src_cols[:, None] + jnp.arange(BLOCK)
    put = lambda p, c: p.at[:, dst].set(c[:, src_rows[:, None], cols], mode="drop")
    pool = (put(pool[0], small.k), put(pool[1], small.v))
  return logits, _constrain_cache(per_layer_cache(small) if per_layer else small), pool


def _padded(xs: Sequence[int], size: int, fill: int) -> np.ndarray:
  """int32 `xs` padded with `fill` to `size` entries (a jitted call's fixed-size index operand)."""
  return np.asarray(list(xs) + [fill] * (size - len(xs)), np.int32)


def _store_ring_blocks(pool, ring: KVCache, rows, back, dst):
  """Copies blocks of finished rows from the ring into pool slots `dst` (slots >= N are dropped):
  entry e is row `rows[e]`'s BLOCK columns starting `back[e]` columns before the write column."""
  n_cols = ring.segment_ids.shape[1]
  cols = (ring.index - back[:, None] + jnp.arange(BLOCK)) % n_cols  # [E, BLOCK]
  r = rows[:, None]
  if is_per_layer(ring):  # x[r, :, cols] of [B, H, S, D] is [E, BLOCK, H, D]
    take = lambda xs: jnp.stack([x[r, :, cols] for x in xs])
  else:
    take = lambda x: x[:, r, cols]
  put = lambda p, c: p.at[:, dst].set(c.astype(p.dtype), mode="drop")
  return put(pool[0], take(ring.k)), put(pool[1], take(ring.v))


def _new_pool(llm_cfg, dtype, n_blocks: int):
  blocks = _constrain_cache(init_cache(llm_cfg, n_blocks, BLOCK, dtype))
  return blocks.k, blocks.v


def _batch_axis(cache: KVCache) -> int:
  """k/v's row axis: [B, H, S, D] per layer, or [L, B, S, H, D]; the column axis is 2 in both."""
  return 0 if is_per_layer(cache) else 1


def _insert(ring: KVCache, small: KVCache, rows):
  """Copies prefilled rows (P columns each, same layout as the ring) into ring rows `rows` ending
  just before the write column; rows >= B (batch padding) are dropped."""
  n_cols, width = ring.segment_ids.shape[1], small.segment_ids.shape[1]
  cols = (ring.index - width + jnp.arange(width)) % n_cols
  r, c = rows[:, None], cols[None, :]
  if is_per_layer(ring):  # x[r, :, c] is [n, P, H, D]
    put = lambda x, s: x.at[r, :, c].set(jnp.swapaxes(s, 1, 2).astype(x.dtype), mode="drop")
  else:
    put = lambda x, s: x.at[:, r, c].set(s.astype(x.dtype), mode="drop")
  seg = ring.segment_ids.at[rows].set(0, mode="drop")  # forget the slot's previous request
  return KVCache(
      jax.tree.map(put, ring.k, small.k), jax.tree.map(put, ring.v, small.v),
      seg.at[r, c].set(small.segment_ids, mode="drop"),
      ring.positions.at[r, c].set(small.positions, mode="drop"),
      ring.index)


def _move_rows(ring: KVCache, src, dst) -> KVCache:
  """Ring rows `src` copied to rows `dst` (entries with dst >= B are padding: dropped)."""
  ax = _batch_axis(ring)
  move = lambda x, axis: x.at[(slice(None),) * axis + (dst,)].set(
      jnp.take(x, src, axis=axis), mode="drop")
  kv = lambda xs: jax.tree.map(lambda x: move(x, ax), xs)
  return KVCache(kv(ring.k), kv(ring.v), move(ring.segment_ids, 0), move(ring.positions, 0),
                 ring.index)


def _shrink(ring: KVCache, n_cols: int) -> KVCache:
  """A shorter ring holding the last `n_cols` columns before the write column, oldest first (the
  write column restarts at 0), as `_grow` lays them out."""
  keep = lambda x, axis: jax.lax.slice_in_dim(jnp.roll(x, -ring.index, axis=axis),
                                              x.shape[axis] - n_cols, x.shape[axis], axis=axis)
  kv = lambda xs: jax.tree.map(lambda x: keep(x, 2), xs)
  return KVCache(kv(ring.k), kv(ring.v), keep(ring.segment_ids, 1), keep(ring.positions, 1),
                 jnp.zeros((), jnp.int32))


def _new_ring(llm_cfg, dtype, per_layer: bool, slots: int, n_cols: int) -> KVCache:
  """An empty ring, made by one jitted call (eager per-layer ops cost ~0.1 s here). Its jit commits
  it to a device like every later ring (outputs of the decode chunk are): see `BatchEngine`."""
  ring = init_cache(llm_cfg, slots, n_cols, dtype)
  # per-layer heads-first: the layout the decode loop carries (see llm.per_layer_cache)
  return _constrain_cache(per_layer_cache(ring) if per_layer else ring)


def _grow(ring: KVCache, n_cols: int) -> KVCache:
  """A longer ring with the same contents, oldest column first, ending at the last column."""
  pad = n_cols - ring.segment_ids.shape[1]
  shift = lambda x, axis: jnp.concatenate(
      [jnp.zeros(x.shape[:axis] + (pad,) + x.shape[axis + 1:], x.dtype),
       jnp.roll(x, -ring.index, axis=axis)], axis=axis)
  kv = lambda xs: jax.tree.map(lambda x: shift(x, 2), xs)
  return KVCache(kv(ring.k), kv(ring.v), shift(ring.segment_ids, 1), shift(ring.positions, 1),
                 jnp.zeros((), jnp.int32))


def _decode_chunk(graphdef, logn, valid_vocab, n_steps, state, ring, tokens, positions, alpha,
                  seeds, counters, temps, top_k, top_p):
  """`n_steps` decode steps on the first len(tokens) rows of the ring -> (tokens [B, n], ring)."""
  b, n_cols = tokens.shape[0], ring.segment_ids.shape[1]
  ax = _batch_axis(ring)
  rows = lambda xs: jax.tree.map(lambda x: jax.lax.slice_in_dim(x, 0, b, axis=ax), xs)
  sub = KVCache(rows(ring.k), rows(ring.v), ring.segment_ids[:b], ring.positions[:b], ring.index)

  def body(i, carry):
    tok, sub, out, state = carry
    # The parameters ride in the carry: NNX refuses to merge outer-level tracers inside the loop.
    model = nnx.merge(graphdef, state)
    logits, sub = _forward_one(model, logn, sub, tok, positions + i, alpha[:, None, None])
    sub = sub._replace(index=sub.index % n_cols)
    tok = _sample_rows(logits, valid_vocab, seeds, counters + i, temps, top_k, top_p)
    return tok, sub, out.at[:, i].set(tok), state

  out = jnp.zeros((b, n_steps), jnp.int32)
  _, sub, out, _ = jax.lax.fori_loop(0, n_steps, body, (tokens, sub, out, state))
  back = lambda xs, ys: jax.tree.map(
      lambda x, y: jax.lax.dynamic_update_slice_in_dim(x, y, 0, axis=ax), xs, ys)
  ring = KVCache(back(ring.k, sub.k), back(ring.v, sub.v),
                 ring.segment_ids.at[:b].set(sub.segment_ids),
                 ring.positions.at[:b].set(sub.positions), sub.index)
  return out, ring


def decode_chunk_fn(generator, n_steps: int, compiler_options: dict | None = None):
  """The engine's jitted chunk for `generator`'s model: (state, ring, tokens, positions, alpha,
  seeds, counters, temps, top_k, top_p) -> (tokens [B, n_steps], ring). The ring is donated: every
  step writes one column per row in place (without donation each call copied the whole ring).
  `compiler_options`: XLA's, default `decode_compiler_options()` ({} = XLA's defaults)."""
  g, logn, vv = generator.graphdef, generator.logn, generator.valid_vocab
  if compiler_options is None:
    compiler_options = decode_compiler_options()
  return jax.jit(functools.partial(_decode_chunk, g, logn, vv, n_steps), donate_argnums=(1,),
                 compiler_options=compiler_options)


# --------------------------------------------------------------------------------------------
# The engine.


@dataclasses.dataclass
class _Slot:
  req: Request
  width: int  # the prompt's bucket: ring columns it took
  next_token: int  # sampled, not yet fed to the model
  position: int  # position of next_token
  alpha: float
  counter: int  # tokens sampled so far (the sampling key's step)
  keys: tuple = ()  # the prompt's block keys (prefix cache), continued for its answer's blocks
  answer: list = dataclasses.field(default_factory=list)  # kept tokens (+ the stop token)

  @property
  def fed(self) -> int:
    """Decode steps run = ring columns written since the prompt's (all but the prefill's sample)."""
    return self.counter - 1


@dataclasses.dataclass
class _Plan:
  """How a joining request is prefilled: its bucket, the cached prefix it reuses (`reused` tokens
  from pool slots `table`) and the columns the rest takes (`suffix`), its block keys (to store the
  blocks it computes) and its NTK alpha."""
  req: Request
  width: int
  alpha: float
  reused: int = 0
  suffix: int = 0  # = width without a reused prefix
  table: tuple = ()
  keys: tuple = ()
  prefix_images: int = 0  # pictures inside the reused prefix

  def group(self) -> tuple:
    """Requests with equal groups prefill together (one call, so one shape): bucket, suffix
    columns, pictures-per-row bucket of what is prefilled, NTK alpha (as for the request alone)."""
    n_images = len(self.req.images) - self.prefix_images
    return self.width, self.suffix, next_pow2(n_images) if n_images else 0, self.alpha


@dataclasses.dataclass
class EngineStats:
  steps: int = 0  # decode chunks run
  row_steps: int = 0  # rows x steps computed (incl. padding rows)
  tokens: int = 0  # tokens handed to requests
  admitted: int = 0
  prefills: int = 0  # prefill calls (requests that join together share one)
  max_busy: int = 0  # most slots busy at once
  busy_row_steps: int = 0  # rows x steps that belonged to a request (row_steps minus padding rows)
  prefix_hits: int = 0  # requests that reused cached prefix blocks
  prefix_tokens: int = 0  # prompt tokens taken from the prefix cache instead of prefilled
  answer_blocks: int = 0  # blocks of finished answers stored in the prefix cache
  ring_shrinks: int = 0  # times the ring shrank to what the busy rows need
  rows_moved: int = 0  # busy rows moved to lower slots (so chunks compute fewer rows)


class BatchEngine:
  """Serves `Request`s from any thread; a background thread batches them on the device.

  `generator` is a `qwenvl_jax.infer.generate.Generator` (its parameters, pad/stop ids and context
  window are reused); `slots` bounds the requests decoded together; `chunk` is the decode steps per
  dispatch (new requests join between chunks); `compiler_options`: XLA's for the decode chunk
  (default `decode_compiler_options()`; {} = XLA's defaults, for A/B benchmarks); `gather_s`: how
  long after going idle the engine waits for the clients it just served to come back (module doc);
  `prefix_cache_tokens`: the prefix cache's size in prompt tokens (`serve/prefix.py`; 0 = none).
  """

  def __init__(self, generator, *, slots: int = 16, chunk: int = 8, max_queue: int = 1024,
               compiler_options: dict | None = None, gather_s: float = 0.05,
               prefix_cache_tokens: int = 2048):
    self.gen = generator
    self.cfg = generator.cfg
    self.slots_n = int(slots)
    self.chunk = int(chunk)
    self.max_queue = max_queue
    self.stop_ids = frozenset(generator.stop_ids)
    self.stats = EngineStats()
    self.gather_s = float(gather_s)
    self._returning = 0  # requests that ended when the engine last went idle
    self._idle_since = 0.0
    self._slots: list[_Slot | None] = [None] * self.slots_n
    self._queue: list[Request] = []
    self._jobs: list[Callable[[], None]] = []  # run on the engine thread when no slot is busy
    self._cv = threading.Condition()
    self._closing = False
    self._ring: KVCache | None = None
    n_blocks = int(prefix_cache_tokens) // BLOCK
    self._index = PrefixIndex(n_blocks) if n_blocks > 0 else None
    self._pool = None  # the prefix cache's blocks on the device, made at the first prefill
    self._ended: list[tuple[int, _Slot]] = []  # (ring row, row) ended in this chunk: to the pool
    g, logn = generator.graphdef, generator.logn
    self._prefill = jax.jit(functools.partial(_prefill_rows, g, logn, generator.per_layer),
                            static_argnames=("cache_len",), donate_argnames=("pool",))
    self._sample = jax.jit(_sample_rows, static_argnums=(1,))
    self._insert = jax.jit(_insert, donate_argnums=(0,))
    self._store = jax.jit(_store_ring_blocks, donate_argnums=(0,))
    self._grow = jax.jit(_grow, static_argnums=(1,))
    self._shrink = jax.jit(_shrink, static_argnums=(1,))
    self._move = jax.jit(_move_rows, donate_argnums=(0,))
    dtype = layers.dtype_of(self.cfg.dtype)
    # An inputs-free jit's output is uncommitted unless its shardings are given, and `_insert` would
    # compile a second variant of every shape for it (committed and uncommitted arguments differ).
    # Under a mesh the cache's sharding constraints place (and commit) it; without one, this does.
    placed = SingleDeviceSharding(jax.devices()[0]) if generator.mesh is None else None
    self._new_ring = jax.jit(functools.partial(_new_ring, self.cfg.llm, dtype, generator.per_layer),
                             static_argnums=(0, 1), out_shardings=placed)
    self._new_pool = jax.jit(functools.partial(_new_pool, self.cfg.llm, dtype), static_argnums=(0,),
                             out_shardings=placed and (placed, placed))
    self._chunks = {}  # n_steps -> jitted chunk (shapes add variants under each)
    self._decode = lambda n: self._chunks.setdefault(
        n, decode_chunk_fn(generator, n, compiler_options))
    self._thread = threading.Thread(target=self._run, name="qwenvl-serve-engine", daemon=True)
    self._thread.start()

  # ---- public ----------------------------------------------------------------------------

  def check(self, req: Request):
    """Raises ValueError / ContextLengthError for requests the engine cannot run."""
    n = len(req.ids)
    if n == 0:
      raise ValueError("empty prompt")
    if n > self.gen.max_window:
      raise ContextLengthError(f"prompt of {n} tokens is longer than the context window "
                               f"({self.gen.max_window} tokens)")
    if req.max_tokens < 1:
      raise ValueError("max_tokens must be >= 1")

  def submit(self, req: Request):
    self.submit_all([req])

  def submit_all(self, reqs: Sequence[Request]):
    """Queues requests at once: with free slots they join at the same step boundary (and those
    sharing a prompt bucket share one prefill call)."""
    for req in reqs:
      self.check(req)
    with self._cv:
      if self._closing:
        raise EngineClosed("the server is shutting down")
      if len(self._queue) + len(reqs) > self.max_queue:
        raise EngineClosed("too many queued requests")
      self._queue.extend(reqs)
      self._cv.notify()

  def warm_up(self, prompt_tokens: Sequence[int], max_tokens: int, pictures: bool = False) -> int:
    """Compiles, before serving, every shape that requests of up to `max_tokens` new tokens with
    prompts in the buckets of `prompt_tokens` can meet: prefill per (prompt bucket, batch bucket),
    KV insert per (ring, prompt bucket, batch bucket), sampling and decode chunks per row count and
    ring, ring creation and growth. Without it, each new shape stalls every slot for a compile
    (seconds) the first time traffic meets it. Runs on the engine thread while no request is
    decoding; -> the number of compiled variants added. With the prefix cache, also the
    prefills that reuse a cached prefix (`prefix.suffix_widths`: log2(bucket / 16) per bucket) and
    the copies of finished answers' blocks into the cache (log2(slots x ring / 128) + 1 per ring).
    `pictures`: also the prefills of prompts with one picture per row, in every bucket that holds
    one (a picture chat's first turn; later turns reuse the picture's blocks and prefill text).
    Other shapes with pictures (several per row, a new picture after a reused prefix) still
    compile on first use."""
    done, out = threading.Event(), {}

    def job():
      try:
        out["n"] = self._warm_up(prompt_tokens, max_tokens, pictures)
      except BaseException as e:  # handed to the caller's thread
        out["error"] = e
      finally:
        done.set()

    with self._cv:
      self._jobs.append(job)
      self._cv.notify()
    done.wait()
    if "error" in out:
      raise out["error"]
    return out["n"]

  def busy(self) -> int:
    return sum(s is not None for s in self._slots) + len(self._queue)

  def close(self, timeout: float | None = None):
    """Stops taking requests, finishes the admitted and queued ones, stops the thread."""
    with self._cv:
      self._closing = True
      self._cv.notify()
    self._thread.join(timeout)

  def compiled_count(self) -> int:
    fns = [self._prefill, self._sample, self._insert, self._grow, self._shrink, self._move,
           self._new_ring, self._new_pool, self._store, *self._chunks.values()]
    return sum(f._cache_size() for f in fns)

  # ---- engine thread ---------------------------------------------------------------------

  def _ctx(self):
    mesh = self.gen.mesh
    return jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext()

  def _run(self):
    while True:
      with self._cv:
        while (not self._queue and not self._busy_slots() and not self._closing
               and not self._jobs):
          self._ring = None  # idle: let the next request start from a short ring
          self._cv.wait()
        job = self._jobs.pop(0) if self._jobs and not self._busy_slots() else None
        if job is None and self._closing and not self._queue and not self._busy_slots():
          return
        if job is None:
          self._gather()
      if job is not None:  # runs alone: it uses the slots and the ring
        with self._ctx():
          job()
        continue
      with self._cv:
        free = [i for i, s in enumerate(self._slots) if s is None]
        joining = self._queue[:len(free)]
        del self._queue[:len(free)]
      try:
        with self._ctx():
          if joining:
            self._admit(joining, free)
          if self._busy_slots():
            self._step()
      except Exception as e:  # a device error fails the requests involved, not the server
        log.exception("engine step failed")
        for req in joining:
          if not req.done:
            self._finish(req, f"error: {type(e).__name__}: {e}")
        for i, s in enumerate(self._slots):
          if s is not None:
            self._finish(s.req, f"error: {type(e).__name__}: {e}")
            self._slots[i] = None
        self._ring = None
        self._ended = []
        self._pool = None  # donated to the failed call; its claimed blocks may be unwritten
        if self._index is not None:
          self._index.clear()

  def _gather(self):
    """With no slot busy, waits (holding `_cv`) until the requests that ended as the engine went
    idle are queued again, besides those queued then, at most until `gather_s` after it went idle
    (module doc)."""
    want = min(self._returning, self.slots_n)
    self._returning = 0
    if self._busy_slots():
      return
    deadline = self._idle_since + self.gather_s
    while len(self._queue) < want and not self._closing:
      left = deadline - time.perf_counter()
      if left <= 0:
        return
      self._cv.wait(left)

  def _text_dummy(self, width: int, n_cols: int, suffix: int) -> _Plan:
    """A warm-up request of `width` text tokens whose first `width - suffix` reuse a cached prefix
    (pool slot 0, whatever it holds; no keys, so it stores nothing)."""
    req = Request([self.gen.pad_id] * width, (), n_cols - width, lambda *a: None)
    return _Plan(req, width, self.gen.alpha_for([width]), width - suffix, suffix,
                 (0,) * ((width - suffix) // BLOCK))

  def _picture_dummy(self, width: int, n_cols: int) -> _Plan | None:
    """A warm-up request of `width` tokens holding one blank picture in the served form (uint8, as
    `Predictor.image_array` gives), prefilled in full; None if the bucket cannot hold one."""
    span, size = self.cfg.image_span, self.cfg.vision.image_size
    if len(span) > width:
      return None
    ids = span + [self.gen.pad_id] * (width - len(span))
    req = Request(ids, (np.zeros((size, size, 3), np.uint8),), n_cols - width, lambda *a: None)
    return _Plan(req, width, self.gen.alpha_for([width]), suffix=width)

  def _warm_up(self, prompt_tokens: Sequence[int], max_tokens: int, pictures: bool) -> int:
    before = self.compiled_count()
    widths = sorted({prompt_bucket(max(1, int(n)), self.gen.min_prompt_bucket)
                     for n in prompt_tokens})
    ring_of = lambda w: ring_columns(w + max(1, int(max_tokens)))
    rings = sorted({ring_of(w) for w in widths})
    # every request count a prefill group can have (-> its batch bucket) and decode row count
    counts = sorted({min(self.slots_n, next_pow2(n)) for n in range(1, self.slots_n + 1)})
    suffixes = prefix.suffix_widths if self._index is not None else lambda w: []
    saved = self.stop_ids, self.stats
    self.stop_ids = frozenset()  # dummy rows must stay busy through their chunk
    self.stats = EngineStats()  # the dummies are not traffic
    try:
      for n_cols in rings:
        for w in (w for w in widths if ring_of(w) <= n_cols):
          makers = [functools.partial(self._text_dummy, w, n_cols, suffix)
                    for suffix in [w, *suffixes(w)]]
          if pictures and self._picture_dummy(w, n_cols) is not None:
            makers.append(functools.partial(self._picture_dummy, w, n_cols))
          for n, make in itertools.product(counts, makers):
            self._ring = None
            self._ring_for(n_cols)
            self._admit_plans([make() for _ in range(n)], list(range(n)))
            self._step()
            self._slots = [None] * self.slots_n
      if self._pool is not None:  # storing finished answers' blocks: every entry count per ring
        for n_cols in rings:
          self._ring = None
          self._ring_for(n_cols)
          for size in (8 << k for k in range(max(1, self.slots_n * n_cols // BLOCK // 8)
                                             .bit_length())):
            self._pool = self._store(self._pool, self._ring, *self._store_entries([], [], [], size))
      for small, large in zip(rings, rings[1:]):  # a ring that grows while requests run
        self._ring = None
        self._ring_for(small)
        self._ring_for(large)
      for small, large in itertools.combinations(rings, 2):  # and shrinks when they end
        self._ring = None
        self._ring_for(large)
        self._ring = self._shrink(self._ring, small)
      for n_cols in rings:  # busy rows moved down
        self._ring = None
        self._ring_for(n_cols)
        self._ring = self._move(self._ring, *self._move_entries([], []))
      jax.block_until_ready(self._ring)
    finally:
      self.stop_ids, self.stats = saved
      self._slots = [None] * self.slots_n
      self._ring = None
      self._returning = 0  # the dummies do not come back
    return self.compiled_count() - before

  def _busy_slots(self) -> list[int]:
    return [i for i, s in enumerate(self._slots) if s is not None]

  def _finish(self, req: Request, reason: str, tokens: Sequence[int] = ()):
    req.done = True
    req.emit(list(tokens), reason)

  def _ring_for(self, need: int):
    """Makes sure the ring has >= `need` columns."""
    if self._ring is not None and self._ring.segment_ids.shape[1] >= need:
      return
    n_cols = ring_columns(need)
    if self._ring is None:
      self._ring = self._new_ring(self.slots_n, n_cols)
    else:
      self._ring = self._grow(self._ring, n_cols)

  def _admit(self, joining: list[Request], free: list[int]):
    """Prefills the joining requests into free slots, one prefill call per group of requests that
    share a prompt bucket, the columns their uncached tokens take, an images-per-row bucket and an
    NTK alpha (what a batch-1 prefill of each would use), so each row's logits are those it would
    get alone. A group's rows are padded to a power of two: prefill compiles once per (prompt
    bucket, uncached columns, batch bucket <= slots)."""
    live = []
    for req in joining:
      if req.cancelled:
        self._finish(req, "cancelled")
      else:
        live.append(req)
    self._admit_plans([self._plan(req) for req in live], free)

  def _admit_plans(self, plans: list[_Plan], free: list[int]):
    groups: dict[tuple, list[_Plan]] = {}
    for plan in plans:
      groups.setdefault(plan.group(), []).append(plan)
    pinned = {slot for plan in plans for slot in plan.table}  # read by this admission
    free = iter(free)
    for group in groups.values():
      self._prefill_group(group, [next(free) for _ in group], pinned)
    self.stats.max_busy = max(self.stats.max_busy, len(self._busy_slots()))

  def _plan(self, req: Request) -> _Plan:
    n = len(req.ids)
    width = prompt_bucket(n, self.gen.min_prompt_bucket)
    plan = _Plan(req, width, self.gen.alpha_for([n]), suffix=width)
    if self._index is None:
      return plan
    plan.keys = tuple(prefix.block_keys(req.ids, req.images, self.cfg.image_start_id,
                                        salt=np.float32(plan.alpha).tobytes()))
    spans = prefix.image_spans(req.ids, self.cfg.image_start_id, self.cfg.image_end_id)
    cached = self._index.cached_blocks(plan.keys[:(n - 1) // BLOCK]) * BLOCK
    plan.reused = prefix.reuse_length(n, width, cached, spans)
    if plan.reused:
      plan.suffix = prefix.suffix_width(n - plan.reused)
    plan.table = tuple(self._index.lookup(plan.keys[:plan.reused // BLOCK]))
    plan.prefix_images = sum(s < plan.reused for s, _ in spans)
    return plan

  def _stores(self, plans: list[_Plan], b: int, pinned: set[int]):
    """(rows, first columns, pool slots) of the new blocks a group's prefill computes, padded to
    one entry per block of its cache (padding entries write to slot N: dropped)."""
    width = plans[0].width
    n_entries = b * (width // BLOCK)
    rows, cols = np.zeros(n_entries, np.int32), np.zeros(n_entries, np.int32)
    dst = np.full(n_entries, self._index.n_blocks if self._index is not None else 0, np.int32)
    k = 0
    for j, plan in enumerate(plans):
      n = len(plan.req.ids)
      for m in range(plan.reused // BLOCK, len(plan.keys)):
        if plan.keys[m] in self._index:
          continue
        slot = self._index.claim(plan.keys[m], pinned)
        if slot is None:
          break
        pinned.add(slot)  # one write per slot per call
        rows[k], cols[k], dst[k] = j, width - n + m * BLOCK, slot
        k += 1
    return rows, cols, dst

  def _prefill_group(self, plans: list[_Plan], slots: list[int], pinned: set[int]):
    reqs = [p.req for p in plans]
    width, suffix, alpha = plans[0].width, plans[0].suffix, plans[0].alpha
    # As given: uint8 pictures are normalised on the device (float32 ones are taken as normalised).
    images = [[np.asarray(a) for a in p.req.images[p.prefix_images:]] for p in plans]
    batch = self.gen.prepare([list(p.req.ids[p.reused:]) for p in plans], images,
                             prompt_len=suffix)
    b = batch.ids.shape[0]
    reused = np.zeros(b, np.int32)
    reused[:len(plans)] = [p.reused for p in plans]
    positions = batch.positions + reused[:, None] * (batch.segment_ids > 0)
    n_blocks = (width - suffix) // BLOCK  # prefix columns, right-aligned blocks
    table = np.zeros((b, n_blocks), np.int32)
    for j, p in enumerate(plans):
      table[j, n_blocks - len(p.table):] = p.table
    if self._index is not None and self._pool is None:
      self._pool = self._new_pool(self._index.n_blocks)
    stores = self._stores(plans, b, pinned)
    self._ring_for(width + max(r.max_tokens for r in reqs))
    put = self.gen._put
    logits, small, self._pool = self._prefill(
        self.gen.state, self._pool, table, reused, *stores, put(batch.ids), put(batch.segment_ids),
        put(positions), put(batch.images), put(batch.num_images), jnp.float32(alpha),
        cache_len=width)
    rows = np.full(b, self.slots_n, np.int32)  # padding rows land outside the ring: dropped
    rows[:len(reqs)] = slots
    self._ring = self._insert(self._ring, small, jnp.asarray(rows))
    knobs = self._knobs(reqs, b)
    first = np.asarray(self._sample(logits, self.gen.valid_vocab, knobs["seeds"],
                                    np.zeros(b, np.int32), knobs["temps"], knobs["top_k"],
                                    knobs["top_p"]))
    self.stats.prefills += 1
    for j, (req, slot) in enumerate(zip(reqs, slots)):
      self._slots[slot] = _Slot(req, width, int(first[j]), len(req.ids), alpha, 1, plans[j].keys)
      self.stats.admitted += 1
      self.stats.prefix_hits += int(reused[j] > 0)
      self.stats.prefix_tokens += int(reused[j])
      self._hand_out(slot, [int(first[j])])

  @staticmethod
  def _knobs(reqs: Sequence[Request], b: int) -> dict:
    pad = b - len(reqs)
    col = lambda f, dt, fill: np.asarray([f(r) for r in reqs] + [fill] * pad, dt)
    return dict(seeds=col(lambda r: r.seed & 0xFFFFFFFF, np.uint32, 0),
                temps=col(lambda r: r.temperature, np.float32, 0.0),
                top_k=col(lambda r: r.top_k, np.int32, 0),
                top_p=col(lambda r: r.top_p, np.float32, 1.0))

  def _fit_ring(self, busy: list[int]):
    """Shrinks the ring to the shortest that holds every busy row's prompt bucket and answer budget
    (`_ring_for`'s rule), once the requests that needed more have ended."""
    n_cols = self._ring.segment_ids.shape[1]
    need = ring_columns(max(self._slots[i].width + self._slots[i].req.max_tokens for i in busy))
    if need < n_cols:
      self._ring = self._shrink(self._ring, need)
      self.stats.ring_shrinks += 1

  def _compact(self, busy: list[int]) -> list[int]:
    """Moves the busy rows above slot len(busy) into free slots below it, when that lets chunks
    compute fewer rows (a smaller power of two); -> the busy slots after."""
    if next_pow2(len(busy)) >= next_pow2(busy[-1] + 1):
      return busy
    src = [i for i in busy if i >= len(busy)]
    dst = [i for i in range(len(busy)) if self._slots[i] is None]
    self._ring = self._move(self._ring, *self._move_entries(src, dst))
    for i, j in zip(src, dst):
      self._slots[j], self._slots[i] = self._slots[i], None
    self.stats.rows_moved += len(src)
    return list(range(len(busy)))

  def _move_entries(self, src, dst) -> tuple[np.ndarray, np.ndarray]:
    """`_move_rows`' (src, dst), padded to the slot count (one compiled shape per ring)."""
    return _padded(src, self.slots_n, 0), _padded(dst, self.slots_n, self.slots_n)

  def _step(self):
    busy = self._compact(self._busy_slots())
    self._fit_ring(busy)
    b = min(self.slots_n, next_pow2(busy[-1] + 1))
    slots = self._slots[:b]
    steps = self.chunk  # fixed: one compiled loop per (rows, ring) shape
    reqs = [s.req if s else None for s in slots]
    dummy = Request((), (), 1, lambda *a: None)
    knobs = self._knobs([r or dummy for r in reqs], b)
    get = lambda f, fill, dt: np.asarray([f(s) if s else fill for s in slots], dt)
    out, self._ring = self._decode(steps)(
        self.gen.state, self._ring, get(lambda s: s.next_token, self.gen.pad_id, np.int32),
        get(lambda s: s.position, 0, np.int32), get(lambda s: s.alpha, 1.0, np.float32),
        knobs["seeds"], get(lambda s: s.counter, 0, np.int32), knobs["temps"], knobs["top_k"],
        knobs["top_p"])
    out = np.asarray(out)
    self.stats.steps += 1
    self.stats.row_steps += b * steps
    self.stats.busy_row_steps += len(busy) * steps
    for i, s in enumerate(slots):
      if s is None:
        continue
      s.next_token, s.position, s.counter = int(out[i, -1]), s.position + steps, s.counter + steps
      self._hand_out(i, out[i].tolist())
    self._store_answers()
    if not self._busy_slots():  # idle: expect the clients of the requests that just ended back
      with self._cv:  # (and keep those already queued: early returners of a staggered wave)
        self._returning = len(self._queue) + sum(s is not None and not s.req.cancelled
                                                 for s in slots)
      self._idle_since = time.perf_counter()

  def _hand_out(self, slot: int, tokens: list[int]):
    """Gives a row's new tokens to its request, ending it at a stop id / max_tokens / cancel."""
    row = self._slots[slot]
    req = row.req
    if req.cancelled:
      self._slots[slot] = None
      self._finish(req, "cancelled")
      return
    keep, reason = [], None
    for t in tokens:
      if t in self.stop_ids:
        reason = "stop"
        break
      keep.append(t)
      if req.generated + len(keep) >= req.max_tokens:
        reason = "length"
        break
    req.generated += len(keep)
    self.stats.tokens += len(keep)
    row.answer += keep
    if reason == "stop":
      row.answer.append(t)  # a chat's next turn repeats it (ChatML's <|im_end|>)
    if reason is None:
      req.emit(keep, None)
    else:
      self._slots[slot] = None
      if row.fed:
        self._ended.append((slot, row))
      self._finish(req, reason, keep)

  def _store_answers(self):
    """Stores the blocks of the rows that ended in the last chunk (prompt, then answer) that the
    prefix cache lacks, read from the ring before anything overwrites them (`prefix.ring_blocks`)."""
    ended, self._ended = self._ended, []
    if self._index is None or self._pool is None or not ended:
      return
    n_cols = self._ring.segment_ids.shape[1]
    rows, back, dst, pinned = [], [], [], set()
    for ring_row, row in ended:
      req, n = row.req, len(row.req.ids)
      keep = prefix.ring_blocks(n, row.fed, len(row.answer), n_cols)
      seq = list(req.ids) + row.answer[:max(0, keep.stop * BLOCK - n)]
      keys = prefix.block_keys(seq, req.images, self.cfg.image_start_id,
                               salt=np.float32(row.alpha).tobytes(), known=row.keys)
      for m in keep:
        if keys[m] in self._index:
          continue
        slot = self._index.claim(keys[m], pinned)
        if slot is None:
          break
        pinned.add(slot)
        rows.append(ring_row)
        back.append(n + row.fed - m * BLOCK)
        dst.append(slot)
    if not dst:
      return
    self._pool = self._store(self._pool, self._ring, *self._store_entries(rows, back, dst))
    self.stats.answer_blocks += len(dst)

  def _store_entries(self, rows, back, dst, size: int | None = None) -> tuple[np.ndarray, ...]:
    """`_store_ring_blocks`' entries padded to `size`, by default a power of two (>= 8: few
    compiled shapes), the padding entries writing to slot N (dropped)."""
    size = size or max(8, next_pow2(len(dst)))
    return _padded(rows, size, 0), _padded(back, size, 0), _padded(dst, size, self._index.n_blocks)
