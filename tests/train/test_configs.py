"""Stage configs carry Table 8 of the paper; tiny/small variants load; the CLI applies overrides."""

import pytest

from qwenvl_jax.cli import build_parser
from qwenvl_jax.config import (ConfigError, apply_overrides, load_config_dict, model_config_from_dict,
                               train_config_from_dict)
from qwenvl_jax.train.metrics import model_flops_per_token, trainable_parts

TABLE8 = {  # stage: image px, seq, global batch, grad acc, steps, warmup, peak lr, min lr, frozen
    1: (224, 512, 30720, 6, 50_000, 500, 2e-4, 1e-6, ("llm",)),
    2: (448, 2048, 4096, 8, 19_000, 400, 5e-5, 1e-5, ()),
    3: (448, 2048, 128, 8, 8000, 3000, 1e-5, 1e-6, ("visual", "adapter.ln_post", "adapter.proj")),
}


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_stage_configs_match_table8(stage):
  cfg = load_config_dict(f"configs/stage{stage}.py")
  t, m = train_config_from_dict(cfg), model_config_from_dict(cfg.model)
  o = t.optim
  assert (m.vision.image_size, t.seq_len, t.batch_size, t.grad_accum, t.steps, o.warmup_steps,
          o.peak_lr, o.min_lr, o.frozen) == TABLE8[stage]
  assert (o.b1, o.b2, o.eps, o.weight_decay, o.grad_clip, o.vit_lr_decay) == (
      0.9, 0.98, 1e-6, 0.05, 1.0, 0.95)
  assert (m.dtype, m.param_dtype) == ("bfloat16", "float32")
  assert m.adapter.n_queries == 256 and m.vision.layers == 48
  assert cfg.mesh.tensor == (1 if stage == 1 else 2)  # Table 8: model parallelism -, 2, 2


@pytest.mark.parametrize("variant", ["tiny", "small"])
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_variants_load_and_stage1_has_the_lower_resolution(stage, variant):
  cfg = load_config_dict(f"configs/stage{stage}.py:{variant}")
  train_config_from_dict(cfg)
  size = model_config_from_dict(cfg.model).vision.image_size
  other = model_config_from_dict(load_config_dict(f"configs/stage2.py:{variant}").model).vision.image_size
  assert (size < other) if stage == 1 else (size == other)


def test_overrides_and_validation():
  cfg = apply_overrides(load_config_dict("configs/stage1.py:tiny"), ["steps=7", "optim.peak_lr=1e-4"])
  t = train_config_from_dict(cfg)
  assert (t.steps, t.optim.peak_lr) == (7, 1e-4)
  with pytest.raises(ConfigError, match="'grad_accum'.*not divisible"):
    train_config_from_dict(apply_overrides(cfg, ["grad_accum=3"]))
  with pytest.raises(ConfigError, match="optim.min_lr"):
    train_config_from_dict(apply_overrides(load_config_dict("configs/stage1.py:tiny"), ["optim.min_lr=1.0"]))
  args = build_parser().parse_args(["train", "--config", "configs/stage1.py:tiny", "--workdir", "w",
                                    "--set", "steps=3", "--resume"])
  assert args.overrides == ["steps=3"] and args.resume and args.init is None


def test_flops_per_token_counts_backward_only_where_needed():
  m = model_config_from_dict(load_config_dict("configs/stage2.py").model)
  full = model_flops_per_token(m, 2048, 448, images_per_row=1)
  s1 = model_flops_per_token(m, 2048, 448, images_per_row=1, trainable=trainable_parts(("llm",)))
  s3 = model_flops_per_token(m, 2048, 448, images_per_row=1, trainable=trainable_parts(("visual",)))
  assert s1 < full and s3 < full
  # ~6 x parameters per token for the LLM-dominated stage 2 (7.7B LLM + attention): 45-70 GFLOPs.
  assert 45e9 < full < 70e9


def test_training_longer_than_the_model_context_is_refused(tmp_path):
  from qwenvl_jax.train.loop import train
  from tests.train.helpers import stage_config
  config = stage_config(2, "seq_len=128")  # tiny: model.llm.seq_length = 64
  with pytest.raises(ConfigError, match="'seq_len'.*model.llm.seq_length"):
    train(config, tmp_path / "run")
  assert not (tmp_path / "run").exists()  # refused before anything is written


def test_init_compatibility_allows_what_changes_no_tensor():
  import dataclasses
  from qwenvl_jax.ckpt.checkpoint import check_compatible
  base = model_config_from_dict(load_config_dict("tiny").model)
  windowed = dataclasses.replace(base, vision=dataclasses.replace(base.vision, window_patches=2, global_every=base.vision.global_every + 1))
  assert check_compatible(base, windowed, "ckpt") == ["vision.global_every", "vision.window_patches"]
  wider = dataclasses.replace(base, llm=dataclasses.replace(base.llm, mlp_dim=base.llm.mlp_dim * 2))
  with pytest.raises(ConfigError, match="model.llm.mlp_dim"):
    check_compatible(base, wider, "ckpt")
