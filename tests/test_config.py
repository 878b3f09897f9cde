"""Config validation names the bad field; the 7B config reproduces the released parameter count."""

import dataclasses

import pytest

from qwenvl_jax.cli import main
from qwenvl_jax.config import (ConfigError, MeshConfig, apply_overrides, load_config_dict,
                               load_model_config, model_config_from_dict)
from qwenvl_jax.model.params import count_parameters


def test_7b_config_matches_reference_values():
  cfg = load_model_config("qwen_vl_7b")
  assert (cfg.vision.width, cfg.vision.layers, cfg.vision.heads, cfg.vision.mlp_dim) == (1664, 48, 16, 8192)
  assert (cfg.llm.hidden, cfg.llm.layers, cfg.llm.mlp_dim, cfg.llm.vocab_size) == (4096, 32, 11008, 151936)
  assert cfg.adapter.n_queries == 256 and cfg.image_start_id == 151857


def test_parameter_count_equals_released_checkpoint():
  counts = count_parameters(load_model_config("qwen_vl_7b"))
  # Figures from the released state dict's shapes (shared/reference/qwen-vl-reference.md).
  assert counts["llm"] == 7_721_324_544
  assert counts["vit"] == 1_842_770_688
  assert counts["adapter"] == 92_839_936
  assert counts["total"] == 9_656_935_168
  # Table 1 of the paper: ViT 1.9B, adapter 0.08B, LLM 7.7B.
  assert round(counts["paper_vit"] / 1e9, 1) == 1.9
  assert round(counts["paper_adapter"] / 1e9, 2) == 0.08
  assert round(counts["llm"] / 1e9, 1) == 7.7


def test_params_command_prints_table(capsys):
  assert main(["params", "--config", "qwen_vl_7b"]) == 0
  out = capsys.readouterr().out
  assert "9,656,935,168" in out and "1.9B" in out and "0.08B" in out and "7.7B" in out


@pytest.mark.parametrize("bad,field", [
    (dict(vision=dict(width=100, heads=16)), "model.vision.width"),
    (dict(vision=dict(image_size=450)), "model.vision.image_size"),
    (dict(llm=dict(heads=30)), "model.llm.heads"),
    (dict(adapter=dict(n_queries=250)), "model.adapter.n_queries"),
    (dict(dtype="float8"), "model.dtype"),
    (dict(llm=dict(hiden=3)), "model.llm"),
    (dict(vision=dict(layers="48")), "model.vision.layers"),
    # Zero sizes are named, not a ZeroDivisionError from a divisibility check.
    (dict(adapter=dict(heads=0)), "model.adapter.heads"),
    (dict(vision=dict(heads=0)), "model.vision.heads"),
    (dict(vision=dict(patch_size=0)), "model.vision.patch_size"),
    (dict(llm=dict(layers=0)), "model.llm.layers"),
])
def test_invalid_model_configs_name_the_field(bad, field):
  with pytest.raises(ConfigError, match=f"'{field}'"):
    model_config_from_dict(bad)


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_scaled_configs_keep_the_released_architecture(name):
  """tiny / small differ from the 7B model only in sizes: every other field is the released value,
  and the image special ids sit at the top of their small vocabulary."""
  cfg, full = load_model_config(name), load_model_config("qwen_vl_7b")
  sizes = {"vision": {"image_size", "width", "layers", "heads", "mlp_dim", "pos_grid", "global_every"},
           "adapter": {"n_queries", "heads"},
           "llm": {"vocab_size", "hidden", "layers", "heads", "head_dim", "mlp_dim", "seq_length"}}
  for section, sized in sizes.items():
    ours, released = dataclasses.asdict(getattr(cfg, section)), dataclasses.asdict(getattr(full, section))
    assert {k: v for k, v in ours.items() if k not in sized} == \
        {k: v for k, v in released.items() if k not in sized}, section
  v = cfg.llm.vocab_size
  assert (cfg.image_start_id, cfg.image_end_id, cfg.image_pad_id) == (v - 3, v - 2, v - 1)
  assert cfg.dtype == cfg.param_dtype == "float32" and cfg.remat == "none"


def test_mesh_must_divide_devices():
  assert MeshConfig(2, -1, 2).resolved_shape(8) == (2, 2, 2)
  with pytest.raises(ConfigError, match="mesh.fsdp"):
    MeshConfig(3, -1, 1).resolved_shape(8)
  with pytest.raises(ConfigError, match="needs 12 devices"):
    MeshConfig(3, 2, 2).resolved_shape(8)


def test_overrides_and_missing_files():
  cfg = load_config_dict("tiny")
  apply_overrides(cfg, ["model.llm.layers=3", "model.dtype=bfloat16"])
  assert cfg.model.llm.layers == 3 and cfg.model.dtype == "bfloat16"
  with pytest.raises(ConfigError, match="no config field 'model.llm.nope'"):
    apply_overrides(cfg, ["model.llm.nope=1"])
  with pytest.raises(ConfigError, match="not found"):
    load_config_dict("configs/does_not_exist.py")


def test_config_spellings_load_the_packaged_configs(tmp_path, monkeypatch):
  """`configs/stage2.py:tiny` (the path before configs moved into the package), `stage2:tiny`, and
  the same from another working directory all load qwenvl_jax/configs/stage2.py."""
  import pathlib
  want = load_config_dict("stage2:tiny").to_dict()
  monkeypatch.chdir(tmp_path)
  assert load_config_dict("configs/stage2.py:tiny").to_dict() == want
  assert load_config_dict(str(pathlib.Path("/nowhere/configs/stage2.py")) + ":tiny").to_dict() == want
  # A file at the given path wins over the packaged config of the same name.
  (tmp_path / "configs").mkdir()
  (tmp_path / "configs" / "tiny.py").write_text(
      "import ml_collections\ndef get_config(variant=None):\n  return ml_collections.ConfigDict(dict(who='mine'))\n")
  assert load_config_dict("configs/tiny.py").who == "mine"
  assert "who" not in load_config_dict("tiny")


def test_configs_still_in_the_checkouts_configs_folder_load(tmp_path, monkeypatch):
  from qwenvl_jax import config as config_lib
  (tmp_path / "newcfg.py").write_text(
      "import ml_collections\ndef get_config(variant=None):\n  return ml_collections.ConfigDict(dict(v=variant))\n")
  monkeypatch.setattr(config_lib, "CONFIG_DIR", tmp_path)
  assert load_config_dict("newcfg:lora").v == "lora"
  assert load_config_dict("configs/newcfg.py:qlora").v == "qlora"
  with pytest.raises(ConfigError, match="not found.*known: .*stage2"):
    load_config_dict("nocfg")


def test_mesh_rules_field_overrides_the_table():
  from flax import nnx
  from qwenvl_jax.config import mesh_config_from_dict
  from qwenvl_jax.model.qwenvl import QwenVL
  from qwenvl_jax.sharding import (DEFAULT_RULES, abstract_state, create_mesh, logical_rules, param_shardings,
                                   rules_for)
  cfg = load_config_dict("stage2:tiny")
  assert mesh_config_from_dict(cfg.mesh).rules == () and rules_for(()) == DEFAULT_RULES
  apply_overrides(cfg, ['mesh.rules=(("embed", None), ("mlp", ["fsdp"]))'])
  mesh_cfg = mesh_config_from_dict(cfg.mesh)
  assert mesh_cfg.rules == (("embed", None), ("mlp", ("fsdp",)))
  mesh = create_mesh(MeshConfig(1, 8, 1))
  model_cfg = model_config_from_dict(cfg.model)
  _, state = abstract_state(lambda: QwenVL(model_cfg, rngs=nnx.Rngs(0)), mesh)
  spec = lambda: param_shardings(state, mesh).to_pure_dict()["llm"]["blocks"]["mlp"]["w1"]["kernel"].spec
  assert "fsdp" in tuple(spec())  # default: the LLM width over fsdp
  with logical_rules(rules_for(mesh_cfg.rules)):
    assert tuple(spec())[1:] == (None, "fsdp")  # [layers, embed, mlp]: width replicated, mlp over fsdp
  with pytest.raises(ConfigError, match="mesh.rules.*unknown logical axis 'embedd'"):
    rules_for((("embedd", None),))
  with pytest.raises(ConfigError, match="mesh.rules.*not among"):
    mesh_config_from_dict(dict(rules=[["embed", "model"]]))
