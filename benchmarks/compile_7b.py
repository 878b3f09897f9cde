"""Compile time of the 7B stage-2 train step for a TPU topology (AOT via libtpu; no TPU needed).

  JAX_PLATFORMS=cpu python benchmarks/compile_7b.py [--topology v5p:2x2x1] [--rows-per-chip 1]
                                                    [--microbatches 2] [--json]

Runs `qwenvl_jax.perf.aot.compile_train` (the real `TrainStep` of configs/stage2.py: 448px,
2048-token rows, up to 7 images per row, bf16 compute, remat full, the config's mesh) with the
global batch reduced to rows-per-chip x chips x microbatches rows: compile time and per-chip memory
depend on the microbatch, not on how many microbatches are accumulated. Prints lower / compile
seconds and XLA's per-chip memory; `--json` prints one JSON line instead.
"""

from __future__ import annotations

import argparse
import json


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--topology", default="v5p:2x2x1")
  p.add_argument("--config", default="configs/stage2.py")
  p.add_argument("--rows-per-chip", type=int, default=1)
  p.add_argument("--microbatches", type=int, default=2)
  p.add_argument("--json", action="store_true")
  args = p.parse_args(argv)

  from qwenvl_jax.perf import aot

  chips = aot.resolve_target(args.topology).chips
  report = aot.compile_train(args.config, args.topology, microbatches=args.microbatches,
                             batch_size=args.rows_per_chip * chips * args.microbatches)
  mem = report["memory"]
  gib = lambda b: None if b is None else round(b / 2 ** 30, 2)
  out = dict(topology=args.topology, chips=chips, device_kind=report["device_kind"],
             mesh=report["mesh"], rows=report["global_batch"], microbatches=report["microbatches"],
             seq_len=report["seq_len"], images_per_row=report["images_per_row"],
             remat=report["remat"], lower_s=report["seconds"]["lower"],
             compile_s=report["seconds"]["compile"], per_chip_gib=gib(mem.get("total")),
             hbm_gib=gib(mem.get("hbm")), fits=mem.get("fits"))
  out["summary"] = (f"{chips} x {out['device_kind']}, mesh {out['mesh']}, {out['rows']} rows x "
                    f"{out['seq_len']} tokens ({out['microbatches']} microbatches), per-chip memory "
                    f"{out['per_chip_gib']} of {out['hbm_gib']} GiB")
  if args.json:
    print(json.dumps(out))
  else:
    for k, v in out.items():
      print(f"{k:>16}: {v}")


if __name__ == "__main__":
  main()
