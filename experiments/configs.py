"""The from-scratch experiment model and its three stage configs, sized for a 60-minute run on 2 CPU cores.

  qwenvl-jax train --config experiments/configs.py:stage1 --workdir W [--set ...]
  variants: stage0 | stage1 | stage2 | stage3 (the driver experiments/three_stage.py fills in data paths,
  tokenizer, vocabulary size and image ids with --set)

Why not configs/small.py: the `small` model (19.5M parameters, 112-224 px at patch 14, 64 queries)
takes ~12 s per 32-row step on this shared 2-core machine (measured at load ~7), so 60 minutes buy
~300 steps, too few to learn grounding or reading from scratch. This "xs" variant (~2.6M parameters
with the 896-token vocabulary) keeps the architecture (ViT with a learned 2D position table,
one-layer cross-attention adapter with 2D sin-cos positions, Qwen-style LLM with RoPE / SwiGLU /
RMSNorm) at half the width and depth, patch 12 instead of 14, and 16 queries instead of 64.

Departures from Table 8, all forced by training from scratch at this scale (stated in experiments/README.md):
- a vision warm-up (experiments/vision_warmup.py, not a config here) warms up the ViT + adapter on the
  training annotations through throw-away heads (there is no pre-trained CLIP ViT either);
- a "stage 0" pre-trains the LLM on the task texts without images (there is no Qwen-7B); stage 1 then
  freezes it as in the paper, so the captions can only get better through the vision side
  (with the LLM trainable in stage 1, 120 steps learned the caption prior and ignored the image);
- stages 2 and 3 run at 20x and 30x the paper's rates (1e-3, 3e-4; small model, few steps), stage 0 at 1e-3;
  stage 1 keeps the paper's 2e-4 but trains only the adapter's output map (ln_post, proj), and
  stage 2 freezes the ViT and the adapter (the paper trains both in stages 1 and 2), so that no
  stage washes out what the vision warm-up taught the vision side about where things are (each trained stage
  cost box precision; experiments/README.md); stage 3 freezes the adapter too (the paper trains it)
  and, besides the chat data, replays stage-2 samples and asks for boxes and answers in single chat
  turns (experiments/sft_mixture.py), so that the chat model keeps what stage 2 learnt;
- the adapter starts from a local attention pattern (`adapter.local_init`, see Adapter.local_init):
  under the released random init every query averages all patches and, from scratch, the image path
  stayed unused for the whole 60-minute budget (measured in experiments/README.md);
- stage 1 at 72 px (6x6 patches), stages 2-3 at 96 px (8x8; the paper: 224 -> 448, 16x16 -> 32x32).
"""

import ml_collections

from qwenvl_jax.config import scaled_model_config
from qwenvl_jax.configs.stages import build

VOCAB = 896  # the SentencePiece vocabulary padded to 128; the driver sets the real value and ids


def xs_model(image_size: int, n_queries: int = 16, window_patches: int = 0, vocab_size: int = VOCAB,
             local_init: float = 3.0):
  return scaled_model_config(
      vocab_size,
      vision=dict(image_size=image_size, patch_size=12, width=96, layers=4, heads=4, mlp_dim=384,
                  pos_grid=8, window_patches=window_patches, global_every=2),
      adapter=dict(n_queries=n_queries, heads=4, local_init=local_init),
      llm=dict(hidden=192, layers=3, heads=3, head_dim=64, mlp_dim=512, seq_length=256))


# The adapter without its output map (ln_post, proj): what stage 1 keeps frozen.
ADAPTER_CORE = tuple(f"adapter.{name}" for name in ("query", "kv_proj", "ln_q", "ln_kv", "in_proj", "out_proj"))

# read_prefetch: a packed stage-2 step takes ~40 samples; with grain's default-sized buffer (16) the
# reader threads sat idle during the step (measured: 7500 stage-2 steps 2417 s -> 2328 s at 128).
# Stage 2's pre-training tasks (also stage 3's replay). ref_grounding named 3 times: drawn 3 times as
# often (grounding is the slowest to learn).
PRETRAIN_TASKS = ("caption", "vqa", "grounding", "ref_grounding", "ref_grounding", "ref_grounding",
                  "grounded_caption", "ocr")

_DATA = dict(source="jsonl", paths=(), tokenizer="", num_workers=0, read_prefetch=128)

VALUES = {
    # Stage 0 stands in for the paper's pre-trained LLM: the task texts without images, packed.
    "stage0": dict(stage=1, image_size=72, seq_len=128, batch_size=16, grad_accum=1, steps=300,
                   peak_lr=1e-3, min_lr=1e-5, warmup_steps=20, frozen=(),
                   data=dict(_DATA, format="pretrain", tasks=("pure_text",), layout="packed",
                             max_images=0)),
    # Stage 1 aligns the vision tokens with the frozen LLM through the adapter's output map only:
    # training the ViT + adapter on captions lost what the vision warm-up taught about where things are
    # (experiments/README.md: centre-cell box probe 2.5 px -> 6 px at 1e-3, -> 4 px at the paper's 2e-4;
    # a linear output map keeps 2.5 px).
    "stage1": dict(stage=1, image_size=72, seq_len=48, batch_size=32, grad_accum=1, steps=200,
                   peak_lr=2e-4, min_lr=1e-5, warmup_steps=10, frozen=("llm", "visual", *ADAPTER_CORE),
                   data=dict(_DATA, format="pretrain", tasks=("caption",), layout="unpacked",
                             max_images=1)),
    # Stage 2: the LLM learns every task at 1e-3 on the vision tokens stage 1 left. ViT and adapter
    # frozen: trained here (even at 0.13-0.6 of the lr) they lost box precision the LLM needs, and
    # frozen the steps are 1.7x faster (0.27 vs 0.46 s).
    "stage2": dict(stage=2, image_size=96, seq_len=128, batch_size=12, grad_accum=1, steps=7500,
                   peak_lr=1e-3, min_lr=1e-5, warmup_steps=30, frozen=("visual", "adapter"),
                   data=dict(_DATA, format="pretrain", layout="packed", max_images=3, tasks=PRETRAIN_TASKS)),
    # Stage 3: ChatML fine-tuning on experiments/sft_mixture.py's mix (the driver sets data.paths):
    # dialogues, single chat turns asking for boxes and answers, and raw records that "auto" turns into
    # stage-2 samples (replay, with stage 2's tasks). Packed like stage 2: a chat turn is 80-110 tokens,
    # a replayed sample ~45, so unpacked 176-token rows were half padding. ViT and adapter frozen as
    # in stage 2 (the paper trains the adapter here; this LLM was trained on the frozen image tokens).
    # 3000 steps at peak 3e-4 (0.3 of stage 2's; the paper's 1/5 at 1500 steps left chat VQA at 65%).
    "stage3": dict(stage=3, image_size=96, seq_len=176, batch_size=8, grad_accum=1, steps=3000,
                   peak_lr=3e-4, min_lr=1e-6, warmup_steps=10, frozen=("visual", "adapter"),
                   data=dict(_DATA, format="auto", layout="packed", max_images=3, tasks=PRETRAIN_TASKS)),
}


def get_config(variant=None):
  variant = variant or "stage1"
  if variant not in VALUES:
    raise ValueError(f"unknown variant {variant!r}; known: {sorted(VALUES)}")
  v = dict(VALUES[variant], mesh=dict(data=1, fsdp=-1, tensor=1), checkpoint_every=100,
           keep_checkpoints=1, log_every=20)
  config = build("small", {"small": v})
  config.model = xs_model(config.model.vision.image_size)
  return ml_collections.ConfigDict(config)
