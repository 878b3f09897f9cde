"""Writing a synthetic set to disk in every format at once, streaming (memory stays flat for any N).

Layout under `out/`:
  {kind}.jsonl           raw records, image paths relative to out/
  images/{id}.png        the images
  {kind}_chat.jsonl      the same samples as Qwen-VL fine-tuning conversations
  {kind}_single.jsonl    with `single_turns`: one-turn chats per grounding object and question
                         (`chat_format.single_turns`), worded as the chat evaluations ask
  {kind}.array_record    raw records with the PNG bytes inside
  preview.png            the first few samples with their boxes and quads drawn
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
import time

from qwenvl_jax.data import chat_format, draw, sources, synth


@dataclasses.dataclass
class ExportResult:
  n: int
  seconds: float
  paths: dict

  @property
  def images_per_s(self) -> float:
    return self.n / self.seconds if self.seconds else float("inf")


def export_synth(kind: str, n: int, out, seed: int = 0, size: int | None = None, workers: int = 1,
                 preview: int = 4, progress: bool = False, single_turns: bool = False,
                 **options) -> ExportResult:
  from array_record.python.array_record_module import ArrayRecordWriter

  out = pathlib.Path(out)
  synth.check_size(size)
  for p in [out, *out.parents]:  # a file where a folder must go: say which, before writing anything
    if p.exists():
      if not p.is_dir():
        raise NotADirectoryError(f"--out {out}: {p} is a file, not a folder")
      break
  (out / "images").mkdir(parents=True, exist_ok=True)
  paths = {"jsonl": out / f"{kind}.jsonl", "chat": out / f"{kind}_chat.jsonl",
           "array_record": out / f"{kind}.array_record", "preview": out / "preview.png"}
  if single_turns:
    paths["single"] = out / f"{kind}_single.jsonl"
  records = synth.generate(kind, n, seed=seed, size=size, workers=workers, **options)
  if progress:
    from tqdm import tqdm
    records = tqdm(records, total=n, desc=f"synth {kind}", unit="img", disable=None)  # no bar when not a terminal
  writer = ArrayRecordWriter(str(paths["array_record"]), "group_size:1")
  shown, count, t0 = [], 0, time.perf_counter()
  try:
    with contextlib.ExitStack() as files:
      raw_f, chat_f = (files.enter_context(paths[k].open("w", encoding="utf-8")) for k in ("jsonl", "chat"))
      single_f = files.enter_context(paths["single"].open("w", encoding="utf-8")) if single_turns else None
      for rec in records:
        rel = f"images/{rec['id']}.png"
        (out / rel).write_bytes(rec["image"])
        raw_f.write(json.dumps({**rec, "image": rel}, ensure_ascii=False) + "\n")
        chat_f.write(json.dumps(chat_format.to_conversation(rec, rel), ensure_ascii=False) + "\n")
        if single_f:
          single_f.writelines(json.dumps(c, ensure_ascii=False) + "\n" for c in chat_format.single_turns(rec, rel))
        writer.write(sources.encode_record(rec))
        if len(shown) < preview:
          shown.append(draw.draw_record(rec))
        count += 1
  finally:
    writer.close()
  seconds = time.perf_counter() - t0
  if shown:
    draw.grid(shown).save(paths["preview"])
  else:
    paths.pop("preview")
  return ExportResult(count, seconds, {k: str(v) for k, v in paths.items()})
