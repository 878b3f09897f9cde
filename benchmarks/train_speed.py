"""Training throughput of the stage configs' tiny and small variants on this machine.

  python benchmarks/train_speed.py [--configs stage2:tiny stage2:small] [--steps 5] [--devices 1]

Runs the real jitted train step (synthetic batches, gradient accumulation as configured, no
checkpointing) after one compile step, and prints step time, tokens/s (every position of the batch),
images/s and achieved model TFLOP/s (the `train/metrics.model_flops_per_token` count).
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--configs", nargs="+", default=["stage1:tiny", "stage2:tiny", "stage1:small",
                                                   "stage2:small"])
  p.add_argument("--steps", type=int, default=5, help="timed steps after the compile step")
  p.add_argument("--devices", type=int, default=1, help="fake CPU devices (mesh fsdp axis)")
  args = p.parse_args(argv)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={args.devices}")

  import jax
  import numpy as np

  from qwenvl_jax.config import load_config_dict
  from qwenvl_jax.model.params import count_parameters
  from qwenvl_jax.train.loop import make_iterator, to_global
  from qwenvl_jax.train.setup import setup
  from qwenvl_jax.train.metrics import model_flops_per_token, trainable_parts

  print(f"# {jax.devices()[0].device_kind} x {jax.device_count()}, {os.cpu_count()} cores, "
        f"jax {jax.__version__}")
  header = (f"{'config':<14}{'params':>11}{'batch x seq':>13}{'px':>5}{'accum':>6}{'compile s':>10}"
            f"{'step s':>9}{'tokens/s':>11}{'images/s':>10}{'TFLOP/s':>9}")
  print(header)
  for spec in args.configs:
    stage, variant = spec.split(":")
    config = load_config_dict(f"configs/{stage}.py:{variant}")
    run = setup(config)
    tcfg, mcfg, train_step = run.train_cfg, run.model_cfg, run.train_step
    state = run.init_state()
    it = make_iterator(config, tcfg, mcfg, 0, 1)
    batches = [to_global(next(it), run.mesh, tcfg.batch_size) for _ in range(args.steps + 1)]
    t0 = time.perf_counter()
    state, m = train_step(state, batches[0])
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    times, images = [], 0
    for batch in batches[1:]:
      t0 = time.perf_counter()
      state, m = train_step(state, batch)
      m = jax.device_get(m)
      times.append(time.perf_counter() - t0)
      images += int(m["images"])
    dt = float(np.median(times))
    tokens = tcfg.batch_size * tcfg.seq_len
    ipr = images / (len(times) * tcfg.batch_size)
    flops = tokens * model_flops_per_token(mcfg, tcfg.seq_len, images_per_row=ipr,
                                           trainable=trainable_parts(tcfg.optim.frozen))
    n_params = count_parameters(mcfg)["total"]
    print(f"{spec:<14}{n_params / 1e6:>10.2f}M{tcfg.batch_size:>6} x {tcfg.seq_len:<4}"
          f"{mcfg.vision.image_size:>5}{tcfg.grad_accum:>6}{compile_s:>10.1f}{dt:>9.3f}"
          f"{tokens / dt:>11,.0f}{images / len(times) / dt:>10.1f}{flops / dt / 1e12:>9.4f}")
    sys.stdout.flush()


if __name__ == "__main__":
  main()
