"""Synthetic training and held-out sets plus a SentencePiece vocabulary for the small-scale runs.

  python -m experiments.prepare_data --out runs/exp11/data [--n-shapes 6000 --n-words 4000 ...]

Writes under OUT:
  train/shapes.jsonl     shapes scenes (qwenvl_jax/data/synth/shapes.py, at most `max_objects` shapes)
  train/words.jsonl      one-word text images (experiments/easy_text.py)
  train/chat_*.jsonl     short ChatML conversations about both (stage 3), 1-2 turns each
  train/text.jsonl       the training records' task texts without images (stage 0: the LLM)
  heldout/shapes.jsonl   a different seed: synth_grounding / synth_caption / synth_vqa
  heldout/words.jsonl    a different seed: synth_ocr (exact match on one word = word accuracy)
  corpus.txt, tokenizer/sp.model   the vocabulary, trained on the training text only
  preview.png            a few training records with their boxes drawn
  manifest.json          the settings, counts and timings
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import time

import numpy as np

from experiments import easy_text
from qwenvl_jax.data import chat_format, draw, sources, tasks
from qwenvl_jax.data.synth import shapes

TRAIN_SEED, HELDOUT_SEED = 11, 911  # disjoint (seed, index) streams: held-out images are never trained on


@dataclasses.dataclass(frozen=True)
class DataSettings:
  n_shapes: int = 12000  # ~11 passes over each image in stage 2 (7500 steps of ~30 of the 20000 images)
  n_words: int = 8000
  n_heldout_shapes: int = 150
  n_heldout_words: int = 200
  size: int = 96  # generated at the highest resolution the stages use; lower ones are resized
  max_objects: int = 3
  shape_radius: tuple[float, float] = (0.12, 0.2)  # fractions of the side: 23-38 px shapes at 96 px
  vocab_words: int = 100
  font_px: tuple[int, int] = (20, 20)
  word_jitter: int = 2  # the word is centred up to this many px off (-1: anywhere)
  n_fonts: int = 2
  sp_vocab: int = 800
  chat_turns: int = 2


def shapes_records(n: int, seed: int, s: DataSettings):
  for i in range(n):
    yield shapes.generate(i, seed=seed, size=s.size, max_objects=s.max_objects, n_questions=3,
                          radius=tuple(s.shape_radius))


def word_records(n: int, seed: int, s: DataSettings):
  for i in range(n):
    yield easy_text.generate(i, seed=seed, size=s.size, n_words=s.vocab_words, font_px=tuple(s.font_px),
                             jitter=None if s.word_jitter < 0 else s.word_jitter, n_fonts=s.n_fonts)


def short_conversations(record: dict, image_rel: str, turns: int, rng: np.random.Generator) -> dict:
  """`chat_format.to_conversation` cut to `turns` random turns, so a dialogue fits a short row."""
  conv = chat_format.to_conversation(record, image_rel)["conversations"]
  pairs = [(conv[i]["value"], conv[i + 1]["value"]) for i in range(0, len(conv), 2)]
  intro = f"Picture 1: <img>{image_rel}</img>\n"
  pairs[0] = (pairs[0][0][len(intro):], pairs[0][1])
  keep = sorted(rng.choice(len(pairs), size=min(turns, len(pairs)), replace=False))
  out = []
  for j, k in enumerate(keep):
    q, a = pairs[int(k)]
    out += [{"from": "user", "value": intro + q if j == 0 else q}, {"from": "assistant", "value": a}]
  return {"id": record["id"], "conversations": out}


def text_only(record: dict) -> list[str]:
  """The record's task texts without the image (prompt after `</img>`, then the target, markup kept):
  stage 0 pre-trains the LLM on them, standing in for the paper's pre-trained Qwen-7B."""
  out = []
  for _, prompt, target in tasks.examples(record):
    prompt = prompt.split("</img>", 1)[-1]
    out.append(f"{prompt}{target}")
  return out


def corpus_lines(record: dict):
  """The text the model will see for a record: task prompts and targets with the markup removed."""
  for _, prompt, target in tasks.examples(record):
    for part in (prompt, target):
      for tag in ("<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>"):
        part = part.replace(tag, " ")
      if "<img>" in part:
        part = part.split("</img>", 1)[1]
      if part.strip():
        yield part.strip()
  conv = chat_format.to_conversation(record, "x")["conversations"]
  for m in conv:
    yield m["value"].split("\n", 1)[-1]


def write_set(records, path: pathlib.Path, chat_path=None, turns=2, seed=0, corpus=None,
              progress=None, texts=None) -> list[dict]:
  """Writes raw records (images as files next to the JSONL); returns the first few for previews.
  `texts` (a list) collects the image-free task texts of every record."""
  rng = np.random.default_rng(seed)
  kept, chats = [], []

  def stream():
    for rec in records:
      if len(kept) < 4:
        kept.append(dict(rec))
      if corpus is not None:
        corpus.extend(corpus_lines(rec))
      if texts is not None:
        texts.extend({"id": f"{rec['id']}/t{i}", "text": t} for i, t in enumerate(text_only(rec)))
      if chat_path is not None:
        chats.append(short_conversations(rec, f"images/{rec['id']}.png", turns, rng))
      if progress:
        progress.update(1)
      yield rec

  sources.write_raw(stream(), path)
  if chat_path is not None:
    sources.write_conversations(chats, chat_path)
  return kept


def train_tokenizer(corpus: list[str], out_dir: pathlib.Path, vocab: int):
  from qwenvl_jax.text.tokenizer import SentencePieceTokenizer
  (out_dir / "corpus.txt").write_text("\n".join(corpus) + "\n", encoding="utf-8")
  return SentencePieceTokenizer.train(corpus, vocab, out_dir / "tokenizer" / "sp")


def prepare(out, settings: DataSettings = DataSettings(), log=print) -> dict:
  from tqdm import tqdm

  out = pathlib.Path(out)
  t0 = time.perf_counter()
  s = settings
  total = s.n_shapes + s.n_words + s.n_heldout_shapes + s.n_heldout_words
  corpus: list[str] = []
  texts: list[dict] = []
  previews = []
  with tqdm(total=total, desc="synthetic data", unit="img", disable=None) as bar:
    previews += write_set(shapes_records(s.n_shapes, TRAIN_SEED, s), out / "train" / "shapes.jsonl",
                          out / "train" / "chat_shapes.jsonl", s.chat_turns, 0, corpus, bar, texts)
    previews += write_set(word_records(s.n_words, TRAIN_SEED, s), out / "train" / "words.jsonl",
                          out / "train" / "chat_words.jsonl", s.chat_turns, 1, corpus, bar, texts)
  with (out / "train" / "text.jsonl").open("w", encoding="utf-8") as f:
    f.writelines(json.dumps(t) + "\n" for t in texts)
    write_set(shapes_records(s.n_heldout_shapes, HELDOUT_SEED, s), out / "heldout" / "shapes.jsonl",
              progress=bar)
    write_set(word_records(s.n_heldout_words, HELDOUT_SEED, s), out / "heldout" / "words.jsonl",
              progress=bar)
  t_data = time.perf_counter() - t0
  tok = train_tokenizer(corpus, out, s.sp_vocab)
  draw.grid([draw.draw_record(r) for r in previews[:4] + previews[4:8]], cols=4).save(out / "preview.png")
  manifest = {"settings": dataclasses.asdict(s), "seconds_data": round(t_data, 1),
              "seconds_total": round(time.perf_counter() - t0, 1), "corpus_lines": len(corpus),
              "tokenizer": str(out / "tokenizer" / "sp.model"), "vocab_size": tok.vocab_size,
              "padded_vocab_size": tok.padded_vocab_size(), **tok.model_config_ids()}
  (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
  log(f"data + tokenizer in {manifest['seconds_total']}s: vocab {tok.vocab_size} -> {out}")
  return manifest


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", default="runs/exp11/data")
  for f in dataclasses.fields(DataSettings):
    if f.type in ("int", int):
      p.add_argument(f"--{f.name.replace('_', '-')}", type=int, default=f.default)
  p.add_argument("--font-px", type=int, nargs=2, default=DataSettings.font_px)
  p.add_argument("--shape-radius", type=float, nargs=2, default=DataSettings.shape_radius)
  args = p.parse_args(argv)
  values = {f.name: getattr(args, f.name) for f in dataclasses.fields(DataSettings)}
  prepare(args.out, DataSettings(**{**values, "font_px": tuple(values["font_px"]),
                                    "shape_radius": tuple(values["shape_radius"])}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
