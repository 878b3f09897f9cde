"""AOT compile reports (`perf/aot.py`, `qwenvl-jax aot`): fields, FLOP accounting, clear errors.

Default tests compile the tiny config for local CPU devices; compiling for a TPU topology through
libtpu, and the 7B model, are slow-marked.
"""


import pytest

from qwenvl_jax.cli import main as cli_main
from qwenvl_jax.config import ConfigError, load_config_dict, model_config_from_dict
from qwenvl_jax.perf import aot
from qwenvl_jax.model.flops import decode_step_flops, prefill_flops, step_flops

TINY = "stage2:tiny"  # batch 16 x 64 tokens, 2 images per row at 56px, 2 microbatches


def _tiny_cfg(**model):
  cfg = load_config_dict(TINY)
  for k, v in model.items():
    cfg.model[k] = v
  return cfg


# --------------------------------------------------------------------------------------------
# Bad input: fails before any tracing, with the offending value in the message.


@pytest.mark.parametrize("name", ["v9x:2x2", "v5p", "v5p:2x", "tpu:2x2x1"])
def test_unknown_topology_names_the_known_generations(name):
  with pytest.raises(aot.AOTError, match=r"unknown topology .*v5e.*v5p"):
    aot.resolve_target(name)


def test_mesh_that_does_not_cover_the_devices_raises():
  with pytest.raises(ConfigError, match=r"mesh.*needs 3 devices, have 4"):
    aot.compile_train(TINY, "cpu:4", mesh="data=3,fsdp=1,tensor=1", compile=False)
  with pytest.raises(aot.AOTError, match=r"'pipeline=2' is not <axis>=<size>"):
    aot.parse_mesh("data=1,pipeline=2")


def test_batch_that_does_not_divide_raises():
  # 16 rows / 8 microbatches = 2 rows, not divisible over fsdp=4.
  with pytest.raises(aot.AOTError, match=r"microbatch .* 2 rows is not divisible by the data x fsdp "
                                         r"mesh size 4"):
    aot.compile_train(TINY, "cpu:4", microbatches=8, compile=False)
  with pytest.raises(ConfigError, match=r"grad_accum"):
    aot.compile_train(TINY, "cpu:4", microbatches=3, compile=False)
  with pytest.raises(aot.AOTError, match=r"inference batch of 6 rows"):
    aot.compile_inference(TINY, "cpu:4", batch=6)


def test_cli_reports_a_bad_topology_as_one_line(capsys):
  assert cli_main(["aot", "--config", TINY, "--topology", "v9x:2x2"]) == 2
  err = capsys.readouterr().err
  assert "qwenvl-jax aot: error: unknown topology 'v9x:2x2'" in err and "Traceback" not in err


# --------------------------------------------------------------------------------------------
# FLOPs of the lowered program.


def test_program_flops_count_every_loop_iteration():
  # Scanned layers + 2 microbatches vs unrolled layers + 1 microbatch: the same matmuls run, so
  # counting a loop body once (as XLA's cost analysis does) would make these differ by ~2x.
  looped = aot.compile_train(TINY, "cpu:4", compile=False)
  flat = aot.compile_train(_tiny_cfg(scan_layers=False), "cpu:4", microbatches=1, compile=False)
  assert looped["flops"]["program_unknown_loops"] == 0
  assert looped["flops"]["program"] == pytest.approx(flat["flops"]["program"], rel=1e-3)
  # Without remat the program's matmuls are the formula's (checked against XLA in test_flops.py),
  # up to the input gradient of the patch embedding and the like: within 10%.
  assert looped["flops"]["program"] == pytest.approx(looped["flops"]["model"], rel=0.10)
  # Full remat recomputes every layer's forward in the backward pass.
  remat = aot.compile_train(_tiny_cfg(remat="full"), "cpu:4", compile=False)
  assert remat["flops"]["program"] > 1.05 * looped["flops"]["program"]
  assert remat["flops"]["model"] == looped["flops"]["model"]


# --------------------------------------------------------------------------------------------
# Compiled reports (CPU devices: memory is real, there is no HBM limit or peak).


@pytest.mark.slow  # minutes on 2 cores; test_inference_reports covers the report by default
def test_train_report_fields_and_memory_over_hbm():
  # One compile; a 1 MiB "HBM" makes the report say it does not fit instead of raising.
  r = aot.compile_train(TINY, "cpu:4", microbatches=1, hbm_bytes=2**20)
  cfg = load_config_dict(TINY)
  model_cfg = model_config_from_dict(cfg.model)
  assert (r["chips"], r["mesh"]) == (4, {"data": 1, "fsdp": 4, "tensor": 1})
  assert (r["global_batch"], r["microbatches"], r["rows_per_shard"]) == (16, 1, 4)
  mem = r["memory"]
  assert mem["arguments"] > 0 and mem["temporaries"] > 0 and mem["total"] > mem["arguments"] // 2
  assert mem["fits"] is False and mem["total"] > 2**20
  expected = step_flops(model_cfg, 16, cfg.seq_len, images_per_row=cfg.data.max_images).train
  assert r["flops"]["model"] == expected
  assert r["flops"]["xla_cost_analysis"] > 0
  text = aot.format_report(r)
  assert "model FLOPs" in text and "DOES NOT FIT" in text


def test_xla_out_of_memory_message_becomes_a_report():
  msg = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
         "temporaries (76.43G) exceeds available HBM (15.75G).")
  mem = aot._oom_memory(msg, 16 * 2**30)
  assert mem["fits"] is False
  assert mem["temporaries_at_least"] == pytest.approx(76.43 * 2**30)
  assert mem["hbm_available"] == pytest.approx(15.75 * 2**30)


def test_inference_reports():
  prefill, decode = aot.compile_inference(TINY, "cpu:4", batch=4, prompt_len=64, gen_len=16)
  model_cfg = model_config_from_dict(load_config_dict(TINY).model)
  assert prefill["flops"]["model"] == prefill_flops(model_cfg, 4, 64, 80, images_per_row=1)
  assert decode["flops"]["model"] == decode_step_flops(model_cfg, 4, 80)
  for r in (prefill, decode):
    assert r["memory"]["arguments"] > 0
    # Both formulas count what generate.py runs (attention over the whole cache): near-exact.
    assert r["flops"]["program"] == pytest.approx(r["flops"]["model"], rel=0.02)


# --------------------------------------------------------------------------------------------
# TPU topologies through libtpu (compile-only).


def test_tpu_lowering_runs_splash_attention():
  # "auto" resolves by the mesh's platform (a TPU topology on this CPU host), not the local
  # backend: the lowered program holds the Pallas kernels, not the XLA einsum path.
  r = aot.compile_train(TINY, "v5e:2x2", microbatches=1, compile=False)
  assert r["attention"] == "splash" and r["pallas_calls"] > 0
  r = aot.compile_train(_tiny_cfg(attention="xla"), "v5e:2x2", microbatches=1, compile=False)
  assert r["attention"] == "xla" and r["pallas_calls"] == 0


@pytest.mark.slow
def test_tiny_compiles_for_a_tpu_topology():
  r = aot.compile_train(TINY, "v5p:2x2x1")
  assert (r["device_kind"], r["chips"]) == ("TPU v5", 4)
  assert r["memory"]["fits"] is True and 0 < r["memory"]["total"] < 2**30
  pred = r["prediction"]
  assert pred["time_bound_s"] == pytest.approx(r["flops"]["program"] / (4 * 459e12))
  assert pred["time_estimate_s"] == pytest.approx(r["flops"]["model"] / (4 * 459e12 * 0.4))
  assert pred["time_memory_bound_s"] == pytest.approx(r["memory"]["arguments"] / 2.765e12)


@pytest.mark.slow
def test_program_flops_agree_with_xla_on_an_unrolled_program():
  # With no loops XLA's cost analysis is complete: our count (matmuls only) is within 10% of it.
  r = aot.compile_train(_tiny_cfg(scan_layers=False), "cpu:4", microbatches=1)
  assert r["flops"]["program"] == pytest.approx(r["flops"]["xla_cost_analysis"], rel=0.10)


@pytest.mark.slow
def test_7b_stage2_fits_a_v5p_slice():
  r = aot.compile_train("configs/stage2.py", "v5p:2x2x2", mesh="data=1,fsdp=8,tensor=1",
                        microbatches=512)
  assert r["memory"]["fits"] is True, r["memory"]
  assert r["global_batch"] == 4096 and r["rows_per_shard"] == 1
  assert r["flops"]["program"] > r["flops"]["model"]  # remat recomputation
