"""Layer-wise LR decay read back from the optimizer, freezing without optimizer state, decay mask."""


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from qwenvl_jax.config import OptimConfig, model_config_from_dict
from qwenvl_jax.train import optim
from tests.train.helpers import flat, initial_state, stage_config


@pytest.fixture(scope="module")
def tiny():
  cfg = model_config_from_dict(stage_config(2).model)
  params, _ = initial_state(cfg)
  return cfg, jax.tree.map(jnp.asarray, params)


def _effective_lrs(ocfg, model_cfg, params):
  """Per-element LR of the first update, read back from the optimizer: with zero parameters (no
  weight-decay term) and equal gradients g everywhere, Adam's first direction is c / (c + eps) with
  c = the clipped g, so update / direction = -lr_effective."""
  tx, _ = optim.make_optimizer(ocfg, model_cfg, params, steps=10)
  zeros = jax.tree.map(jnp.zeros_like, params)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = jax.jit(tx.update)(grads, tx.init(zeros), zeros)
  labels = jax.tree.leaves(optim.labels(params, ocfg.frozen))
  n = sum(x.size for x, lab in zip(jax.tree.leaves(params), labels) if lab == optim.TRAIN)
  c = min(1.0, ocfg.grad_clip / np.sqrt(n))
  direction = c / (c + ocfg.eps)
  return {k: -np.asarray(u, np.float64) / direction for k, u in flat(updates).items()}


def test_layerwise_decay_read_back_matches_formula(tiny):
  cfg, params = tiny
  lr, d, n_layers = 1e-3, 0.95, cfg.vision.layers
  ocfg = OptimConfig(peak_lr=lr, min_lr=0.0, warmup_steps=0, frozen=())
  lrs = _effective_lrs(ocfg, cfg, params)
  seen_blocks = 0
  for path, eff in lrs.items():
    if path.startswith("visual.blocks."):
      assert eff.shape[0] == n_layers
      for i in range(n_layers):  # block i of L: lr * d^(L - i), every element of the row
        np.testing.assert_allclose(eff[i], lr * d ** (n_layers - i), rtol=1e-5, err_msg=f"{path}[{i}]")
      seen_blocks += 1
    elif path.split(".")[0] == "visual":  # patch/pos embeddings and ln_pre: the deepest factor
      np.testing.assert_allclose(eff, lr * d ** (n_layers + 1), rtol=1e-5, err_msg=path)
    else:  # adapter and LLM: undecayed
      np.testing.assert_allclose(eff, lr, rtol=1e-5, err_msg=path)
  assert seen_blocks == 12  # ln_1/ln_2 scale+bias, qkv/out/fc_in/fc_out kernel+bias
  groups = optim.lr_groups(ocfg, cfg, 10, 0)
  assert groups["vit_block_0"] == pytest.approx(lr * d ** 2)
  assert groups["vit_block_1"] == pytest.approx(lr * d)


def test_frozen_parts_get_no_update_and_no_moments(tiny):
  cfg, params = tiny
  for frozen in [("llm",), ("visual", "adapter.ln_post", "adapter.proj")]:
    ocfg = OptimConfig(peak_lr=1e-3, warmup_steps=0, frozen=frozen)
    lrs = _effective_lrs(ocfg, cfg, params)
    state = optim.make_optimizer(ocfg, cfg, params, 10)[0].init(params)
    # Optimizer state = two Adam moments of the trained parameters + two step counters (adam, schedule).
    trained = sum(v.size for k, v in flat(params).items() if not optim.is_frozen(k, frozen))
    assert optim.count_state(state) == 2 * trained + 2
    state_paths = [optim.path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(state)]
    for k, eff in lrs.items():
      frozen_leaf = optim.is_frozen(k, frozen)
      assert (np.all(eff == 0) if frozen_leaf else np.all(eff > 0)), k
      assert frozen_leaf != any(p.endswith("." + k) for p in state_paths), k


def test_frozen_prefix_typo_is_an_error(tiny):
  cfg, params = tiny
  with pytest.raises(ValueError, match="optim.frozen.*'vision' matches no parameter"):
    optim.make_optimizer(OptimConfig(frozen=("vision",)), cfg, params, 10)


def test_weight_decay_mask():
  no_decay = ["llm.embed", "visual.pos_embed", "adapter.query", "llm.ln_f.scale",
              "visual.blocks.attn.qkv.bias", "adapter.ln_kv.bias"]
  decay = ["llm.lm_head", "visual.patch_embed", "adapter.proj", "llm.blocks.mlp.w1.kernel",
           "visual.blocks.attn.qkv.kernel", "adapter.in_proj.kernel"]
  assert not any(optim.decays(p) for p in no_decay)
  assert all(optim.decays(p) for p in decay)


def test_weight_decay_reaches_only_decayed_leaves(tiny):
  """Parameters of ones, zero gradients, one update at lr: Adam's direction is 0, so only decoupled
  weight decay moves a parameter, by exactly -lr * wd (LLM and adapter: layer factor 1)."""
  cfg, params = tiny
  lr, wd = 1e-3, 0.05
  ocfg = OptimConfig(peak_lr=lr, min_lr=0.0, warmup_steps=0, weight_decay=wd, frozen=())
  tx, _ = optim.make_optimizer(ocfg, cfg, params, steps=10)
  ones = jax.tree.map(jnp.ones_like, params)
  updates, _ = jax.jit(tx.update)(jax.tree.map(jnp.zeros_like, params), tx.init(ones), ones)
  u = flat(updates)
  for path in ("llm.ln_f.scale", "llm.embed", "adapter.query", "adapter.ln_post.bias",
               "llm.blocks.attn.qkv.bias"):
    assert np.all(u[path] == 0), path
  for path in ("llm.lm_head", "adapter.proj", "llm.blocks.mlp.w1.kernel"):
    np.testing.assert_allclose(u[path], -lr * wd, rtol=1e-6, err_msg=path)


def test_schedule_warmup_then_cosine_to_min():
  ocfg = OptimConfig(peak_lr=2e-4, min_lr=1e-6, warmup_steps=500)
  s = optim.schedule(ocfg, 50_000)
  assert float(s(0)) == 0.0
  assert float(s(250)) == pytest.approx(1e-4)
  assert float(s(500)) == pytest.approx(2e-4)
  assert float(s(50_000)) == pytest.approx(1e-6)
  mid = 500 + (50_000 - 500) // 2
  assert float(s(mid)) == pytest.approx(1e-6 + (2e-4 - 1e-6) / 2, rel=1e-3)


def test_bf16_moments_are_stored_in_bf16_and_update_from_float32(tiny):
  """`moment_dtype=bfloat16`: both Adam moments are stored in bf16; the first update (moments from
  zero) equals the float32 optimizer's exactly, the second is computed from the rounded moments."""
  model_cfg, params = tiny
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.3) + 1e-3 * jnp.arange(p.size).reshape(p.shape),
                       params)
  out = {}
  for dtype in ("float32", "bfloat16"):
    tx, _ = optim.make_optimizer(OptimConfig(moment_dtype=dtype), model_cfg, params, steps=10)
    state = tx.init(params)
    u1, state = jax.jit(tx.update)(grads, state, params)
    u2, state = jax.jit(tx.update)(grads, state, params)
    out[dtype] = u1, u2, state
  adam = lambda s: s.inner_states["train"].inner_state[1]
  moments = jax.tree.leaves((adam(out["bfloat16"][2]).mu, adam(out["bfloat16"][2]).nu))
  assert moments and all(m.dtype == jnp.bfloat16 for m in moments)
  assert adam(out["bfloat16"][2]).count.dtype == jnp.int32
  for a, b in zip(jax.tree.leaves(out["float32"][0]), jax.tree.leaves(out["bfloat16"][0])):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(out["float32"][1]), jax.tree.leaves(out["bfloat16"][1])):
    np.testing.assert_allclose(b, a, rtol=1e-2, atol=1e-9)


def test_bf16_moments_need_b2_at_most_099():
  from qwenvl_jax.config import ConfigError
  with pytest.raises(ConfigError, match="optim.moment_dtype"):
    OptimConfig(b2=0.999, moment_dtype="bfloat16").validate()
  with pytest.raises(ConfigError, match="optim.moment_dtype"):
    OptimConfig(moment_dtype="float16").validate()


@pytest.mark.parametrize("max_norm", [0.5, 2.0, 100.0])
def test_gradient_clip_equals_optax(max_norm):
  """The step's clip (one scalar multiply) against `optax.clip_by_global_norm`: the same updates up
  to rounding, whether it clips (norm 5.0 > 0.5, 2.0) or not (100.0, then bit-equal), and the same
  (empty) state, so checkpoints written with either load into the other."""
  tree = {"a": jnp.asarray([3.0, 0.0], jnp.float32), "b": {"c": jnp.full((2, 2), 2.0, jnp.float32)}}
  ours, ref = optim.clip_by_global_norm(max_norm), optax.clip_by_global_norm(max_norm)
  got, state = ours.update(tree, ours.init(tree))
  want, _ = ref.update(tree, ref.init(tree))
  assert jax.tree.structure(state) == jax.tree.structure(ref.init(tree))
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    if max_norm > 5.0:
      np.testing.assert_array_equal(g, w)
    np.testing.assert_allclose(g, w, rtol=1e-6)
  norm = float(jnp.sqrt(sum(jnp.sum(x * x) for x in jax.tree.leaves(got))))
  assert norm == pytest.approx(min(max_norm, 5.0), rel=1e-6)
