"""The vision warm-up: a supervised warm-up of the ViT + adapter, standing in for the pre-trained CLIP ViT.

  python -m experiments.vision_warmup --init WORK/stage0 --data WORK/data --out WORK/stageV [--steps 800]

The paper never trains its ViT from scratch: it starts from OpenCLIP ViT-bigG, which already sees
where things are and reads text. Our xs ViT starts random, and the LM loss alone teaches it "where"
and "what word" slowly (measured: after 5000 stage-2 steps, grounding 22% and OCR 5%). This stage
gives it a head start on the training split's own annotations, through the adapter, i.e. on what
the LLM will see (16 queries on a 4x4 grid, query i at row i // 4, column i % 4; `posemb.sincos_2d`):
  shapes images: per query, does an object's centre fall in its cell; that object's colour, shape
                 and box (x1, y1, x2, y2 as fractions of the side, and the hundreds and tens digits
                 of the [0, 1000) coordinates the LLM will write, as 10-way classes);
  word images:   which of the word list's words is written, and its letters one by one (all 16
                 queries flattened).
The heads are thrown away; the ViT and adapter weights are written into a copy of the `--init`
checkpoint (the stage-0 LLM), which stage 1 then starts from. Held-out accuracies go to RESULT.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np

from qwenvl_jax.data.synth import shapes as shapes_synth
from qwenvl_jax.evals.metrics.grounding import box_iou
from qwenvl_jax.text.boxes import normalize_box

GRID = 4  # the adapter's query grid (16 queries)
MAX_LETTERS = 10
LETTERS = "abcdefghijklmnopqrstuvwxyz"
COLORS, SHAPES = tuple(shapes_synth.COLORS), shapes_synth.SHAPES
N_DIGITS = 8  # hundreds then tens digit of x1, y1, x2, y2
# The per-cell head's outputs, in order: name -> width (the digits are N_DIGITS 10-way classes).
CELL_FIELDS = {"present": 1, "color": len(COLORS), "shape": len(SHAPES), "box": 4, "digits": N_DIGITS * 10}


def cell_of(box, size: int) -> int:
  """Index of the query cell (row-major on the GRID x GRID grid) holding the box's centre."""
  x1, y1, x2, y2 = box
  col = min(GRID - 1, int((x1 + x2) / 2 / size * GRID))
  row = min(GRID - 1, int((y1 + y2) / 2 / size * GRID))
  return row * GRID + col


def cell_targets(objects: list[dict], size: int) -> dict[str, np.ndarray]:
  """Per query cell: `present` (an object's centre is in it), `color`, `shape`, `box` (fractions),
  `digits` (hundreds then tens digit of each normalised coordinate, [8]); cells without an object keep
  zeros and are masked out of all but the `present` loss."""
  n = GRID * GRID
  out = {"present": np.zeros(n, np.float32), "color": np.zeros(n, np.int32),
         "shape": np.zeros(n, np.int32), "box": np.zeros((n, 4), np.float32),
         "digits": np.zeros((n, N_DIGITS), np.int32)}
  for o in objects:
    i = cell_of(o["box"], size)
    if out["present"][i]:  # two centres in one cell: keep the first
      continue
    out["present"][i] = 1.0
    out["color"][i] = COLORS.index(o["color"])
    out["shape"][i] = SHAPES.index(o["category"])
    out["box"][i] = np.asarray(o["box"], np.float32) / size
    coords = normalize_box(o["box"], size, size)
    out["digits"][i] = [c // 100 for c in coords] + [c // 10 % 10 for c in coords]
  return out


def letter_targets(word: str) -> np.ndarray:
  """Letter classes (1..26), 0 after the end of the word."""
  out = np.zeros(MAX_LETTERS, np.int32)
  for i, ch in enumerate(word.lower()[:MAX_LETTERS]):
    out[i] = LETTERS.index(ch) + 1 if ch in LETTERS else 0
  return out


def load_split(folder: pathlib.Path, size: int, limit: int, words: list[str]):
  """(shape images, cell targets, word images, word ids, letter ids) from FOLDER/{shapes,words}.jsonl."""
  from qwenvl_jax.data.preprocess import load_and_preprocess
  from qwenvl_jax.data.sources import read_raw

  s_img, s_tgt, w_img, w_id, w_let = [], [], [], [], []
  for rec in read_raw(folder / "shapes.jsonl"):
    if len(s_img) >= limit:
      break
    s_img.append(load_and_preprocess(rec["image"], size, name=rec["image"]))
    s_tgt.append(cell_targets(rec["objects"], rec["width"]))
  for rec in read_raw(folder / "words.jsonl"):
    if len(w_img) >= limit:
      break
    text = rec["words"][0]["text"]
    if text not in words:
      raise ValueError(f"{folder / 'words.jsonl'}: record {rec['id']} has word {text!r} outside the "
                       f"{len(words)}-word list")
    w_img.append(load_and_preprocess(rec["image"], size, name=rec["image"]))
    w_id.append(words.index(text))
    w_let.append(letter_targets(text))
  targets = {k: np.stack([t[k] for t in s_tgt]) for k in s_tgt[0]}
  return (np.stack(s_img), targets, np.stack(w_img), np.asarray(w_id, np.int32), np.stack(w_let))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--init", required=True, help="checkpoint whose LLM is kept (the stage-0 workdir)")
  p.add_argument("--data", required=True, help="experiments.prepare_data output (train/, heldout/, manifest)")
  p.add_argument("--out", required=True, help="where the warmed-up checkpoint is written")
  p.add_argument("--steps", type=int, default=800)
  p.add_argument("--batch-size", type=int, default=16, help="images of each kind per step")
  p.add_argument("--lr", type=float, default=1e-3)
  p.add_argument("--n-train", type=int, default=6000, help="images of each kind loaded for training")
  p.add_argument("--size", type=int, default=96)
  p.add_argument("--result", default=None, help="JSON file for the held-out accuracy curve")
  args = p.parse_args(argv)

  import jax
  import jax.numpy as jnp
  import optax
  from flax import nnx

  from experiments import easy_text
  from qwenvl_jax.ckpt.orbax_io import load_checkpoint, save_checkpoint

  data = pathlib.Path(args.data)
  manifest = json.loads((data / "manifest.json").read_text())
  words = easy_text.word_list(manifest["settings"]["vocab_words"])
  t0 = time.perf_counter()
  train = load_split(data / "train", args.size, args.n_train, words)
  held = load_split(data / "heldout", args.size, 10 ** 9, words)
  print(f"loaded {len(train[0])}+{len(train[2])} training, {len(held[0])}+{len(held[2])} held-out "
        f"images in {time.perf_counter() - t0:.0f}s", flush=True)

  model, cfg, tokenizer = load_checkpoint(args.init)
  hidden = cfg.llm.hidden

  class Warmup(nnx.Module):
    def __init__(self, model, rngs):
      self.visual, self.adapter = model.visual, model.adapter
      self.cell = nnx.Linear(hidden, sum(CELL_FIELDS.values()), rngs=rngs)
      flat = cfg.adapter.n_queries * hidden
      self.word = nnx.Linear(flat, len(words), rngs=rngs)
      self.letters = nnx.Linear(flat, MAX_LETTERS * (len(LETTERS) + 1), rngs=rngs)

    def __call__(self, shape_images, word_images):
      n = shape_images.shape[0]
      feats = self.adapter(self.visual(jnp.concatenate([shape_images, word_images])))
      cell = self.cell(feats[:n])
      flat = feats[n:].reshape(word_images.shape[0], -1)
      return cell, self.word(flat), self.letters(flat).reshape(-1, MAX_LETTERS, len(LETTERS) + 1)

  def split_cell(cell):
    """-> present logit, colour logits, shape logits, box in [0, 1], digit logits [..., N_DIGITS, 10]."""
    ends = np.cumsum(list(CELL_FIELDS.values()))
    present, color, shape, box, digits = jnp.split(cell, ends[:-1], axis=-1)
    return (present[..., 0], color, shape, jax.nn.sigmoid(box),
            digits.reshape(*cell.shape[:-1], N_DIGITS, 10))

  def losses(outputs, tgt, word_id, letters):
    cell, word_logits, letter_logits = outputs
    present, color, shape, box, digits = split_cell(cell)
    mask = tgt["present"]
    n_pos = jnp.maximum(mask.sum(), 1.0)
    ce = optax.softmax_cross_entropy_with_integer_labels
    return {
        "present": optax.sigmoid_binary_cross_entropy(present, mask).mean(),
        "color": (ce(color, tgt["color"]) * mask).sum() / n_pos,
        "shape": (ce(shape, tgt["shape"]) * mask).sum() / n_pos,
        "box": 5.0 * (jnp.abs(box - tgt["box"]).sum(-1) * mask).sum() / n_pos,
        "digits": (ce(digits, tgt["digits"]).mean(-1) * mask).sum() / n_pos,
        "word": ce(word_logits, word_id).mean(),
        "letters": ce(letter_logits, letters).mean(),
    }

  warm = Warmup(model, nnx.Rngs(1))
  schedule = optax.warmup_cosine_decay_schedule(0.0, args.lr, max(1, args.steps // 20), args.steps,
                                                args.lr / 100)
  opt = nnx.Optimizer(warm, optax.chain(optax.clip_by_global_norm(1.0),
                                        optax.adamw(schedule, b1=0.9, b2=0.98, eps=1e-6,
                                                    weight_decay=0.05)), wrt=nnx.Param)

  @nnx.jit
  def train_step(warm, opt, s_img, tgt, w_img, w_id, w_let):
    def loss_fn(warm):
      parts = losses(warm(s_img, w_img), tgt, w_id, w_let)
      return sum(parts.values()), parts
    (loss, parts), grads = nnx.value_and_grad(loss_fn, has_aux=True)(warm)
    opt.update(warm, grads)
    return loss, parts

  @nnx.jit
  def predict(warm, s_img, w_img):
    cell, word_logits, _ = warm(s_img, w_img)
    present, color, shape, box, _ = split_cell(cell)
    return present > 0, color.argmax(-1), shape.argmax(-1), box, word_logits.argmax(-1)

  def heldout() -> dict:
    s_img, tgt, w_img, w_id, _ = held
    n = min(len(s_img), len(w_img))
    outs = [jax.device_get(predict(warm, s_img[i:i + 50], w_img[i:i + 50])) for i in range(0, n, 50)]
    present, color, shape, box, word = (np.concatenate(x) for x in zip(*outs))
    pos = tgt["present"][:n] > 0
    iou = np.asarray([box_iou(a, b) for a, b in zip(box[pos], tgt["box"][:n][pos])])
    return {"cell_present_acc": float((present == pos).mean()),
            "color_acc": float((color[pos] == tgt["color"][:n][pos]).mean()),
            "shape_acc": float((shape[pos] == tgt["shape"][:n][pos]).mean()),
            "box_iou>=0.5": float((iou >= 0.5).mean()), "word_acc": float((word == w_id[:n]).mean())}

  s_img, tgt, w_img, w_id, w_let = train
  rng, curve = np.random.default_rng(0), []
  from tqdm import trange
  t0 = time.perf_counter()
  for step in trange(1, args.steps + 1, desc="vision warm-up", disable=None):
    si = rng.integers(0, len(s_img), args.batch_size)
    wi = rng.integers(0, len(w_img), args.batch_size)
    loss, parts = train_step(warm, opt, s_img[si], {k: v[si] for k, v in tgt.items()}, w_img[wi],
                             w_id[wi], w_let[wi])
    if step % 100 == 0 or step == args.steps:
      point = {"step": step, "loss": round(float(loss), 4),
               **{k: round(float(v), 4) for k, v in parts.items()},
               "seconds": round(time.perf_counter() - t0, 1), "heldout": heldout()}
      curve.append(point)
      print(json.dumps(point), flush=True)

  save_checkpoint(args.out, model, cfg, tokenizer_file=tokenizer, overwrite=True)
  result = {**vars(args), "curve": curve, "seconds": round(time.perf_counter() - t0, 1)}
  if args.result:
    pathlib.Path(args.result).write_text(json.dumps(result, indent=2) + "\n")
  print(json.dumps({"vision_warmup": curve[-1]["heldout"], "seconds": result["seconds"]}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
