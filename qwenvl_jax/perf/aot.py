"""Ahead-of-time compilation of the real train / inference steps for a TPU slice that is not here.

libtpu can compile for any TPU topology without the hardware (`jax.experimental.topologies`). We
build the model, optimizer state and batch as `jax.ShapeDtypeStruct`s with their shardings (nothing
is allocated), lower the same jitted functions training and generation run, compile them for the
slice, and report per chip:

  memory    XLA's buffer assignment: arguments, outputs, temporaries, generated code; the total is
            arguments + outputs - aliased (donated) + temporaries + code, against the chip's HBM.
            When XLA itself refuses (the program needs more HBM than the chip has) the report says
            "does not fit" with XLA's numbers instead of raising.
  FLOPs     model FLOPs from `model.flops` (the architecture's matmuls, what MFU is measured
            against); program FLOPs: the matmuls of the lowered program with every loop counted as
            often as it runs (remat recomputation included; `flops.program_matmul_flops`); and XLA's
            raw cost analysis for reference, which counts each while-loop body once.
  time      two predictions, both explicit about their assumption:
              bound     = program FLOPs / (chips x peak)  (the chips doing nothing but matmuls at peak)
              estimate  = model FLOPs / (chips x peak x assumed MFU)
            and the MFU the bound implies (model / program FLOPs: the best MFU this program can reach).

The TPU backend is initialised in compile-only mode; the local backend may stay CPU
(`JAX_PLATFORMS=cpu`). Topologies are "<generation>:<chip grid>", e.g. v5p:2x2x1, v5e:4x4, v6e:2x2;
"cpu" compiles for the local CPU devices (tests; no HBM limit, no peak).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import re
import time
from typing import Any

from qwenvl_jax.config import MESH_AXES, ConfigError, MeshConfig
from qwenvl_jax.model import flops as model_flops


class AOTError(ConfigError):
  """Bad AOT input (unknown topology, mesh or batch that does not divide); the message says which."""


# generation -> (device kind as libtpu reports it, chip config). v4 and v5p run one device per chip
# ("megacore": both TensorCores as one device), the lite chips have one TensorCore.
GENERATIONS = {
    "v4": ("TPU v4", "megacore"),
    "v5p": ("TPU v5", "megacore"),
    "v5e": ("TPU v5 lite", "default"),
    "v6e": ("TPU v6 lite", "default"),
}
_TOPOLOGY = re.compile(r"^(?P<gen>[a-z0-9]+):(?P<dims>\d+(?:x\d+){1,2})$")


@dataclasses.dataclass(frozen=True)
class Target:
  """The devices to compile for and what one chip offers (None where unknown, e.g. CPU)."""
  name: str
  devices: tuple
  device_kind: str
  peak_flops: float | None
  hbm_bytes: float | None
  hbm_bandwidth: float | None = None

  @property
  def chips(self) -> int:
    return len(self.devices)


def _libtpu_env():
  # Compile-only use of libtpu on a machine without TPUs: no metadata server to ask, one "worker",
  # and no exclusive lock (other processes on this machine may hold libtpu too).
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def resolve_target(topology: str, hbm_bytes: float | None = None) -> Target:
  """'v5p:2x2x1' -> compile-only TPU devices of that slice; 'cpu' / 'cpu:N' -> local CPU devices."""
  import jax

  if topology == "cpu" or topology.startswith("cpu:"):
    devices = jax.devices("cpu")
    if topology != "cpu":
      n = int(topology.split(":", 1)[1])
      if n > len(devices):
        raise AOTError(f"topology '{topology}': only {len(devices)} CPU devices (set XLA_FLAGS="
                       f"--xla_force_host_platform_device_count)")
      devices = devices[:n]
    return Target(topology, tuple(devices), "cpu", None, hbm_bytes)
  m = _TOPOLOGY.match(topology)
  if not m or m.group("gen") not in GENERATIONS:
    raise AOTError(f"unknown topology '{topology}': expected <generation>:<chips>, generation one of "
                   f"{sorted(GENERATIONS)}, e.g. v5p:2x2x1, v5e:4x4, v6e:2x2, v4:2x2x2 (or 'cpu')")
  kind, chip_config = GENERATIONS[m.group("gen")]
  _libtpu_env()
  from jax.experimental import topologies
  dims = [int(d) for d in topology.split(":", 1)[1].split("x")]
  # Slices smaller than one host (e.g. a single v5e chip, v5e:1x1) need their own host bounds.
  small = {"chips_per_host_bounds": tuple(dims + [1] * (3 - len(dims)))} if math.prod(dims) < 4 else {}
  try:
    devices = topologies.get_topology_desc(topology, platform="tpu", chip_config_name=chip_config,
                                           **small).devices
  except Exception as e:  # libtpu's own message says what it did not accept
    raise AOTError(f"libtpu cannot build topology '{topology}': {e}") from e
  spec = model_flops.TPU_SPECS[kind]
  return Target(topology, tuple(devices), kind, spec["peak_flops"],
                hbm_bytes if hbm_bytes is not None else spec["hbm_bytes"], spec["hbm_bandwidth"])


def parse_mesh(text: str) -> MeshConfig:
  """'data=1,fsdp=4,tensor=1' -> MeshConfig (omitted axes keep their defaults; -1 fills)."""
  values = {}
  for item in filter(None, (s.strip() for s in text.split(","))):
    key, sep, raw = item.partition("=")
    if not sep or key not in MESH_AXES:
      raise AOTError(f"mesh '{text}': '{item}' is not <axis>=<size> with axis in {MESH_AXES}")
    try:
      values[key] = int(raw)
    except ValueError:
      raise AOTError(f"mesh '{text}': size of '{key}' is not an integer: {raw!r}") from None
  return MeshConfig(**values)


# --------------------------------------------------------------------------------------------
# Compiling and measuring.


def _memory(compiled, hbm: float | None) -> dict:
  m = compiled.memory_analysis()
  out = dict(arguments=m.argument_size_in_bytes, outputs=m.output_size_in_bytes,
             aliased=m.alias_size_in_bytes, temporaries=m.temp_size_in_bytes,
             generated_code=m.generated_code_size_in_bytes,
             # Host memory (pinned_host: offloaded optimizer state): not in the HBM total.
             host_arguments=getattr(m, "host_argument_size_in_bytes", 0),
             host_temporaries=getattr(m, "host_temp_size_in_bytes", 0))
  out["total"] = (out["arguments"] + out["outputs"] - out["aliased"] + out["temporaries"]
                  + out["generated_code"])
  out["hbm"] = hbm
  out["fits"] = None if hbm is None else out["total"] <= hbm
  return out


_OOM_TEMPS = re.compile(r"HLO temporaries \(([\d.]+)([KMGT])\) exceeds available HBM \(([\d.]+)([KMGT])\)")


def _oom_memory(message: str, hbm: float | None) -> dict:
  """XLA's RESOURCE_EXHAUSTED message -> the memory part of a report (XLA stops at the first
  figure over the limit, so the temporaries it names are a lower bound of the total)."""
  lines = message.strip().splitlines()
  out = dict(fits=False, hbm=hbm, xla_message=lines[0][:500])
  # libtpu lists the largest allocations after the summary: keep them (what to shrink).
  start = next((i for i, l in enumerate(lines) if "largest" in l.lower()), None)
  if start is not None:
    out["xla_largest"] = [l.rstrip() for l in lines[start:start + 60] if l.strip()]
  m = _OOM_TEMPS.search(message)
  if m:
    scale = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    out["temporaries_at_least"] = float(m.group(1)) * scale[m.group(2)]
    out["hbm_available"] = float(m.group(3)) * scale[m.group(4)]
  return out


def _compile(lowered, hbm: float | None) -> tuple[Any, dict, float]:
  t0 = time.perf_counter()
  try:
    compiled = lowered.compile()
  except Exception as e:  # XLA refuses programs that exceed HBM: a result, not a crash
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    return None, _oom_memory(str(e), hbm), time.perf_counter() - t0
  memory = _memory(compiled, hbm)
  memory["largest_buffers"] = largest_buffers(compiled.as_text())
  return compiled, memory, time.perf_counter() - t0


_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4,
                "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8}
_HLO_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\w+)\[([\d,]*)\][^ ]*\s+([\w\-]+)\(")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_SOURCE = re.compile(r'source_file="([^"]*)"\s+source_line=(\d+)')
# Instructions that allocate nothing new (views, plumbing) or are the step's inputs.
_NO_ALLOC = {"parameter", "get-tuple-element", "bitcast", "tuple", "constant", "reshape",
             "after-all", "partition-id", "replica-id", "copy-done", "all-gather-done",
             "all-reduce-done", "collective-permute-done", "async-done", "opt-barrier"}


def largest_buffers(hlo_text: str, top: int = 12) -> list[dict]:
  """The largest array buffers the optimised per-chip program creates, grouped by the JAX operation
  that made them (op_name), largest first: what fills HBM besides the arguments. A buffer's size
  is its own (not all are live at once; XLA's buffer assignment reuses memory), so this says which
  operations dominate, not their sum."""
  groups: dict[str, dict] = {}
  for line in hlo_text.splitlines():
    m = _HLO_INSTR.match(line)
    if not m or m.group(4) in _NO_ALLOC or m.group(2) not in _DTYPE_BYTES:
      continue
    dims = [int(d) for d in m.group(3).split(",") if d]
    size = _DTYPE_BYTES[m.group(2)]
    for d in dims:
      size *= d
    op = _OP_NAME.search(line)
    name = op.group(1) if op else f"<{m.group(4)}>"
    name = "/".join(p for p in name.split("/") if not p.startswith(("jit(", "jvp(", "transpose(")))
    src = _SOURCE.search(line)
    g = groups.setdefault(name, dict(op=name, bytes=0, count=0, shape="", hlo=m.group(4),
                                     source=f"{src.group(1).rsplit('/', 1)[-1]}:{src.group(2)}"
                                     if src else ""))
    g["count"] += 1
    if size > g["bytes"]:
      g.update(bytes=size, shape=f"{m.group(2)}[{m.group(3)}]", hlo=m.group(4))
  return sorted(groups.values(), key=lambda g: -g["bytes"])[:top]


def _xla_flops(compiled, chips: int) -> float | None:
  if compiled is None:
    return None
  ca = compiled.cost_analysis()
  ca = ca[0] if isinstance(ca, (list, tuple)) else ca
  per_chip = (ca or {}).get("flops")
  return None if per_chip is None else per_chip * chips  # per-chip program, summed over chips


def _prediction(model: float, program: float, target: Target, assumed_mfu: float,
                memory: dict | None = None) -> dict:
  """FLOP-based bound and estimate; plus, where the chip's HBM bandwidth is known, the time to read
  every argument byte once (weights, optimizer state, KV cache), which bounds decode steps."""
  peak = target.peak_flops
  if not peak:
    return dict(peak_flops_per_chip=None, assumed_mfu=assumed_mfu)
  total_peak = peak * target.chips
  out = dict(peak_flops_per_chip=peak, assumed_mfu=assumed_mfu,
             time_bound_s=program / total_peak,
             mfu_at_bound=model / program if program else None,
             time_estimate_s=model / (total_peak * assumed_mfu))
  if target.hbm_bandwidth and memory and memory.get("arguments"):
    out["time_memory_bound_s"] = memory["arguments"] / target.hbm_bandwidth
  return out


def _attention_impl(model_cfg, target: Target) -> str:
  """What `model.attention` runs as on the target ("auto" resolved for its platform)."""
  from qwenvl_jax.model import attention
  platform = "cpu" if target.device_kind == "cpu" else "tpu"
  return attention.resolve(model_cfg.attention, model_cfg.dtype, platform)


@contextlib.contextmanager
def _on(target: Target):
  """Config errors (a batch that does not divide over the mesh, ...) as AOTErrors naming the target."""
  try:
    yield
  except AOTError:
    raise
  except ConfigError as e:
    raise AOTError(f"{e} (compiling for {target.chips} devices of {target.name})") from None


def _load(config) -> Any:
  """A spec -> its ConfigDict; a ConfigDict -> a copy (overrides never leak to the caller's)."""
  from qwenvl_jax.config import load_config_dict
  return load_config_dict(config) if isinstance(config, str) else copy.deepcopy(config)


# --------------------------------------------------------------------------------------------
# Training.


def abstract_train_batch(rows: int, seq_len: int, images_per_row: int, image_size: int,
                         batch_shardings) -> dict:
  """The batch contract of `train/batch.py` as ShapeDtypeStructs with the step's shardings."""
  import jax
  import jax.numpy as jnp

  shapes = dict(tokens=((rows, seq_len), jnp.int32), loss_mask=((rows, seq_len), jnp.bool_),
                segment_ids=((rows, seq_len), jnp.int32), positions=((rows, seq_len), jnp.int32))
  if images_per_row:
    shapes["images"] = ((rows, images_per_row, image_size, image_size, 3), jnp.uint8)
    shapes["num_images"] = ((rows,), jnp.int32)
  plain = {k: jax.ShapeDtypeStruct(s, d) for k, (s, d) in shapes.items()}
  if images_per_row:  # as the training loop sends it (TrainStep.device_batch: lane-packed pixels)
    from qwenvl_jax.model.pixels import abstract_packed
    plain["images"] = jax.ShapeDtypeStruct(*abstract_packed(plain["images"].shape))
  sh = batch_shardings(plain)
  return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sh[k]) for k, v in plain.items()}


def compile_train(config, topology: str, **kwargs):
  """`_compile_train` under the config's sharding rules (`mesh.rules`)."""
  from qwenvl_jax.config import mesh_config_from_dict
  from qwenvl_jax.sharding import logical_rules, rules_for
  cfg = _load(config)
  with logical_rules(rules_for(mesh_config_from_dict(cfg.get("mesh")).rules)):
    return _compile_train(cfg, topology, **kwargs)


def _compile_train(config, topology: str, *, mesh: MeshConfig | str | None = None,
                  microbatches: int | None = None, batch_size: int | None = None,
                  images_per_row: int | None = None, assumed_mfu: float = 0.4,
                  hbm_bytes: float | None = None, compile: bool = True, log=None) -> dict:
  """Compiles the stage config's train step for `topology`; returns the report (a JSON-able dict).
  `compile=False` stops after lowering (FLOPs only, no memory figures).

  `config` is a stage config spec ('configs/stage2.py', 'stage2:tiny') or its ConfigDict. The global
  batch is the config's `batch_size` (the paper's) unless given; `microbatches` overrides its
  `grad_accum`; `images_per_row` defaults to the data section's `max_images`.
  """
  from qwenvl_jax.config import mesh_config_from_dict
  from qwenvl_jax.sharding import create_mesh
  from qwenvl_jax.train.metrics import trainable_parts
  from qwenvl_jax.train.setup import setup

  log = log or (lambda msg: None)
  cfg = _load(config)
  if microbatches is not None:
    cfg.grad_accum = int(microbatches)
  if batch_size is not None:
    cfg.batch_size = int(batch_size)
  target = resolve_target(topology, hbm_bytes)
  mesh_cfg = parse_mesh(mesh) if isinstance(mesh, str) else mesh or mesh_config_from_dict(cfg.get("mesh"))
  mesh_obj = create_mesh(mesh_cfg, target.devices)  # ConfigError if it does not cover the devices
  mesh_shape = dict(mesh_obj.shape)
  log(f"building abstract state for {target.chips} x {target.device_kind}, mesh {mesh_shape}")
  with _on(target):  # the training run's own checks (batch vs mesh, context), state, optimizer, step
    run = setup(cfg, mesh_obj)
  train_cfg, model_cfg, lora_cfg = run.train_cfg, run.model_cfg, run.lora_cfg
  rows = train_cfg.microbatch
  m_images = int(images_per_row if images_per_row is not None else train_cfg.data.max_images)
  size = model_cfg.vision.image_size
  train_step = run.train_step
  batch = abstract_train_batch(train_cfg.batch_size, train_cfg.seq_len, m_images, size,
                               train_step.batch_shardings)
  t0 = time.perf_counter()
  lowered = train_step.lower(run.abstract_state, batch)
  lower_s = time.perf_counter() - t0
  text = lowered.as_text()
  program = model_flops.program_matmul_flops(text)
  if compile:
    log(f"lowered in {lower_s:.1f}s; compiling for {target.name}")
    compiled, memory, compile_s = _compile(lowered, target.hbm_bytes)
  else:
    compiled, memory, compile_s = None, dict(fits=None, hbm=target.hbm_bytes), 0.0

  parts = trainable_parts(train_cfg.optim.frozen)
  model = model_flops.step_flops(model_cfg, train_cfg.batch_size, train_cfg.seq_len, m_images,
                                trainable=parts).train
  shards = mesh_shape["data"] * mesh_shape["fsdp"]
  return dict(
      kind="train", config=cfg.get("stage") and f"stage{cfg.stage}", topology=target.name,
      device_kind=target.device_kind, chips=target.chips, mesh=mesh_shape,
      remat=model_cfg.remat, scan_layers=model_cfg.scan_layers, trainable=list(parts),
      attention=_attention_impl(model_cfg, target), loss_chunk=model_cfg.loss_chunk,
      # Pallas kernels in the lowered program: > 0 where splash really runs (not the XLA path).
      pallas_calls=text.count("tpu_custom_call"),
      lora=(lora_cfg.quantize or "bf16") + f" base, r={lora_cfg.rank}" if lora_cfg.enabled else None,
      global_batch=train_cfg.batch_size, microbatches=train_cfg.grad_accum, microbatch_rows=rows,
      rows_per_shard=rows / shards, seq_len=train_cfg.seq_len, images_per_row=m_images,
      image_size=size, memory=memory,
      flops=dict(model=model, program=program.flops,
                 program_unknown_loops=program.unknown_trip_counts,
                 xla_cost_analysis=_xla_flops(compiled, target.chips)),
      prediction=_prediction(model, program.flops, target, assumed_mfu, memory),
      tokens_per_step=train_cfg.batch_size * train_cfg.seq_len,
      seconds=dict(lower=lower_s, compile=compile_s))


# --------------------------------------------------------------------------------------------
# Inference: prefill and one decode step, as `infer/generate.py` runs them.


def compile_inference(config, topology: str, **kwargs):
  """`_compile_inference` under the config's sharding rules (`mesh.rules`)."""
  from qwenvl_jax.config import mesh_config_from_dict
  from qwenvl_jax.sharding import logical_rules, rules_for
  cfg = _load(config)
  with logical_rules(rules_for(mesh_config_from_dict(cfg.get("mesh")).rules)):
    return _compile_inference(cfg, topology, **kwargs)


def _compile_inference(config, topology: str, *, mesh: MeshConfig | str | None = None,
                      batch: int = 8, prompt_len: int = 1024, gen_len: int = 512,
                      images_per_row: int = 1, assumed_mfu: float = 0.4,
                      hbm_bytes: float | None = None, log=None) -> list[dict]:
  """Compiles prefill (batch x prompt_len, with images) and one decode step (KV cache of
  prompt_len + gen_len slots) for `topology`; weights in the compute dtype, as `infer/api.py`
  loads them. Returns one report per function."""
  import functools

  import jax
  import jax.numpy as jnp
  from flax import nnx
  from jax.sharding import NamedSharding, PartitionSpec as P

  from qwenvl_jax.config import model_config_from_dict, mesh_config_from_dict
  from qwenvl_jax.infer import generate
  from qwenvl_jax.model import layers
  from qwenvl_jax.model.llm import init_cache
  from qwenvl_jax.model.qwenvl import QwenVL
  from qwenvl_jax.sharding import abstract_state, batch_sharding, check_batch_rows, create_mesh, \
      logical_to_spec, _fit_spec

  log = log or (lambda msg: None)
  cfg = _load(config)
  model_cfg = model_config_from_dict(cfg.model)
  model_cfg = dataclasses.replace(model_cfg, param_dtype=model_cfg.dtype)
  target = resolve_target(topology, hbm_bytes)
  mesh_cfg = parse_mesh(mesh) if isinstance(mesh, str) else mesh or mesh_config_from_dict(cfg.get("mesh"))
  mesh_obj = create_mesh(mesh_cfg, target.devices)
  mesh_shape = dict(mesh_obj.shape)
  with _on(target):
    check_batch_rows(mesh_obj, batch, "inference batch")
  cache_len = prompt_len + gen_len
  size = model_cfg.vision.image_size
  graphdef, state = abstract_state(lambda: QwenVL(model_cfg, rngs=nnx.Rngs(0)), mesh_obj)
  state = state.to_pure_dict()
  sds = lambda shape, dtype, sh: jax.ShapeDtypeStruct(shape, dtype, sharding=sh)
  bsh = lambda ndim: batch_sharding(mesh_obj, ndim)
  rep = NamedSharding(mesh_obj, P())
  logn = bool(model_cfg.llm.use_logn_attn)
  reports = []

  def report(name, lowered, step_model_flops, tokens):
    program = model_flops.program_matmul_flops(lowered.as_text())
    compiled, memory, compile_s = _compile(lowered, target.hbm_bytes)
    reports.append(dict(
        kind=name, config=cfg.get("stage") and f"stage{cfg.stage}", topology=target.name,
        device_kind=target.device_kind, chips=target.chips, mesh=mesh_shape, batch=batch,
        prompt_len=prompt_len, cache_len=cache_len, images_per_row=images_per_row,
        image_size=size, dtype=model_cfg.dtype, memory=memory,
        flops=dict(model=step_model_flops, program=program.flops,
                   program_unknown_loops=program.unknown_trip_counts,
                   xla_cost_analysis=_xla_flops(compiled, target.chips)),
        prediction=_prediction(step_model_flops, program.flops, target, assumed_mfu, memory),
        tokens_per_step=tokens, seconds=dict(compile=compile_s)))
    log(f"{name}: compiled in {compile_s:.1f}s")

  with jax.set_mesh(mesh_obj):
    ids = sds((batch, prompt_len), jnp.int32, bsh(2))
    images = sds((batch, images_per_row, size, size, 3), jnp.uint8, bsh(5)) if images_per_row else None
    counts = sds((batch,), jnp.int32, bsh(1)) if images_per_row else None
    prefill = jax.jit(functools.partial(generate._prefill, graphdef, logn),
                      static_argnames=("cache_len",))
    lowered = prefill.lower(state, ids, ids, ids, images, counts, sds((), jnp.float32, rep),
                            cache_len=cache_len)
    report("prefill", lowered,
           model_flops.prefill_flops(model_cfg, batch, prompt_len, cache_len, images_per_row),
           batch * prompt_len)

    cache = jax.eval_shape(lambda: init_cache(model_cfg.llm, batch, cache_len,
                                              layers.dtype_of(model_cfg.dtype)))
    kv_spec = logical_to_spec((None, "act_batch", "act_kv_length", "act_heads", None))
    kv_sh = NamedSharding(mesh_obj, _fit_spec(kv_spec, cache.k.shape, mesh_obj))
    cache = cache._replace(k=sds(cache.k.shape, cache.k.dtype, kv_sh),
                           v=sds(cache.v.shape, cache.v.dtype, kv_sh),
                           segment_ids=sds(cache.segment_ids.shape, jnp.int32, bsh(2)),
                           positions=sds(cache.positions.shape, jnp.int32, bsh(2)),
                           index=sds((), jnp.int32, rep))
    step = jax.jit(functools.partial(generate._step_fn, graphdef, logn), donate_argnums=(1,))
    tok = sds((batch,), jnp.int32, bsh(1))
    lowered = step.lower(state, cache, tok, tok, sds((), jnp.float32, rep))
    report("decode_step", lowered, model_flops.decode_step_flops(model_cfg, batch, cache_len), batch)
  return reports


# --------------------------------------------------------------------------------------------
# Printing.


def _gib(x) -> str:
  if x is None:
    return "-"
  return f"{x / 2**30:.2f} GiB" if x >= 2**30 else f"{x / 2**20:.2f} MiB"


def _num(x, unit="") -> str:
  if x is None:
    return "-"
  for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M")):
    if abs(x) >= scale:
      return f"{x / scale:.2f} {prefix}{unit}"
  return f"{x:.3g} {unit}".strip()


def _seconds(x) -> str:
  if x is None:
    return "-"
  return f"{x * 1e3:.2f} ms" if x < 1 else f"{x:.2f} s"


def format_report(r: dict) -> str:
  """A readable table of one report."""
  mem, fl, pred = r["memory"], r["flops"], r["prediction"]
  mesh = ", ".join(f"{k}={v}" for k, v in r["mesh"].items())
  rows = [("step", f"{r['kind']} ({r.get('config') or 'config'})"),
          ("topology", f"{r['topology']}: {r['chips']} x {r['device_kind']}"),
          ("mesh", mesh)]
  if r["kind"] == "train":
    rows += [("batch", f"global {r['global_batch']} rows x {r['seq_len']} tokens, "
                       f"{r['microbatches']} microbatches of {r['microbatch_rows']} "
                       f"({r['rows_per_shard']:g} rows per data x fsdp shard), "
                       f"{r['images_per_row']} images/row at {r['image_size']}px"),
             ("memory options", f"remat={r['remat']}, scan_layers={r['scan_layers']}, "
                                f"attention={r.get('attention')} ({r.get('pallas_calls', 0)} "
                                f"Pallas calls), loss_chunk={r.get('loss_chunk')}, "
                                f"trained: {', '.join(r['trainable'])}")]
  else:
    rows += [("batch", f"{r['batch']} rows, prompt {r['prompt_len']}, KV cache {r['cache_len']}, "
                       f"{r['images_per_row']} images/row, weights {r['dtype']}")]
  if "arguments" in mem:
    rows += [("memory / chip", f"arguments {_gib(mem['arguments'])}, outputs {_gib(mem['outputs'])} "
                               f"(aliased {_gib(mem['aliased'])}), temporaries "
                               f"{_gib(mem['temporaries'])}, code {_gib(mem['generated_code'])}")]
    if mem.get("host_arguments") or mem.get("host_temporaries"):
      rows += [("host memory / chip", f"arguments {_gib(mem['host_arguments'])}, temporaries "
                                      f"{_gib(mem['host_temporaries'])} (pinned host memory, "
                                      f"not HBM: offloaded optimizer state)")]
  fit = {True: "fits", False: "DOES NOT FIT", None: "no HBM limit"}[mem["fits"]]
  total = mem.get("total")
  if total is None and "temporaries_at_least" in mem:
    used = f"temporaries alone > {_gib(mem['temporaries_at_least'])} of {_gib(mem['hbm'])} HBM"
  else:
    used = f"{_gib(total)} of {_gib(mem['hbm'])} HBM" if mem["hbm"] else _gib(total)
  rows += [("memory total", f"{used}: {fit}")]
  if mem.get("xla_message"):
    rows += [("XLA", mem["xla_message"])]
  if mem.get("largest_buffers"):
    rows += [("largest buffers", "per chip, by the JAX op that creates them (not all live at once)")]
    rows += [("", f"{_gib(g['bytes']):>10}  {g['shape']:<28} {g['hlo']:<14} x{g['count']:<4} "
                  f"{g['op'][-70:]}" + (f"  ({g['source']})" if g["source"] else ""))
             for g in mem["largest_buffers"]]
  if mem.get("xla_largest"):
    rows += [("XLA's largest", "allocations XLA listed when it refused the program:")]
    rows += [("", l[:160]) for l in mem["xla_largest"][:40]]
  rows += [("model FLOPs", f"{_num(fl['model'], 'FLOP')} (model/flops.py formula)"),
           ("program FLOPs", f"{_num(fl['program'], 'FLOP')} (lowered matmuls x loop trip counts, "
                             f"remat included; {fl['program'] / fl['model']:.2f}x model)"),
           ("XLA cost analysis", f"{_num(fl['xla_cost_analysis'], 'FLOP')} (counts each loop body "
                                 f"once)")]
  if pred.get("peak_flops_per_chip"):
    slowest = max(pred["time_estimate_s"], pred.get("time_memory_bound_s") or 0)
    rows += [("peak", f"{_num(pred['peak_flops_per_chip'], 'FLOP/s')} bf16 per chip"),
             ("step time bound", f"{_seconds(pred['time_bound_s'])} (program FLOPs at 100% of peak;"
                                 f" MFU there = {pred['mfu_at_bound']:.0%})"),
             *([("HBM read bound", f"{_seconds(pred['time_memory_bound_s'])} (every argument byte "
                                   f"read once at the chip's HBM bandwidth)")]
               if pred.get("time_memory_bound_s") else []),
             ("step time estimate", f"{_seconds(pred['time_estimate_s'])} (model FLOPs at "
                                    f"{pred['assumed_mfu']:.0%} MFU, assumed)"),
             ("throughput estimate", f"{r['tokens_per_step'] / slowest:,.0f} tokens/s (the "
                                     f"slower of the estimate and the HBM read bound)")]
  secs = r["seconds"]
  rows += [("compile time", (f"lower {secs['lower']:.1f}s, " if "lower" in secs else "")
                            + f"compile {secs['compile']:.1f}s")]
  width = max(len(k) for k, _ in rows)
  return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
