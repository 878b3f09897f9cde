"""The serving engine's prefix cache: keys/values of prompt blocks computed once and reused by later
prompts that begin with the same tokens (a shared system prompt, the earlier turns of a chat).

Why this shape:
* Prompts are cut into blocks of `BLOCK` tokens. A block's key hashes its tokens, the key of the
  block before it (so a key names the whole prompt up to the block's end), the pictures whose spans
  start in it (their placeholder tokens are the same for every picture, so the pixels are hashed)
  and the request's RoPE scaling (dynamic NTK changes the stored keys).
* The blocks live on the device in one pool ([L, N, BLOCK, H, D] for k and for v), written by the
  prefill call that computed them; `PrefixIndex` maps keys to pool slots, least recently used out.
* A prompt of n tokens keeps its prompt bucket P (the columns it gives the ring are those of a full
  prefill). It reuses its longest cached prefix Q that ends on a block and outside any picture's
  span, leaving at least one token (the last position's logits start the answer), and prefills the
  other n - Q tokens in the bucket's last T = next_pow2(n - Q) columns; the cached blocks fill the
  columns before them, right-aligned. A prefill's shape is then (P, T) whatever Q is: log2(P / 16)
  more compiled shapes per bucket, not one per prefix length, and requests with different cached
  prefixes prefill together.
* A finished answer's blocks are stored too (from the decode ring, once its row ends), so a chat's
  next turn - the same prompt, the answer, then the new question - reuses the answer instead of
  prefilling it again. Its keys come from the generated ids; where the client's resent answer
  tokenises differently, the chain stops matching there and the rest is prefilled.
"""

from __future__ import annotations

import collections
import hashlib
from typing import Sequence

import numpy as np

BLOCK = 16  # tokens per cached block


def _digest(*parts: bytes) -> bytes:
  h = hashlib.blake2b(digest_size=16)
  for p in parts:
    h.update(p)
  return h.digest()


def block_keys(ids: Sequence[int], images: Sequence[np.ndarray], image_start_id: int,
               salt: bytes = b"", known: Sequence[bytes] = ()) -> list[bytes]:
  """The key of each full block of `ids` (the k-th picture is the one of the k-th image start).
  `known`: the keys of its first blocks, computed before (a prompt's, when its answer is added):
  the chain continues from them and only the pictures starting in later blocks are hashed."""
  ids = np.asarray(ids, np.int32)
  starts = np.flatnonzero(ids == image_start_id)
  picture = lambda a: _digest(str((a.shape, a.dtype)).encode(), np.ascontiguousarray(a).tobytes())
  keys = list(known)
  prev = keys[-1] if keys else _digest(salt)
  for m in range(len(keys), len(ids) // BLOCK):
    lo, hi = m * BLOCK, (m + 1) * BLOCK
    inside = [picture(np.asarray(images[k])) for k, s in enumerate(starts)
              if lo <= s < hi and k < len(images)]
    prev = _digest(prev, ids[lo:hi].tobytes(), *inside)
    keys.append(prev)
  return keys


def suffix_width(n: int) -> int:
  """Columns the prefill of n uncached tokens takes (a power of two, at least one block)."""
  return max(BLOCK, 1 << max(0, n - 1).bit_length())


def suffix_widths(width: int) -> list[int]:
  """Every suffix width a prompt of bucket `width` can have when it reuses a prefix."""
  return [t for t in (BLOCK << k for k in range(width.bit_length())) if t < width]


def reuse_length(n: int, width: int, cached: int, spans: Sequence[tuple[int, int]]) -> int:
  """Tokens to take from the cache for an n-token prompt in bucket `width` whose first `cached`
  tokens are cached (0 = none); `spans` are the pictures' (start, end) positions, inclusive."""
  q = min(cached, n - 1) // BLOCK * BLOCK
  while q > 0:
    if not any(s < q <= e for s, e in spans) and q + suffix_width(n - q) <= width:
      return q
    q -= BLOCK
  return 0


def ring_blocks(prompt_len: int, fed: int, sampled: int, n_cols: int) -> range:
  """The blocks of a finished row whose keys/values its ring still holds: the row's prompt (n
  tokens) then its answer; `fed` = decode steps the row ran (each wrote one column: the tokens
  sampled before it, then past the row's end), `sampled` = answer tokens that belong to the
  sequence (kept tokens + the stop token). Valid columns hold the first n + min(fed, sampled)
  tokens; the last `fed` columns were written since the prompt, so in a ring of `n_cols` the
  first n + fed - n_cols tokens were overwritten by the row's own steps past its end."""
  valid = prompt_len + min(fed, sampled)
  first = -(-max(0, prompt_len + fed - n_cols) // BLOCK)
  return range(first, valid // BLOCK)


def image_spans(ids: Sequence[int], start_id: int, end_id: int) -> list[tuple[int, int]]:
  ids = np.asarray(ids)
  return list(zip(np.flatnonzero(ids == start_id).tolist(), np.flatnonzero(ids == end_id).tolist()))


class PrefixIndex:
  """Keys of the blocks held in a pool of `n_blocks` slots, least recently used first."""

  def __init__(self, n_blocks: int):
    self.n_blocks = int(n_blocks)
    self._slots: collections.OrderedDict[bytes, int] = collections.OrderedDict()
    self._free = list(range(self.n_blocks - 1, -1, -1))

  def __contains__(self, key: bytes) -> bool:
    return key in self._slots

  def __len__(self) -> int:
    return len(self._slots)

  def cached_blocks(self, keys: Sequence[bytes]) -> int:
    """How many of `keys`, from the first, are held."""
    n = 0
    while n < len(keys) and keys[n] in self._slots:
      n += 1
    return n

  def lookup(self, keys: Sequence[bytes]) -> list[int]:
    """The slots of held `keys` (marked as just used)."""
    for k in keys:
      self._slots.move_to_end(k)
    return [self._slots[k] for k in keys]

  def claim(self, key: bytes, pinned: set[int]) -> int | None:
    """A slot for a new block: a free one, else the least recently used one not in `pinned` (slots
    the current prefill reads or writes); None when every slot is pinned."""
    if self._free:
      slot = self._free.pop()
    else:
      old = next((k for k, s in self._slots.items() if s not in pinned), None)
      if old is None:
        return None
      slot = self._slots.pop(old)
    self._slots[key] = slot
    return slot

  def clear(self):
    self._slots.clear()
    self._free = list(range(self.n_blocks - 1, -1, -1))
