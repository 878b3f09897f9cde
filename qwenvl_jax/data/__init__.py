"""Data: sources, preprocessing, the paper's task formats, cleaning rules and synthetic sets.

  preprocess   reference image preprocessing; `load_image` raises `CorruptImageError` naming the file
  synth/       seeded local generators (shapes, text, docs); the raw record schema lives there
  tasks        the 7 multi-task pre-training formats: raw record -> (prompt, target) markup
  chat_format  raw record -> Qwen-VL fine-tuning conversation
  cleaning     Appendix A rules that need no model, with a per-rule `CleaningReport`
  sources      JSONL (raw / conversations) and ArrayRecord reading and writing, counted image skips
  tfds_source  a TFDS builder for the synthetic sets and a reader for prepared TFDS datasets
  skips        `SkipCounter`: every dropped sample is counted by reason
  pipeline     the grain pipeline: shard, shuffle, tokenize, preprocess, pack, batch; resumable
  draw, export preview images; writing a synthetic set in every format
"""
