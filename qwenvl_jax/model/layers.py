"""Building blocks shared by the ViT, the adapter and the LLM.

Parameters are created through `param()`, which attaches logical axis names (`out_sharding`) and
switches Flax's eager sharding off for that variable: placement is decided later, in one place, by
`qwenvl_jax.sharding` (see its docstring). Norms and softmax run in float32 whatever the compute
dtype; matmuls run in the compute dtype with float32 master weights cast on use.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from qwenvl_jax.model import lora, quant
from qwenvl_jax.sharding import active_spec, compile_platform, constrain

Names = tuple[str | None, ...]

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def dtype_of(name_or_dtype) -> jnp.dtype:
  return DTYPES[name_or_dtype] if isinstance(name_or_dtype, str) else name_or_dtype


def param(rngs: nnx.Rngs | None, init: Callable, shape: Sequence[int], names: Names,
          dtype=jnp.float32) -> nnx.Param:
  """A parameter with logical axis names; `rngs=None` for deterministic initialisers."""
  assert len(names) == len(shape), (names, shape)
  key = rngs.params() if rngs is not None else jax.random.key(0)
  return nnx.Param(init(key, tuple(shape), dtype), out_sharding=tuple(names), eager_sharding=False)


class Buffer(nnx.Variable):
  """A fixed, non-trainable tensor that is still part of the checkpoint (e.g. sin-cos tables)."""


def normal(stddev: float = 0.02):
  return jax.nn.initializers.normal(stddev)


zeros = jax.nn.initializers.zeros
ones = jax.nn.initializers.ones


def _as_matrices(x: jax.Array, kernel: jax.Array, n_in: int) -> tuple[jax.Array, jax.Array]:
  """x [..., *in] -> [rows, prod(in)] and kernel [*in, *out] -> [prod(in), prod(out)] (free reshapes)."""
  k = kernel.reshape(math.prod(kernel.shape[:n_in]), -1)
  return x.reshape(-1, k.shape[0]), k


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def matrix_product(x: jax.Array, kernel: jax.Array, n_in: int) -> jax.Array:
  """x . kernel contracting x's trailing `n_in` dims with the kernel's leading ones, computed as one
  matrix product. The custom VJP keeps the kernel itself as the residual (a reshaped kernel would
  be a new value, which a layer scan stores per layer: a copy of every weight each step)."""
  return _matrix_product_fwd(x, kernel, n_in)[0]


def _matrix_product_fwd(x, kernel, n_in):
  x2, k = _as_matrices(x, kernel, n_in)
  return (x2 @ k).reshape(*x.shape[:x.ndim - n_in], *kernel.shape[n_in:]), (x, kernel)


def _matrix_product_bwd(n_in, residuals, dy):
  x, kernel = residuals
  x2, k = _as_matrices(x, kernel, n_in)
  dy2 = dy.reshape(-1, k.shape[1])
  return (dy2 @ k.T).reshape(x.shape), (x2.T @ dy2).reshape(kernel.shape)


matrix_product.defvjp(_matrix_product_fwd, _matrix_product_bwd)


class Linear(nnx.Module):
  """y = x . W (+ b) contracting x's trailing `len(in_shape)` dims with W's leading ones.

  Multi-dimensional in/out shapes keep heads as their own axis (e.g. a fused qkv kernel
  [embed, 3, heads, head_dim]) so the sharding rules can address them by name.
  """

  def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int], in_names: Names,
               out_names: Names, *, use_bias: bool, rngs: nnx.Rngs, dtype=jnp.float32,
               param_dtype=jnp.float32, init_std: float = 0.02):
    self.n_in = len(in_shape)
    self.names = (tuple(in_names), tuple(out_names))
    self.dtype = dtype
    self.kernel = param(rngs, normal(init_std), (*in_shape, *out_shape), (*in_names, *out_names),
                        param_dtype)
    self.bias = param(rngs, zeros, out_shape, out_names, param_dtype) if use_bias else None
    self.quant = None  # a quant.QuantSpec once `quant.quantize_model` replaced `kernel`
    self.lora_a = self.lora_b = nnx.data(None)  # LoRA factors, added by `lora.apply_lora`

  def weight(self) -> jax.Array:
    """The kernel in the compute dtype; the one place a quantised kernel is dequantised."""
    if self.quant is not None:
      return quant.dequantize(self.kernel_q[...], self.kernel_scale[...], self.quant, self.dtype)
    return self.kernel[...].astype(self.dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.weight()
    n = self.n_in
    if self._as_matrix(kernel.shape):
      y = matrix_product(x.astype(self.dtype), kernel, n)
    else:
      y = jax.lax.dot_general(x.astype(self.dtype), kernel,
                              ((tuple(range(x.ndim - n, x.ndim)), tuple(range(n))), ((), ())))
    if self.lora_a is not None:
      y = y + lora.lora_delta(self, x)
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y

  def _as_matrix(self, shape: Sequence[int]) -> bool:
    """Whether to multiply by the kernel as a [prod(in), prod(out)] matrix (free reshapes): on CPU,
    where XLA copies a kernel contracted over several dims (the qkv kernel [embed, 3, heads,
    head_dim] in the backward's x-gradient) into a transposed matrix first, and writes that
    kernel's gradient transposed too: 0.8 s of a 16 s step of the 0.64B benchmark. Kept only where
    the merge needs no resharding (only each group's first dim sharded); elsewhere (TPU's tiled
    layouts) the kernel keeps its axes."""
    n = self.n_in
    if (n == 1 and len(shape) == 2) or compile_platform() != "cpu":
      return False
    _, spec = active_spec((*self.names[0], *self.names[1]), shape)
    if spec is None:
      return True
    spec = tuple(spec) + (None,) * (len(shape) - len(spec))
    return all(s is None for s in spec[1:n] + spec[n + 1:])


class LayerNorm(nnx.Module):
  """LayerNorm with scale and bias, statistics in float32, output in the input dtype."""

  def __init__(self, dim: int, eps: float, names: Names, *, param_dtype=jnp.float32):
    self.eps = eps
    self.scale = param(None, ones, (dim,), names, param_dtype)
    self.bias = param(None, zeros, (dim,), names, param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    xf = x.astype(jnp.float32)
    mean = xf.mean(-1, keepdims=True)
    var = jnp.square(xf - mean).mean(-1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + self.eps)
    y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
    return y.astype(x.dtype)


class RMSNorm(nnx.Module):
  """Qwen's RMSNorm: normalise in float32, cast back to the input dtype, then scale."""

  def __init__(self, dim: int, eps: float, names: Names, *, param_dtype=jnp.float32):
    self.eps = eps
    self.scale = param(None, ones, (dim,), names, param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    xf = x.astype(jnp.float32)
    y = (xf * jax.lax.rsqrt(jnp.square(xf).mean(-1, keepdims=True) + self.eps)).astype(x.dtype)
    return y * self.scale[...].astype(x.dtype)


# --------------------------------------------------------------------------------------------
# Rotary embeddings (NeoX "rotate half" convention over the full head dim, as in Qwen).


def rope_inv_freq(head_dim: int, base: jax.Array | float) -> jax.Array:
  return 1.0 / (jnp.asarray(base, jnp.float32) ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))


def ntk_base(base: float, head_dim: int, alpha: jax.Array | float) -> jax.Array:
  """Dynamic-NTK base: base * alpha^(d / (d - 2)) (identity for alpha = 1)."""
  return base * jnp.asarray(alpha, jnp.float32) ** (head_dim / (head_dim - 2))


def ntk_alpha(context_len: int, seq_length: int) -> float:
  """The reference's alpha for a first pass over `context_len` tokens (1 when it fits)."""
  ratio = math.log(context_len / seq_length, 2) + 1 if context_len > 0 else 0
  return max(2 ** math.ceil(ratio) - 1, 1)


def rope_cos_sin(positions: jax.Array, head_dim: int, base: jax.Array | float):
  """cos, sin of shape [B, T, head_dim] in float32 for integer positions [B, T]."""
  freqs = positions.astype(jnp.float32)[..., None] * rope_inv_freq(head_dim, base)
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """x [B, T, H, D]: x * cos + rotate_half(x) * sin, computed in float32."""
  xf = x.astype(jnp.float32)
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
  return (xf * cos[:, :, None, :] + rotated * sin[:, :, None, :]).astype(x.dtype)


# --------------------------------------------------------------------------------------------
# Attention.


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None,
                          scale: float) -> jax.Array:
  """q [B, T, H, D], k/v [B, S, H, D], mask broadcastable to [B, H, T, S] (True = attend).

  Scores and softmax in float32 (the reference uses the compute dtype; float32 is the more
  accurate choice and identical in float32 parity tests). Fully masked rows (padding queries)
  get uniform weights instead of NaNs.
  """
  probs = attention_probs(q, k, mask, scale).astype(v.dtype)
  return jnp.einsum("bhts,bshd->bthd", probs, v)


def single_query_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None,
                           scale: float) -> jax.Array:
  """`dot_product_attention` for one query per row (a decode step) over a heads-first cache:
  q [B, 1, H, D], k/v [B, H, S, D], mask broadcastable to [B, 1, 1, S] -> [B, 1, H, D].

  Heads-first, both products are plain batched matrix-vector products over (B, H); over the
  [B, S, H, D] layout XLA on CPU copied k and v of every layer into a transposed layout per step.
  """
  scores = jnp.einsum("bhd,bhsd->bhs", q[:, 0], k, preferred_element_type=jnp.float32) * scale
  if mask is not None:
    scores = jnp.where(mask[:, 0], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  return jnp.einsum("bhs,bhsd->bhd", probs, v)[:, None]


def attention_probs(q: jax.Array, k: jax.Array, mask: jax.Array | None, scale: float) -> jax.Array:
  """Softmax attention weights [B, H, T, S] in float32 (see `dot_product_attention`)."""
  scores = jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=jnp.float32) * scale
  if mask is not None:
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
  return jax.nn.softmax(scores, axis=-1)


REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def scan_layers(body: Callable, carry, stacked: nnx.Module, *xs, remat: str = "none",
                scan: bool = True, n_layers: int, has_ys: bool = False, group: int = 1):
  """Runs `body(carry, layer, *x_i) -> carry | (carry, y)` over stacked layers.

  With `scan=True` the layers run under `nnx.scan`, so compile time does not grow with depth;
  `remat` chooses what the backward pass recomputes. `scan=False` unrolls (debugging, profiles).
  `group > 1` (with remat and scan, no ys): a scan over groups of `group` layers, each group
  rematerialised as a whole around the per-layer scan, so the backward keeps n_layers / group +
  group layer inputs instead of n_layers, for one more forward pass (same values).
  """
  if group > 1 and remat != "none" and scan and not has_ys:
    return _scan_groups(body, carry, stacked, xs, remat, n_layers, group)
  if remat != "none":
    body = nnx.remat(body, policy=REMAT_POLICIES[remat])
  if scan:
    in_axes = (nnx.Carry, 0) + (0,) * len(xs)
    out_axes = (nnx.Carry, 0) if has_ys else nnx.Carry
    return nnx.scan(body, in_axes=in_axes, out_axes=out_axes)(carry, stacked, *xs)
  graphdef, state = nnx.split(stacked)
  ys = []
  for i in range(n_layers):
    layer = nnx.merge(graphdef, jax.tree.map(lambda a: a[i], state))
    out = body(carry, layer, *[jax.tree.map(lambda a: a[i], x) for x in xs])
    if has_ys:
      carry, y = out
      ys.append(y)
    else:
      carry = out
  if has_ys:
    return carry, jax.tree.map(lambda *a: jnp.stack(a), *ys)
  return carry


def _scan_groups(body, carry, stacked, xs, remat, n_layers, group):
  graphdef, state = nnx.split(stacked)
  regroup = lambda a: a.reshape(n_layers // group, group, *a.shape[1:])

  @functools.partial(jax.checkpoint, policy=jax.checkpoint_policies.nothing_saveable)
  def run_group(carry, group_state, group_xs):
    layers_ = nnx.merge(graphdef, group_state)
    return scan_layers(body, carry, layers_, *group_xs, remat=remat, n_layers=group)

  def step(carry, inputs):
    return run_group(carry, *inputs), None

  carry, _ = jax.lax.scan(step, carry, jax.tree.map(regroup, (state, xs)))
  return carry


def stacked(make_layer: Callable[[nnx.Rngs], nnx.Module], n: int, rngs: nnx.Rngs) -> nnx.Module:
  """n independently initialised copies of a layer, stacked on a leading 'layers' axis."""

  @nnx.split_rngs(splits=n)
  @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
  def make(r):
    return make_layer(r)

  return make(rngs)


__all__ = ["param", "Buffer", "Linear", "LayerNorm", "RMSNorm", "rope_cos_sin", "apply_rope",
           "dot_product_attention", "single_query_attention", "scan_layers", "stacked", "constrain", "dtype_of", "ntk_alpha",
           "ntk_base"]
