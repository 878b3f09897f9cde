"""CIDEr-D as computed by coco-caption / pycocoevalcap (Nocaps, Flickr30K).

Inputs are already tokenised (space-separated; see `ptb_tokenize`). For n = 1..4: tf-idf vectors with
document frequencies counted over the *evaluated corpus's* references and log(#images) as the
reference-length term, so a score on a subset is not comparable with one on the full set. Per
reference: clipped cosine (min(hyp, ref) * ref), Gaussian length penalty with sigma 6, averaged over n
and over references, x10; the corpus score is the mean over images.

Reproduced quirk: the "length" in the penalty counts bigrams (the coco-caption code accumulates the
term frequencies of n-gram order index 1), i.e. words - 1 for a non-empty caption.
"""

from __future__ import annotations

import collections
import math
from typing import Hashable, Mapping, Sequence

from qwenvl_jax.evals.metrics.base import MetricResult

VARIANTS = ("coco",)


def ngram_counts(text: str, n: int = 4) -> collections.Counter:
  words = text.split()
  counts = collections.Counter()
  for k in range(1, n + 1):
    for i in range(len(words) - k + 1):
      counts[tuple(words[i:i + k])] += 1
  return counts


def _vector(counts, df, log_n_docs: float, n: int):
  vec = [dict() for _ in range(n)]
  norms = [0.0] * n
  length = 0
  for gram, tf in counts.items():
    k = len(gram) - 1
    weight = tf * (log_n_docs - math.log(max(1.0, df.get(gram, 0.0))))
    vec[k][gram] = weight
    norms[k] += weight * weight
    if k == 1:
      length += tf
  return vec, [math.sqrt(v) for v in norms], length


def _similarity(hyp, ref, sigma: float) -> list[float]:
  (vh, nh, lh), (vr, nr, lr) = hyp, ref
  penalty = math.exp(-((lh - lr) ** 2) / (2 * sigma ** 2))
  out = []
  for k in range(len(vh)):
    val = sum(min(w, vr[k].get(g, 0.0)) * vr[k].get(g, 0.0) for g, w in vh[k].items())
    if nh[k] != 0 and nr[k] != 0:
      val /= nh[k] * nr[k]
    out.append(val * penalty)
  return out


def cider_d(candidates: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]],
            n: int = 4, sigma: float = 6.0) -> tuple[float, dict]:
  """Returns (corpus CIDEr-D, per-image scores) on the coco-caption scale (x10; papers print x100)."""
  if set(candidates) != set(references):
    raise ValueError("candidates and references must cover the same image ids")
  ref_counts = {k: [ngram_counts(r, n) for r in refs] for k, refs in references.items()}
  df = collections.Counter()
  for counts in ref_counts.values():
    for gram in set().union(*counts) if counts else ():
      df[gram] += 1
  log_n_docs = math.log(float(len(references))) if references else 0.0
  per_image = {}
  for key, cand in candidates.items():
    hyp = _vector(ngram_counts(cand, n), df, log_n_docs, n)
    total = [0.0] * n
    for counts in ref_counts[key]:
      sim = _similarity(hyp, _vector(counts, df, log_n_docs, n), sigma)
      total = [a + b for a, b in zip(total, sim)]
    n_refs = len(ref_counts[key])
    per_image[key] = (sum(total) / n) / n_refs * 10.0 if n_refs else 0.0
  corpus = sum(per_image.values()) / len(per_image) if per_image else 0.0
  return corpus, per_image


def cider(candidates: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]],
          tokenize: bool = True) -> MetricResult:
  """CIDEr-D x100 (the papers' scale) on raw captions, PTB-tokenised here first by default."""
  if tokenize:
    from qwenvl_jax.evals.metrics.ptb_tokenize import ptb_tokenize
    candidates = {k: ptb_tokenize(v) for k, v in candidates.items()}
    references = {k: [ptb_tokenize(r) for r in v] for k, v in references.items()}
  corpus, _ = cider_d(candidates, references)
  return MetricResult("cider", "coco", 100.0 * corpus, len(candidates),
                      {"tokenizer": "python-ptb" if tokenize else "pre-tokenised"})
