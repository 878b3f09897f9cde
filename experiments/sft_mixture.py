"""The stage-3 (supervised fine-tuning) data mixture of the small-scale runs.

  python -m experiments.sft_mixture --data W/data [--dialogues 12000 --grounding 20000 --vqa 32000 --replay 40000]

Written from the training split only (DATA/train; no held-out image), into
DATA/train/sft-<counts>/:
  chat.jsonl    ChatML conversations, shuffled:
                - `dialogues` of the 1-2 turn dialogues prepare_data wrote (chat_shapes / chat_words:
                  captions, questions, boxes, reading, in varying order);
                - `grounding` single turns "Output the bounding box of {phrase}." -> "<ref>..</ref><box>..</box>",
                  drawn from every object of every training scene (the dialogues ask about the first two
                  only, and a grounding turn there is one of ~6 kinds);
                - `vqa` single turns: a scene question -> its answer.
                The single turns are worded exactly as a user (and the synth_*_chat evaluations) ask a
                fresh chat: the picture introduced in the same turn.
  replay.jsonl  `replay` raw training records (shapes and words in their proportion): with
                `data.format="auto"` and stage 2's task list they are stage-2 pre-training samples, so the
                pre-training prompts keep being trained while the chat wording is learnt.
The pipeline mixes files by record count (one shuffled source), so the counts are the mixture weights.
Sampling is without replacement while a pool lasts, seeded: the same counts give the same files.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import sys

import numpy as np

from qwenvl_jax.data import chat_format, sources

CHAT_DIALOGUES = ("chat_shapes.jsonl", "chat_words.jsonl")
RAW_RECORDS = ("shapes.jsonl", "words.jsonl")


@dataclasses.dataclass(frozen=True)
class SftMix:
  dialogues: int = 12000
  grounding: int = 20000
  vqa: int = 32000  # 16000: chat VQA 65%; doubled with more steps and replay: 84% (experiments/README.md)
  replay: int = 40000  # keeps the pre-training prompts' scores next to the larger chat share
  seed: int = 0

  def name(self) -> str:
    return (f"sft-d{self.dialogues}-g{self.grounding}-v{self.vqa}-r{self.replay}"
            + (f"-s{self.seed}" if self.seed else ""))

  @classmethod
  def parse(cls, text: str) -> "SftMix":
    """"grounding=12000,replay=0" -> the default mix with those counts changed."""
    values = {}
    for part in filter(None, text.split(",")):
      key, _, value = part.partition("=")
      if key not in {f.name for f in dataclasses.fields(cls)} or not value.isdigit():
        raise ValueError(f"--sft-mix: {part!r} is not NAME=COUNT with NAME in "
                         f"{[f.name for f in dataclasses.fields(cls)]}")
      values[key] = int(value)
    return cls(**values)


def _read(path: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _draw(pool: list, n: int, rng: np.random.Generator) -> list:
  """n items: whole permutations of the pool, then a partial one (no repeats while the pool lasts)."""
  if n <= 0 or not pool:
    return []
  order = np.concatenate([rng.permutation(len(pool)) for _ in range(-(-n // len(pool)))])[:n]
  return [pool[int(i)] for i in order]


def _with_image(text: str, train: pathlib.Path, out: pathlib.Path) -> str:
  """A dialogue's `<img>rel</img>` (relative to train/) rewritten relative to `out`."""
  start, end = text.index("<img>") + 5, text.index("</img>")
  rel = os.path.relpath(train / text[start:end], out)
  return text[:start] + rel + text[end:]


def build(data: pathlib.Path, mix: SftMix = SftMix()) -> tuple[pathlib.Path, pathlib.Path]:
  """Writes (if absent) and returns (chat.jsonl, replay.jsonl) of `mix` under DATA/train/<mix name>/."""
  train = pathlib.Path(data) / "train"
  out = train / mix.name()
  chat_path, replay_path = out / "chat.jsonl", out / "replay.jsonl"
  if chat_path.is_file() and replay_path.is_file():
    return chat_path, replay_path
  rng = np.random.default_rng(mix.seed)
  raw = [rec for name in RAW_RECORDS for rec in _read(train / name)]
  image = lambda rec: os.path.relpath(train / rec["image"], out)

  dialogues = []
  for conv in _draw([c for name in CHAT_DIALOGUES for c in _read(train / name)], mix.dialogues, rng):
    first = dict(conv["conversations"][0], value=_with_image(conv["conversations"][0]["value"], train, out))
    dialogues.append({"id": conv["id"], "conversations": [first, *conv["conversations"][1:]]})
  grounding = _draw([t for rec in raw for t in chat_format.grounding_turns(rec, image(rec))],
                    mix.grounding, rng)
  questions = [t for rec in raw if rec.get("objects") for t in chat_format.question_turns(rec, image(rec))]
  vqa = _draw(questions, mix.vqa, rng)
  chats = dialogues + grounding + vqa
  chats = [chats[int(i)] for i in rng.permutation(len(chats))]
  replay = [dict(rec, image=image(rec)) for rec in _draw(raw, mix.replay, rng)]
  if not chats:
    raise ValueError(f"{mix.name()}: the mixture has no conversation (stage 3 is chat fine-tuning)")

  # Written under temporary names and renamed when complete: a finished mixture is never half-written.
  out.mkdir(parents=True, exist_ok=True)
  tmp_chat, tmp_replay = out / "chat.jsonl.tmp", out / "replay.jsonl.tmp"
  sources.write_conversations(chats, tmp_chat)
  tmp_replay.write_text("".join(json.dumps(r) + "\n" for r in replay), encoding="utf-8")
  tmp_replay.replace(replay_path)
  tmp_chat.replace(chat_path)
  return chat_path, replay_path


def paths(data: pathlib.Path, mix: SftMix = SftMix()) -> tuple[str, ...]:
  """The stage-3 `data.paths`: the chat file, and the replay file when the mix replays."""
  chat, replay = build(data, mix)
  return (str(chat),) + ((str(replay),) if mix.replay else ())


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--data", required=True, help="the prepare_data output (DATA/train/*.jsonl)")
  for f in dataclasses.fields(SftMix):
    p.add_argument(f"--{f.name}", type=int, default=f.default)
  args = p.parse_args(argv)
  mix = SftMix(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SftMix)})
  for path in paths(pathlib.Path(args.data), mix):
    print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
