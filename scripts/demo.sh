#!/usr/bin/env bash
# End-to-end demo on the tiny config, on a CPU: synthetic data -> SentencePiece vocabulary -> training
# on the grain pipeline (Orbax checkpoint) -> HF export and back (checked equal) -> one-shot chat with a
# drawn box -> evaluation on a held-out synthetic set. Everything lands in $DEMO_OUT (default demo_out).
# DEMO_STEPS sets the training steps (default 150). A tiny model trained for a minute on a CPU shows the
# plumbing, not accuracy: its chat answer may hold no well-formed box (then nothing is drawn; say so).
set -euo pipefail
cd "$(dirname "$0")/.."
export JAX_PLATFORMS=cpu
OUT="${DEMO_OUT:-demo_out}"
STEPS="${DEMO_STEPS:-150}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
# Rerunnable: remove only what this script writes.
rm -rf "$OUT"/{data,tokenizer,run,hf,orbax_back,chat,eval}
start=$SECONDS
banner() { printf '\n== [%3ds] %s\n' "$((SECONDS - start))" "$*"; }

banner "1/7 parameter counts: the released 7B configuration (abstract shapes) and the tiny one"
qwenvl-jax params --config qwen_vl_7b
qwenvl-jax params --config tiny

banner "2/7 synthetic data: shapes (captions, grounding, VQA), rendered text (OCR), a held-out set"
qwenvl-jax data synth --kind shapes --n 200 --size 112 --seed 0 --out "$OUT/data/shapes"
qwenvl-jax data synth --kind text --n 100 --size 112 --seed 0 --out "$OUT/data/text"
qwenvl-jax data synth --kind shapes --n 20 --size 112 --seed 1 --out "$OUT/data/heldout"
qwenvl-jax data synth --kind text --n 20 --size 112 --seed 1 --out "$OUT/data/heldout_text"

banner "3/7 tokenizer: SentencePiece trained on the records' texts, sized to the tiny model (512 ids)"
qwenvl-jax tokenize --train-sp "$OUT/data/shapes/shapes.jsonl" --train-sp "$OUT/data/text/text.jsonl" \
  --train-sp "$OUT/data/shapes/shapes_chat.jsonl" --vocab-size 480 --model-vocab 512 \
  --out "$OUT/tokenizer/tokenizer"

banner "4/7 train: stage 2 (packed multi-task rows) on the grain pipeline, $STEPS steps"
# model.llm.seq_length = the training length: past it, inference switches on dynamic NTK / log-n scaling.
qwenvl-jax train --config configs/stage2.py:tiny --workdir "$OUT/run" \
  --set data.source=jsonl \
  --set "data.paths=('$OUT/data/shapes/shapes_chat.jsonl', '$OUT/data/shapes/shapes.jsonl', '$OUT/data/text/text.jsonl')" \
  --set data.tokenizer="$OUT/tokenizer/tokenizer.model" --set data.format=auto \
  --set "data.tasks=('caption', 'ref_grounding', 'vqa', 'ocr')" --set data.max_images=4 \
  --set seq_len=384 --set model.llm.seq_length=384 --set batch_size=8 --set steps="$STEPS" \
  --set checkpoint_every=50 --set optim.warmup_steps=10 --set optim.peak_lr=3e-3 --set log_every=25
ls "$OUT/run/checkpoints"

banner "5/7 convert: Orbax -> HF (safetensors) -> Orbax, then compare every array"
qwenvl-jax convert --to hf --src "$OUT/run" --dst "$OUT/hf" --dtype fp32 --quiet
qwenvl-jax convert --from hf --src "$OUT/hf" --dst "$OUT/orbax_back" --quiet
python - "$OUT/run" "$OUT/orbax_back" <<'EOF'
import sys
import numpy as np
from qwenvl_jax.ckpt.orbax_io import ParamReader, resolve_checkpoint
a, b = (ParamReader(resolve_checkpoint(p).params_dir) for p in sys.argv[1:])
missing = sorted(set(a.meta) ^ set(b.meta))
if missing:
  sys.exit(f"round trip changed the parameter set: {missing}")
for name in a.meta:
  if not np.array_equal(a.read(name), b.read(name)):
    sys.exit(f"round trip changed {name}")
print(f"round trip: all {len(a.meta)} arrays identical")
EOF

banner "6/7 chat: one question with a held-out picture, boxes drawn"
read -r IMAGE PHRASE < <(python - "$OUT/data/heldout/shapes.jsonl" <<'EOF'
import json, pathlib, sys
path = pathlib.Path(sys.argv[1])
rec = json.loads(path.read_text().splitlines()[0])
print(path.parent / rec["image"], rec["objects"][0]["phrase"])
EOF
)
qwenvl-jax chat --ckpt "$OUT/orbax_back" --image "$IMAGE" --greedy --max-new-tokens 48 \
  --prompt "Output the bounding box of $PHRASE." --out "$OUT/chat"
if ls "$OUT"/chat/*.png >/dev/null 2>&1; then
  echo "boxes drawn: $(ls "$OUT"/chat/*.png)"
else
  echo "(the answer held no well-formed box, so nothing was drawn: the tiny model needs far more training)"
fi

banner "7/7 eval: grounding (IoU >= 0.5), OCR and VQA exact match on the held-out sets"
for task in synth_grounding synth_vqa; do
  qwenvl-jax eval --task "$task" --data "$OUT/data/heldout" --ckpt "$OUT/run" --limit 40 \
    --out "$OUT/eval" --no-progress
done
qwenvl-jax eval --task synth_ocr --data "$OUT/data/heldout_text" --ckpt "$OUT/run" --limit 40 \
  --out "$OUT/eval" --no-progress
ls "$OUT"/eval/*.metrics.json

banner "done: outputs in $OUT (preview: data/shapes/preview.png, boxes: chat/*.png, scores: eval/)"
