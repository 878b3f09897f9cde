"""Compile time of the 7B stage-2 train step for a TPU topology (AOT via libtpu; no TPU needed).

  JAX_PLATFORMS=cpu TPU_WORKER_HOSTNAMES=localhost ALLOW_MULTIPLE_LIBTPU_LOAD=1 \
      python benchmarks/compile_7b.py [--topology v5p:2x2x1] [--rows-per-chip 1] [--json]

The real `TrainStep` of configs/stage2.py (448px, 2048-token rows, up to 7 images per row, mesh
fsdp x tensor=2) is lowered with abstract sharded inputs (`jax.ShapeDtypeStruct`, nothing
allocated) and compiled for the topology's devices. The global batch is reduced to
`rows-per-chip x chips x grad-accum` rows (compile time and per-chip memory depend on the
microbatch, not on how many microbatches are accumulated). remat "full" unless the config sets one.
Prints lower / compile seconds and XLA's per-chip memory analysis; `--json` prints one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--topology", default="v5p:2x2x1")
  p.add_argument("--config", default="stage2")
  p.add_argument("--rows-per-chip", type=int, default=1)
  p.add_argument("--grad-accum", type=int, default=2)
  p.add_argument("--json", action="store_true")
  args = p.parse_args(argv)

  import jax
  from jax.experimental import topologies

  from qwenvl_jax.config import (load_config_dict, mesh_config_from_dict, model_config_from_dict,
                                 train_config_from_dict)
  from qwenvl_jax.sharding import batch_sharding, create_mesh
  from qwenvl_jax.train import step as step_lib

  topo = topologies.get_topology_desc(args.topology, platform="tpu")
  devices = topo.devices
  config = load_config_dict(args.config)
  tcfg, mcfg = train_config_from_dict(config), model_config_from_dict(config.model)
  if mcfg.remat == "none":
    mcfg = dataclasses.replace(mcfg, remat="full")
  mesh = create_mesh(mesh_config_from_dict(config.mesh), devices=devices)
  rows = args.rows_per_chip * len(devices) * args.grad_accum
  t0 = time.perf_counter()
  setup = step_lib.build_setup(mcfg, tcfg.optim, tcfg.steps, mesh)
  max_images = int(config.data.get("max_images", 1))
  size, t = mcfg.vision.image_size, tcfg.seq_len
  shapes = dict(tokens=((rows, t), "int32"), loss_mask=((rows, t), "bool"),
                segment_ids=((rows, t), "int32"), positions=((rows, t), "int32"),
                images=((rows, max_images, size, size, 3), "float32"), num_images=((rows,), "int32"))
  batch = {k: jax.ShapeDtypeStruct(s, d, sharding=batch_sharding(mesh, len(s)))
           for k, (s, d) in shapes.items()}
  train_step = step_lib.TrainStep(setup, args.grad_accum)
  lowered = train_step.lower(setup.abs_params, setup.abs_opt, setup.abs_buffers, batch)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  mem = compiled.memory_analysis()
  gib = lambda b: round(b / 2 ** 30, 2)
  per_chip = dict(arguments_gib=gib(mem.argument_size_in_bytes), outputs_gib=gib(mem.output_size_in_bytes),
                  temporaries_gib=gib(mem.temp_size_in_bytes),
                  aliased_gib=gib(mem.alias_size_in_bytes))
  per_chip["total_gib"] = round(per_chip["arguments_gib"] + per_chip["outputs_gib"]
                                + per_chip["temporaries_gib"] - per_chip["aliased_gib"], 2)
  out = dict(topology=args.topology, chips=len(devices), device_kind=devices[0].device_kind,
             mesh=dict(mesh.shape), rows=rows, grad_accum=args.grad_accum, seq_len=t,
             images_per_row=max_images, image_size=size, remat=mcfg.remat,
             lower_s=t1 - t0, compile_s=t2 - t1, per_chip=per_chip,
             summary=f"{len(devices)} x {devices[0].device_kind}, mesh {dict(mesh.shape)}, "
                     f"{rows} rows x {t} tokens (accum {args.grad_accum}), "
                     f"per-chip memory {per_chip['total_gib']} GiB")
  if args.json:
    print(json.dumps(out))
  else:
    for k, v in out.items():
      print(f"{k:>16}: {v}")


if __name__ == "__main__":
  main()
