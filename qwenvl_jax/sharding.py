"""Logical axis names, the rules that map them onto the (data, fsdp, tensor) mesh, and helpers.

Every parameter is created with an `out_sharding` tuple of *logical* names (see `model/layers.py`),
with Flax's eager sharding switched off for it: modules can be built anywhere (tests, eval_shape,
inside jit) and placement is decided in one place, here, by the rules table. Activations are
constrained with `constrain(x, names)`, which is a no-op unless a mesh is active (`jax.set_mesh`).

Typical use (the MaxText pattern):

    mesh = create_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    with jax.set_mesh(mesh):
        model = init_sharded(lambda: QwenVL(cfg, rngs=nnx.Rngs(0)), mesh)
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from qwenvl_jax.config import MESH_AXES, ConfigError, MeshConfig

MeshAxes = str | tuple[str, ...] | None
Rules = tuple[tuple[str, MeshAxes], ...]

# One table for the whole model. Parameters shard their large input dim over `fsdp` (ZeRO-3 style:
# gathered per layer inside the scan) and their head / MLP / vocab dims over `tensor` (Megatron).
# Activations shard the batch over data+fsdp and the head / MLP / vocab dims over `tensor`.
DEFAULT_RULES: Rules = (
    # parameters
    ("layers", None),
    ("embed", "fsdp"),  # LLM / adapter width
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("head_dim", None),
    ("qkv", None),  # the stacked q / k / v axis of fused projections
    ("mlp", "tensor"),
    ("vit_embed", "fsdp"),
    ("vit_heads", "tensor"),
    ("vit_mlp", "tensor"),
    ("patch", None),  # patch kernel rows (kh, kw, c)
    ("pos", None),  # position-table rows
    ("queries", None),
    ("proj_out", "tensor"),  # output dim of the adapter's square `proj`
    # activations
    ("act_batch", ("data", "fsdp")),
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("act_kv_length", None),
    # the vocabulary-parallel LM head inside the chunked loss (model/lm_loss.py): a chunk's rows are
    # gathered, the head and its logits split over the vocabulary on every batch and model axis
    ("loss_rows", None),
    ("loss_embed", None),
    # (order: "vocab"'s axes, then "embed"'s, then the rest: the head's re-layout is one all-to-all)
    ("loss_vocab", ("tensor", "fsdp", "data")),
)

_RULES: contextvars.ContextVar[Rules] = contextvars.ContextVar("qwenvl_rules", default=DEFAULT_RULES)


@contextlib.contextmanager
def logical_rules(rules: Rules):
  """Uses `rules` as the table within a block: what the train loop and AOT do with `rules_for(mesh.rules)`."""
  token = _RULES.set(tuple(rules))
  try:
    yield
  finally:
    _RULES.reset(token)


def rules_for(overrides: Rules = ()) -> Rules:
  """DEFAULT_RULES with the entries of `overrides` (the config's `mesh.rules`) replaced."""
  table = dict(DEFAULT_RULES)
  for name, axes in overrides:
    if name not in table:
      raise ConfigError(f"config field 'mesh.rules': unknown logical axis '{name}'; known: {sorted(table)}")
    table[name] = axes
  return tuple(table.items())


def current_rules() -> Rules:
  return _RULES.get()


def logical_to_spec(names: Sequence[str | None] | None, rules: Rules | None = None) -> P:
  """Maps a tuple of logical axis names to a PartitionSpec; unknown names raise."""
  if names is None:
    return P()
  table = dict(rules if rules is not None else current_rules())
  used: set[str] = set()
  out = []
  for name in names:
    if name is None:
      out.append(None)
      continue
    if name not in table:
      raise KeyError(f"logical axis '{name}' has no sharding rule; known: {sorted(table)}")
    axes = table[name]
    axes_t = (axes,) if isinstance(axes, str) else tuple(axes or ())
    # A mesh axis may appear only once per spec; later dims lose it (replicated instead).
    axes_t = tuple(a for a in axes_t if a not in used)
    used.update(axes_t)
    out.append(None if not axes_t else axes_t[0] if len(axes_t) == 1 else axes_t)
  return P(*out)


def create_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh over all (global, multi-host) devices."""
  devices = list(devices if devices is not None else jax.devices())
  shape = cfg.resolved_shape(len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def _active_mesh():
  mesh = jax.sharding.get_abstract_mesh()
  return None if mesh is None or mesh.empty else mesh


def compile_platform() -> str:
  """The platform being compiled for: the active mesh's (an AOT compile for a TPU topology runs on a
  CPU host), else JAX's default backend."""
  mesh = _active_mesh()
  # The platform lives on the mesh's abstract device (an AbstractMesh has no `platform` itself).
  device = getattr(mesh, "abstract_device", None)
  if getattr(device, "platform", None):
    return device.platform
  return jax.default_backend()


def active_spec(names: Sequence[str | None], shape: Sequence[int]):
  """(active abstract mesh, the PartitionSpec the rules give `names` for `shape`), or (None, None)
  without a mesh: the placement manual-sharding code (`shard_map` around a kernel) must match."""
  mesh = _active_mesh()
  if mesh is None:
    return None, None
  return mesh, _fit_spec(logical_to_spec(names), tuple(shape), mesh)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """with_sharding_constraint by logical names; identity when no mesh is active."""
  mesh = _active_mesh()
  if mesh is None:
    return x
  # Mesh axes that do not divide a dim (e.g. a batch of 1 while decoding) are dropped.
  return jax.lax.with_sharding_constraint(x, _fit_spec(logical_to_spec(names), x.shape, mesh))


# --------------------------------------------------------------------------------------------
# Parameters.


def _var_names(v: nnx.Variable):
  return v.get_metadata().get("out_sharding", None)


def spec_axes(entry) -> tuple[str, ...]:
  """One PartitionSpec entry (None, an axis name or a tuple of them) as a tuple of mesh axes."""
  return (entry,) if isinstance(entry, str) else tuple(entry or ())


def shard_count(mesh, entry) -> int:
  """How many shards one PartitionSpec entry splits its dim into on `mesh`."""
  return int(np.prod([mesh.shape[a] for a in spec_axes(entry)]))


def _fit_spec(spec: P, shape: tuple[int, ...], mesh) -> P:
  """Replicates dims the mesh axes do not divide (tiny configs on big meshes)."""
  out = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    size = shard_count(mesh, axes)
    out.append(axes if size > 1 and dim % size == 0 else None)
  return P(*out)


def param_shardings(state: nnx.State, mesh: Mesh, rules: Rules | None = None) -> nnx.State:
  """NamedSharding for every variable; dims that the mesh does not divide are replicated."""

  def sharding(v):
    names = _var_names(v)
    shape = v.get_value().shape
    spec = _fit_spec(logical_to_spec(names, rules), shape, mesh)
    return NamedSharding(mesh, spec)

  return jax.tree.map(sharding, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def eval_shape_model(make_model: Callable[[], nnx.Module], rules: Rules | None = None) -> nnx.Module:
  """`nnx.eval_shape` that is safe inside a mesh context.

  Under an active mesh, Flax turns each variable's `out_sharding` into a NamedSharding, reading
  the names as mesh axes. Ours are logical and placed by `param_shardings`, so Flax is given a
  table that maps every logical name to "replicated" for the duration.
  """
  from flax.core import spmd as flax_spmd

  table = rules if rules is not None else current_rules()
  with flax_spmd.logical_axis_rules([(name, None) for name, _ in table]):
    return nnx.eval_shape(make_model)


def abstract_state(make_model: Callable[[], nnx.Module], mesh: Mesh | None = None,
                   rules: Rules | None = None):
  """(graphdef, state of ShapeDtypeStructs [with shardings if a mesh is given]); nothing allocated."""
  graphdef, state = nnx.split(eval_shape_model(make_model, rules))
  if mesh is not None:
    shardings = param_shardings(state, mesh, rules)
    state = jax.tree.map(
        lambda v, s: v.replace(jax.ShapeDtypeStruct(v.get_value().shape, v.get_value().dtype, sharding=s)),
        state, shardings, is_leaf=lambda x: isinstance(x, nnx.Variable))
  return graphdef, state


def init_sharded(make_model: Callable[[], nnx.Module], mesh: Mesh, rules: Rules | None = None):
  """Builds a model with every parameter created directly in its sharded place (no host copy)."""
  graphdef, abs_state = nnx.split(eval_shape_model(make_model, rules))
  shardings = param_shardings(abs_state, mesh, rules)
  state = jax.jit(lambda: nnx.state(make_model()), out_shardings=shardings)()
  return nnx.merge(graphdef, state)


def shard_model(model: nnx.Module, mesh: Mesh, rules: Rules | None = None) -> nnx.Module:
  """Moves an existing (e.g. single-device) model's variables onto the mesh per the rules."""
  graphdef, state = nnx.split(model)
  shardings = param_shardings(state, mesh, rules)
  state = jax.device_put(state, shardings)
  return nnx.merge(graphdef, state)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Batch arrays: leading dim over data+fsdp, the rest replicated."""
  return NamedSharding(mesh, P(("data", "fsdp"), *([None] * (ndim - 1))))


def check_batch_rows(mesh: Mesh, rows: int, what: str) -> None:
  """The one check that a batch fits the mesh: its `rows` split evenly over the batch axes (data x
  fsdp). Raises ConfigError naming `what` (e.g. the config field it came from)."""
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if rows % shards:
    raise ConfigError(f"{what} of {rows} rows is not divisible by the data x fsdp mesh size {shards} "
                      f"(mesh {dict(mesh.shape)})")
