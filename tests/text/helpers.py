"""Test helpers: a synthetic corpus, a minimal byte-level BPE trainer, the .tiktoken writer."""

import base64
import collections
import random
import re

WORDS = ("the a dog cat sits on bench red blue picture image what where is are in of and box left "
         "right top bottom person holding umbrella street car 狗 猫 图片 红色 左边 一个 在 的 "
         "0 1 2 3 4 5 6 7 8 9 ( ) , . ? ! : def return x = y + 1").split()


def synthetic_corpus(n: int, seed: int = 0) -> list[str]:
  rng = random.Random(seed)
  return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 30))) for _ in range(n)]


def train_byte_bpe(texts, n_merges: int) -> list[bytes]:
  """Minimal byte-level BPE: returns merged tokens in merge order (no byte tokens)."""
  words = collections.Counter(w.encode() for t in texts for w in re.findall(r"\s?\S+|\s+", t))
  seqs = {w: [bytes([b]) for b in w] for w in words}
  merged = []
  for _ in range(n_merges):
    pairs = collections.Counter()
    for w, count in words.items():
      s = seqs[w]
      for a, b in zip(s, s[1:]):
        pairs[a, b] += count
    if not pairs:
      break
    (a, b), _ = pairs.most_common(1)[0]
    merged.append(a + b)
    for w, s in seqs.items():
      i, out = 0, []
      while i < len(s):
        if i + 1 < len(s) and s[i] == a and s[i + 1] == b:
          out.append(a + b)
          i += 2
        else:
          out.append(s[i])
          i += 1
      seqs[w] = out
  return merged


def write_tiktoken(path, tokens: list[bytes]):
  path.write_text("".join(f"{base64.b64encode(t).decode()} {r}\n" for r, t in enumerate(tokens)))
