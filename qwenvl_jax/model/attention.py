"""Self-attention kernels chosen by `model.attention`: "xla" | "splash" | "cudnn" | "auto".

  xla     `layers.dot_product_attention`: einsum scores [B, H, T, S] in float32 + softmax. Runs
          everywhere; the reference the others are tested against.
  splash  Pallas TPU splash attention (`jax.experimental.pallas.ops.tpu.splash_attention`): blockwise
          online softmax, no [T, S] scores in HBM, and blocks the mask rules out are skipped. Causal +
          segment-id masking for packed LLM rows; full (bidirectional) for the ViT, whose 1,024
          patches at 448 px (64 at 112 px) are padded to the kernel block with segment id 0. On CPU it
          runs in Pallas interpret mode (tests); on TPU it compiles to Mosaic.
  cudnn   `jax.nn.dot_product_attention(implementation="cudnn")` (GPU, bf16/fp16 only).
  auto    splash on TPU, cudnn on GPU when the compute dtype is bf16/fp16, xla otherwise.

Masks follow `model/masks.py`: a query attends to a key iff same non-zero segment and key position <=
query position (causal) — splash's causal-by-index + same-segment is the same rule for rows whose
positions count up inside each segment (training and prefill rows; the KV-cache decode keeps XLA).
Queries on padding (segment 0) get unspecified outputs (XLA: uniform weights; splash: attends to the
other padding): nothing reads them. Under a mesh the kernel runs per shard (`shard_map`): batch over
(data, fsdp), heads over tensor, as the activation rules place them.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from qwenvl_jax.model import layers
from qwenvl_jax.sharding import active_spec, compile_platform

_BLOCK = 128  # splash tile (q and kv); sequences are padded to a multiple of it


def resolve(impl: str, dtype=jnp.float32, platform: str | None = None) -> str:
  """The implementation "auto" means on `platform` (default: JAX's default backend)."""
  if impl != "auto":
    return impl
  platform = platform or compile_platform()
  if platform == "tpu":
    return "splash"
  if platform in ("gpu", "cuda", "rocm") and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
    return "cudnn"
  return "xla"


def self_attention(q, k, v, *, impl: str, scale: float, causal: bool, segment_ids=None,
                   positions=None):
  """q, k, v [B, T, H, D] -> [B, T, H, D]. segment_ids / positions [B, T] (None: one segment, 0..T-1)."""
  impl = resolve(impl, q.dtype)
  if impl == "splash":
    return _splash(q, k, v, scale=scale, causal=causal, segment_ids=segment_ids)
  mask = None
  if causal or segment_ids is not None:
    from qwenvl_jax.model.masks import attention_mask
    b, t = q.shape[:2]
    seg = jnp.ones((b, t), jnp.int32) if segment_ids is None else segment_ids
    pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t)) if positions is None else positions
    mask = attention_mask(seg, seg, pos, pos, causal=causal)
  if impl == "cudnn":
    return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, implementation="cudnn")
  return layers.dot_product_attention(q, k, v, mask, scale)


# --------------------------------------------------------------------------------------------
# Splash.


def _splash_kernel(heads: int, length: int, causal: bool, interpret: bool):
  if compile_platform() != jax.default_backend():
    # AOT compile for a TPU topology that is not here: no device can evaluate the mask tables
    # eagerly, so they become constants of the current trace (built per trace, not cached).
    return _make_splash_kernel(heads, length, causal, interpret)
  with jax.ensure_compile_time_eval():  # concrete mask tables: the kernel is cached across traces
    return _cached_splash_kernel(heads, length, causal, interpret)


@functools.lru_cache(maxsize=32)
def _cached_splash_kernel(heads: int, length: int, causal: bool, interpret: bool):
  return _make_splash_kernel(heads, length, causal, interpret)


def _make_splash_kernel(heads: int, length: int, causal: bool, interpret: bool):
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

  one = sm.CausalMask((length, length)) if causal else sm.FullMask((length, length))
  block = min(_BLOCK, length)
  sizes = sk.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                        block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block,
                        block_kv_dq=block)
  return sk.make_splash_mha(sm.MultiHeadMask([one] * heads), block_sizes=sizes, head_shards=1,
                            q_seq_shards=1, interpret=interpret)


def _splash(q, k, v, *, scale: float, causal: bool, segment_ids):
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk

  b, t, h, d = q.shape
  padded = -(-t // _BLOCK) * _BLOCK
  seg = jnp.ones((b, t), jnp.int32) if segment_ids is None else segment_ids.astype(jnp.int32)
  q = (q * scale).astype(q.dtype)  # the kernel does not scale q
  if padded != t:
    pad = ((0, 0), (0, padded - t), (0, 0), (0, 0))
    q, k, v = jnp.pad(q, pad), jnp.pad(k, pad), jnp.pad(v, pad)
    seg = jnp.pad(seg, ((0, 0), (0, padded - t)))  # segment 0: no real query attends to it
  # The kernel takes [H, T, D] per example.
  q, k, v = (x.transpose(0, 2, 1, 3) for x in (q, k, v))
  interpret = compile_platform() != "tpu"

  def per_shard(q, k, v, seg):
    kernel = _splash_kernel(q.shape[1], padded, causal, interpret)
    one = lambda q, k, v, s: kernel(q, k, v, segment_ids=sk.SegmentIds(q=s, kv=s))
    return jax.vmap(one)(q, k, v, seg)

  mesh, qkv_spec = active_spec(("act_batch", "act_heads", None, None), q.shape)
  if mesh is None or mesh.size == 1:
    out = per_shard(q, k, v, seg)
  else:
    # A Pallas kernel is opaque to XLA's partitioner (it would gather its inputs): run it per
    # device block, batch and heads placed as the activation rules place them.
    from jax.sharding import PartitionSpec as P
    seg_spec = P(qkv_spec[0], None)
    out = jax.shard_map(per_shard, mesh=mesh, in_specs=(qkv_spec, qkv_spec, qkv_spec, seg_spec),
                        out_specs=qkv_spec, check_vma=False)(q, k, v, seg)
  return out.transpose(0, 2, 1, 3)[:, :t]
