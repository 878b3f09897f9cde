"""The fine-tuning method comparison (experiments/finetune_methods.py): the three configs differ only
in what they train and store, and its accounting matches the LoRA / Adam formulas."""

from experiments import finetune_methods as fm
from qwenvl_jax.config import model_config_from_dict


def test_methods_share_data_seed_and_steps():
  configs = {m: fm.get_config(m).to_dict() for m in fm.METHODS}
  for m, c in configs.items():
    c.pop("lora"), c["optim"].pop("peak_lr")
    assert c == configs["full"], m
  assert fm.get_config("qlora").lora.quantize == "nf4" and not fm.get_config("full").lora.enabled


def test_accounting_matches_the_lora_and_adam_formulas():
  cfg = model_config_from_dict(fm.get_config("lora").model)
  llm, r = cfg.llm, fm.lora_section("lora")["rank"]
  attn = llm.heads * llm.head_dim
  # A [in, r] + B [r, out] per target and layer: c_attn D -> 3*attn, attn.c_proj attn -> D, w1 / w2 D -> F.
  per_layer = r * ((llm.hidden + 3 * attn) + (attn + llm.hidden) + 2 * (llm.hidden + llm.mlp_dim))
  counters = 8  # Adam's step count and the schedule's, int32
  lora, qlora, save, full = (fm.state_accounting(m) for m in ("lora", "qlora", "lora_save", "full"))
  # modules_to_save: the embedding and the LM head in full.
  assert save["trainable_params"] == llm.layers * per_layer + 2 * llm.vocab_size * llm.hidden
  assert lora["trainable_params"] == qlora["trainable_params"] == llm.layers * per_layer
  for acc in (lora, qlora, save, full):
    assert acc["optimizer_state_bytes"] == 2 * 4 * acc["trainable_params"] + counters
  # Q-LoRA stores the LLM's linear kernels in 4 bits: its frozen base is far below LoRA's float32 one.
  assert qlora["frozen_param_bytes"] + qlora["buffer_bytes"] < 0.6 * lora["frozen_param_bytes"]
