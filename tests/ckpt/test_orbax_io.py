"""Our checkpoint dir: restore onto another mesh, training workdirs, named errors, atomic writes."""

import json
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils import epath
from flax import nnx

from qwenvl_jax.ckpt import convert, hf_io, hf_layout, orbax_io
from qwenvl_jax.ckpt.checkpoint import (CheckpointError, flatten_dict, read_model_config,
                                        resolve_checkpoint, unflatten_dict)
from qwenvl_jax.ckpt.orbax_io import load_checkpoint, save_checkpoint
from qwenvl_jax.config import MeshConfig
from qwenvl_jax.sharding import batch_sharding, create_mesh, param_shardings
from tests.ckpt.helpers import load_hf_tensors


@nnx.jit
def _logits(model, ids, images):
  return model(ids, images)


def _inputs(cfg):
  span = cfg.image_span
  row = [5, 6] + span + list(range(10, 40))
  ids = np.asarray([row] * 8, np.int32)
  images = np.random.default_rng(0).standard_normal((8, 1, 56, 56, 3)).astype(np.float32)
  return ids, images


def _pure(model):
  return {k: np.asarray(v) for k, v in flatten_dict(nnx.state(model).to_pure_dict()).items()}


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")
def test_save_on_one_mesh_restore_on_another(orbax_fp32, tmp_path):
  mesh_a = create_mesh(MeshConfig(8, 1, 1))
  model_a, cfg, _ = load_checkpoint(orbax_fp32, mesh=mesh_a)
  ids, images = _inputs(cfg)
  with jax.set_mesh(mesh_a):
    ref = np.asarray(_logits(model_a, jax.device_put(ids, batch_sharding(mesh_a, 2)),
                             jax.device_put(images, batch_sharding(mesh_a, 5))))
  save_checkpoint(tmp_path / "saved", model_a, cfg)

  mesh_b = create_mesh(MeshConfig(2, 2, 2))
  model_b, cfg_b, _ = load_checkpoint(tmp_path / "saved", mesh=mesh_b)
  assert cfg_b == cfg
  want = flatten_dict(param_shardings(nnx.state(model_b), mesh_b).to_pure_dict())
  got = flatten_dict(nnx.state(model_b).to_pure_dict())
  for name, sharding in want.items():
    assert got[name].sharding.is_equivalent_to(sharding, got[name].ndim), name
  qkv = model_b.llm.blocks.attn.qkv.kernel[...]
  assert qkv.sharding.mesh.shape == mesh_b.shape
  assert qkv.addressable_shards[0].data.shape[1] == cfg.llm.hidden // 2  # fsdp = 2
  with jax.set_mesh(mesh_b):
    out = np.asarray(_logits(model_b, jax.device_put(ids, batch_sharding(mesh_b, 2)),
                             jax.device_put(images, batch_sharding(mesh_b, 5))))
  assert np.abs(out - ref).max() < 1e-5
  single, _, _ = load_checkpoint(tmp_path / "saved")
  assert np.abs(np.asarray(_logits(single, ids, images)) - ref).max() < 1e-5


def test_training_workdir_latest_step(orbax_fp32, tmp_path):
  """WORKDIR/checkpoints/<step>/params via a CheckpointManager, as the trainer writes it."""
  model, cfg, _ = load_checkpoint(orbax_fp32)
  pure = nnx.state(model).to_pure_dict()
  workdir = tmp_path / "work"
  with ocp.CheckpointManager(epath.Path(workdir / "checkpoints"), item_names=("params",)) as mgr:
    for step, scale in ((10, 1.0), (20, 2.0)):
      tree = jax.tree.map(lambda x, s=scale: x * s, pure)
      mgr.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(tree)))
    mgr.wait_until_finished()
  shutil.copy(orbax_fp32 / "model_config.json", workdir / "model_config.json")
  loaded, _, tok = load_checkpoint(workdir)
  np.testing.assert_array_equal(np.asarray(loaded.llm.ln_f.scale[...]),
                                2.0 * np.asarray(model.llm.ln_f.scale[...]))
  assert tok is None
  out = convert.convert_orbax_to_hf(workdir, tmp_path / "hf", dtype="fp32")
  exported = load_hf_tensors(out)["transformer.ln_f.weight"].numpy()
  np.testing.assert_array_equal(exported, 2.0 * np.asarray(model.llm.ln_f.scale[...]))


def _write_raw(path, flat, cfg_src):
  """An Orbax params item written directly (bypassing save_checkpoint's own validation)."""
  path.mkdir()
  with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as ckptr:
    ckptr.save(epath.Path(path / "params"), args=ocp.args.PyTreeSave(unflatten_dict(flat)))
  shutil.copy(cfg_src / "model_config.json", path / "model_config.json")
  return path


@pytest.fixture(scope="module")
def flat_params(orbax_fp32):
  model, _, _ = load_checkpoint(orbax_fp32)
  return _pure(model)


def test_load_errors_name_keys_shapes_and_fields(orbax_fp32, flat_params, tmp_path):
  missing = dict(flat_params)
  del missing["adapter.ln_q.bias"]
  with pytest.raises(CheckpointError, match=r"missing keys.*adapter\.ln_q\.bias"):
    load_checkpoint(_write_raw(tmp_path / "missing", missing, orbax_fp32))

  extra = dict(flat_params, **{"llm.surprise": np.zeros(3, np.float32)})
  with pytest.raises(CheckpointError, match=r"unexpected keys.*llm\.surprise"):
    load_checkpoint(_write_raw(tmp_path / "extra", extra, orbax_fp32))

  shape = dict(flat_params)
  shape["visual.blocks.mlp.fc_out.bias"] = np.zeros((2, 31), np.float32)
  with pytest.raises(CheckpointError) as e:
    load_checkpoint(_write_raw(tmp_path / "shape", shape, orbax_fp32))
  for part in ("visual.blocks.mlp.fc_out.bias", "(2, 31)", "(2, 32)"):
    assert part in str(e.value)

  wrong_cfg = _write_raw(tmp_path / "cfg", dict(flat_params), orbax_fp32)
  cfg_json = json.loads((wrong_cfg / "model_config.json").read_text())
  cfg_json["llm"]["mlp_dim"] = 96
  (wrong_cfg / "model_config.json").write_text(json.dumps(cfg_json))
  with pytest.raises(CheckpointError, match=r"config field 'model\.llm\.mlp_dim'.*96.*64"):
    load_checkpoint(wrong_cfg)

  with pytest.raises(CheckpointError, match="not a complete checkpoint"):
    load_checkpoint(tmp_path)
  with pytest.raises(FileExistsError):
    cfg = read_model_config(resolve_checkpoint(orbax_fp32))
    save_checkpoint(wrong_cfg, flat_params, cfg)


def _hf_variant(src, dst, drop=(), add=None, reshape=None):
  """A copy of an HF checkpoint with keys dropped / added / replaced (one safetensors file)."""
  w = hf_io.HFWeights(src)
  tensors = {k: w.read(k) for k in w.keys() if k not in drop}
  tensors.update(add or {})
  tensors.update(reshape or {})
  dst.mkdir()
  shutil.copy(src / "config.json", dst / "config.json")
  specs = [(k, v.shape, v.dtype) for k, v in tensors.items()]
  hf_io.write_shards(dst, specs, tensors.__getitem__, shard_size=1 << 30)
  return dst


def test_hf_import_errors_name_keys_shapes_and_fields(hf_fp32, tmp_path):
  src = _hf_variant(hf_fp32, tmp_path / "missing", drop=["transformer.h.1.mlp.w2.weight"])
  with pytest.raises(hf_layout.LayoutError, match=r"missing keys.*transformer\.h\.1\.mlp\.w2\.weight"):
    convert.convert_hf_to_orbax(src, tmp_path / "o1")
  src = _hf_variant(hf_fp32, tmp_path / "extra",
                    add={"transformer.h.0.mlp.w3.weight": np.zeros((2, 2), np.float32)})
  with pytest.raises(hf_layout.LayoutError, match=r"unexpected keys.*transformer\.h\.0\.mlp\.w3\.weight"):
    convert.convert_hf_to_orbax(src, tmp_path / "o2")
  src = _hf_variant(hf_fp32, tmp_path / "shape",
                    reshape={"transformer.visual.attn_pool.attn.in_proj_bias": np.zeros(95, np.float32)})
  with pytest.raises(hf_layout.LayoutError) as e:
    convert.convert_hf_to_orbax(src, tmp_path / "o3")
  for part in ("transformer.visual.attn_pool.attn.in_proj_bias", "(95,)", "(96,)"):
    assert part in str(e.value)
  src = _hf_variant(hf_fp32, tmp_path / "cfg")
  cj = json.loads((src / "config.json").read_text())
  cj["vocab_size"] = 600
  (src / "config.json").write_text(json.dumps(cj))
  with pytest.raises(hf_layout.LayoutError, match=r"config field 'model\.llm\.vocab_size'.*600.*512"):
    convert.convert_hf_to_orbax(src, tmp_path / "o4")
  assert not any(p.name.startswith(("o1", "o2", "o3", "o4", ".o")) for p in tmp_path.iterdir())


class _Boom(RuntimeError):
  pass


def test_interrupted_conversions_leave_nothing_that_looks_complete(hf_fp32, orbax_fp32, tmp_path,
                                                                    monkeypatch):
  calls = {"n": 0}
  real_read = hf_io.HFWeights.read

  def flaky_read(self, key, rows=None):
    calls["n"] += 1
    if calls["n"] == 20:  # mid-way through the parameters
      raise _Boom("disk went away")
    return real_read(self, key, rows)

  monkeypatch.setattr(hf_io.HFWeights, "read", flaky_read)
  with pytest.raises(Exception, match="disk went away"):
    convert.convert_hf_to_orbax(hf_fp32, tmp_path / "orbax")
  monkeypatch.setattr(hf_io.HFWeights, "read", real_read)
  assert calls["n"] == 20
  assert list(tmp_path.iterdir()) == []  # neither the destination nor a temporary sibling

  real_param_read = orbax_io.ParamReader.read
  calls["n"] = 0

  def flaky_param_read(self, name, index=None):
    calls["n"] += 1
    if calls["n"] == 20:
      raise _Boom("disk went away")
    return real_param_read(self, name, index)

  monkeypatch.setattr(orbax_io.ParamReader, "read", flaky_param_read)
  with pytest.raises(_Boom):
    convert.convert_orbax_to_hf(orbax_fp32, tmp_path / "hf", shard_size=10_000)
  assert list(tmp_path.iterdir()) == []
