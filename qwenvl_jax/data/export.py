"""Writing a synthetic set to disk in every format at once, streaming (memory stays flat for any N).

Layout under `out/`:
  {kind}.jsonl           raw records, image paths relative to out/
  images/{id}.png        the images
  {kind}_chat.jsonl      the same samples as Qwen-VL fine-tuning conversations
  {kind}.array_record    raw records with the PNG bytes inside
  preview.png            the first few samples with their boxes and quads drawn
"""

from __future__ import annotations

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
                 preview: int = 4, progress: bool = False, **options) -> ExportResult:
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
  records = synth.generate(kind, n, seed=seed, size=size, workers=workers, **options)
  if progress:
    from tqdm import tqdm
    records = tqdm(records, total=n, desc=f"synth {kind}", unit="img", disable=None)  # no bar when not a terminal
  writer = ArrayRecordWriter(str(paths["array_record"]), "group_size:1")
  shown, count, t0 = [], 0, time.perf_counter()
  try:
    with paths["jsonl"].open("w", encoding="utf-8") as raw_f, paths["chat"].open("w", encoding="utf-8") as chat_f:
      for rec in records:
        rel = f"images/{rec['id']}.png"
        (out / rel).write_bytes(rec["image"])
        raw_f.write(json.dumps({**rec, "image": rel}, ensure_ascii=False) + "\n")
        chat_f.write(json.dumps(chat_format.to_conversation(rec, rel), ensure_ascii=False) + "\n")
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
