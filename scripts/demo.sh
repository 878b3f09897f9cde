#!/usr/bin/env bash
# The first-run demo (docs/demo.md), sized for ~5 minutes on a quiet 2-core CPU: Qwen-VL's stage 3 in
# miniature. A small vision-language model pre-trained on image-text pairs (demo/base, 5 MB, made by
# `python -m experiments.demo_base`: it reads pictures but has never seen a chat) is scored on a
# held-out set asked in the chat wording, fine-tuned on ChatML conversations about synthetic scenes,
# scored again, and asked for a box on a held-out picture. Only `qwenvl-jax` subcommands do the work; demo/report.py prints the table at the end.
# Everything lands in $DEMO_OUT (default demo_out). DEMO_STEPS overrides the training steps.
set -euo pipefail
cd "$(dirname "$0")/.."
export JAX_PLATFORMS=cpu
OUT="${DEMO_OUT:-demo_out}"
STEPS="${DEMO_STEPS:-}"
EVAL_LIMIT="${DEMO_EVAL_LIMIT:-60}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
# Rerunnable: remove only what this script writes.
rm -rf "$OUT"/{base,data,evaldata,eval_before,eval_after,run,chat,jax_cache,loss_curve.png,summary.json}
# Processes reuse each other's compiled programs (the two evaluations share every shape).
export JAX_COMPILATION_CACHE_DIR="$OUT/jax_cache"
start=$SECONDS
banner() { printf '\n== [%3ds] %s\n' "$((SECONDS - start))" "$*"; }
SHAPES=(--kind shapes --size 96 --max-objects 2 --radius 0.12 0.2)

banner "1/7 the pre-trained base (demo/base: reads pictures, never saw a chat): HF -> Orbax"
python -c "import json; b = json.load(open('demo/base/base.json')); print('made by:', b['made_by'])"
qwenvl-jax convert --from hf --src demo/base --dst "$OUT/base" --quiet

banner "2/7 data: synthetic scenes (1-2 shapes, 96 px) with ChatML conversations; a held-out set"
qwenvl-jax data synth "${SHAPES[@]}" --n 2000 --seed 0 --out "$OUT/data/train" | tail -n 3
qwenvl-jax data synth "${SHAPES[@]}" --n 60 --seed 1 --out "$OUT/data/heldout" | tail -n 1
python - "$OUT/data/train/shapes_chat.jsonl" <<'EOF'
import json, sys
conv = json.loads(open(sys.argv[1]).readline())["conversations"]
print("one training conversation:")
for m in conv[:6]:
  print(f"  {m['from']:>9}: {m['value']}".replace("\n", " | "))
EOF
for task in synth_grounding_chat synth_vqa_chat; do  # `eval --task all` reads ROOT/<task>/
  mkdir -p "$OUT/evaldata" && ln -s "$OUT/data/heldout" "$OUT/evaldata/$task"
done

banner "3/7 tokenizer: a grounding answer in the base's SentencePiece vocabulary"
qwenvl-jax tokenize --tokenizer demo/base/sp.model \
  --text "<ref>the red circle</ref><box>(120,340),(400,610)</box>"

banner "4/7 before training: the base on the held-out set"
qwenvl-jax eval --task all --data "$OUT/evaldata" --ckpt "$OUT/base" --limit "$EVAL_LIMIT" \
  --batch-size 16 --out "$OUT/eval_before" --no-progress | sed '$d'

banner "5/7 train: ChatML fine-tuning, ViT + adapter frozen (demo/config.py)"
qwenvl-jax train --config demo/config.py --init "$OUT/base" --workdir "$OUT/run" \
  --set "data.paths=('$OUT/data/train/shapes_chat.jsonl',)" \
  ${STEPS:+--set steps=$STEPS --set checkpoint_every=$STEPS --set optim.warmup_steps=$(( STEPS < 40 ? STEPS / 2 : 20 ))}

banner "6/7 after training: the same held-out set"
qwenvl-jax eval --task all --data "$OUT/evaldata" --ckpt "$OUT/run" --limit "$EVAL_LIMIT" \
  --batch-size 16 --out "$OUT/eval_after" --no-progress | sed '$d'

banner "7/7 chat: a held-out picture, the box drawn"
read -r IMAGE W H X1 Y1 X2 Y2 PHRASE < <(python - "$OUT/data/heldout/shapes.jsonl" <<'EOF'
import json, pathlib, sys
path = pathlib.Path(sys.argv[1])
rec = json.loads(path.read_text().splitlines()[0])
obj = rec["objects"][0]
print(path.parent / rec["image"], rec["width"], rec["height"], *obj["box"], obj["phrase"])
EOF
)
mkdir -p "$OUT/chat"
qwenvl-jax chat --ckpt "$OUT/run" --image "$IMAGE" --greedy --max-new-tokens 48 \
  --prompt "Output the bounding box of $PHRASE." --out "$OUT/chat" | tee "$OUT/chat/answer.txt"

banner "summary (held-out scores before and after training)"
python demo/report.py "$OUT" --phrase "$PHRASE" --box "$X1" "$Y1" "$X2" "$Y2" --size "$W" "$H" \
  --seconds "$((SECONDS - start))"
banner "done: outputs in $OUT"
