"""The paper's data-cleaning rules that need no model (Appendix A.1 - A.4), composable and counted.

Each rule sees a stream of raw records (schema in `data.synth`) and drops or rewrites some; `clean` chains
rules and fills a `CleaningReport` with how many records each one saw, removed and modified, so a run can
say exactly where its data went. Rules that need the whole set (longest caption per image) buffer it;
the rest stream. Left out: the CLIP-score filter (A.1 rule 3, needs a model) and GRIT's recursive-box
cleaning beyond the span-level greedy of `remove_nested_refs`.

Order matters and `paper_caption_rules` encodes the paper's: special tags are checked before HTML tags
are stripped (CC12M's `<PERSON>` looks like an HTML tag), emoji before the language filter (so emoji are
counted as emoji).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import html
import io
import pathlib
import re
from typing import Callable, Iterable, Iterator, Sequence

from PIL import Image

# ------------------------------------------------------------------------------------------------
# Reporting.


@dataclasses.dataclass
class RuleStats:
  name: str
  seen: int = 0
  removed: int = 0
  modified: int = 0


@dataclasses.dataclass
class CleaningReport:
  """Per-rule counts, in rule order; filled in lazily as the cleaned stream is consumed."""
  rules: list[RuleStats] = dataclasses.field(default_factory=list)
  input: int = 0
  output: int = 0

  def __getitem__(self, name: str) -> RuleStats:
    for r in self.rules:
      if r.name == name:
        return r
    raise KeyError(name)

  def as_dict(self) -> dict:
    return {"input": self.input, "output": self.output, "rules": [dataclasses.asdict(r) for r in self.rules]}

  def __str__(self) -> str:
    w = max([len(r.name) for r in self.rules] + [4])
    lines = [f"{'rule':<{w}}  {'seen':>8}  {'removed':>8}  {'modified':>8}"]
    lines += [f"{r.name:<{w}}  {r.seen:>8}  {r.removed:>8}  {r.modified:>8}" for r in self.rules]
    lines.append(f"kept {self.output} of {self.input} records")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Rules.


class Rule:
  """A named record filter/rewriter. `fn(record)` returns the record (possibly a modified copy) or None."""

  def __init__(self, name: str, fn: Callable[[dict], dict | None]):
    self.name, self.fn = name, fn

  def apply(self, records: Iterable[dict], stats: RuleStats) -> Iterator[dict]:
    for rec in records:
      stats.seen += 1
      out = self.fn(rec)
      if out is None:
        stats.removed += 1
        continue
      if out is not rec:
        stats.modified += 1
      yield out


class StreamRule(Rule):
  """A rule over the whole stream (`fn(records) -> records`); counts removals from what it drops."""

  def apply(self, records, stats):
    def counted():
      for rec in records:
        stats.seen += 1
        yield rec
    n_out = 0
    for rec in self.fn(counted()):
      n_out += 1
      yield rec
    stats.removed = stats.seen - n_out


def clean(records: Iterable[dict], rules: Sequence[Rule]) -> tuple[Iterator[dict], CleaningReport]:
  """Chains `rules` over `records` lazily; the report is complete once the iterator is exhausted."""
  report = CleaningReport()

  def source():
    for rec in records:
      report.input += 1
      yield rec

  stream = source()
  for rule in rules:
    stats = RuleStats(rule.name)
    report.rules.append(stats)
    stream = rule.apply(stream, stats)

  def sink():
    for rec in stream:
      report.output += 1
      yield rec

  return sink(), report


def clean_list(records: Iterable[dict], rules: Sequence[Rule]) -> tuple[list[dict], CleaningReport]:
  it, report = clean(records, rules)
  return list(it), report


def _texts(rec: dict, fields: Sequence[str]) -> list[str]:
  """The text of `fields`; "words" means the OCR words, "qa" every question and answer."""
  out = []
  for f in fields:
    v = rec.get(f)
    if f == "words":
      out += [w["text"] for w in v or []]
    elif f == "qa":
      out += [s for qa in v or [] for s in (qa["question"], qa["answer"])]
    elif isinstance(v, str):
      out.append(v)
  return out


def _text_filter(name: str, bad: Callable[[str], bool], fields) -> Rule:
  return Rule(name, lambda rec: None if any(bad(t) for t in _texts(rec, fields)) else rec)


def _text_rewrite(name: str, fix: Callable[[str], str], field: str) -> Rule:
  """Rewrites one text field; a text that becomes empty removes the record."""
  def fn(rec):
    v = rec.get(field)
    if not isinstance(v, str):
      return rec
    new = fix(v)
    if not new:
      return None
    return rec if new == v else {**rec, field: new}
  return Rule(name, fn)


# --- images (A.1 rules 1-2, A.4 "too small image") ---------------------------------------------

def _image_size(rec: dict) -> tuple[int, int]:
  if rec.get("width") and rec.get("height"):
    return int(rec["width"]), int(rec["height"])
  img = rec["image"]
  with Image.open(io.BytesIO(img) if isinstance(img, (bytes, bytearray)) else img) as im:
    return im.size  # header only, no decode


def min_image_size(min_side: int = 224) -> Rule:
  return Rule("min_image_size", lambda rec: rec if min(_image_size(rec)) >= min_side else None)


def max_aspect_ratio(max_ratio: float = 3.0) -> Rule:
  def fn(rec):
    w, h = _image_size(rec)
    return rec if max(w, h) <= max_ratio * min(w, h) else None
  return Rule("max_aspect_ratio", fn)


def _image_bytes(rec: dict) -> bytes:
  img = rec["image"]
  return bytes(img) if isinstance(img, (bytes, bytearray, memoryview)) else pathlib.Path(img).read_bytes()


def image_hash(rec: dict, mode: str = "bytes") -> str:
  """sha256 of the encoded file ("bytes") or of the decoded RGB pixels ("pixels": re-encodings match)."""
  data = _image_bytes(rec)
  if mode == "pixels":
    with Image.open(io.BytesIO(data)) as im:
      rgb = im.convert("RGB")
      data = f"{rgb.size}".encode() + rgb.tobytes()
  elif mode != "bytes":
    raise ValueError(f"hash mode must be 'bytes' or 'pixels', got {mode!r}")
  return hashlib.sha256(data).hexdigest()


def dedup_images(mode: str = "bytes") -> Rule:
  """Keeps the first record of each image (by hash); later duplicates are removed."""
  seen = set()

  def fn(rec):
    h = image_hash(rec, mode)
    if h in seen:
      return None
    seen.add(h)
    return rec
  return Rule("dedup_images", fn)


def longest_caption_per_image(mode: str = "bytes") -> StreamRule:
  """A.1: "if there is more than one text matching the same image, we select the longest one".

  Buffers the stream; output keeps the position of each image's first record (ties: the earliest).
  """
  def fn(records):
    best, order = {}, []
    for rec in records:
      h = image_hash(rec, mode)
      if h not in best:
        order.append(h)
        best[h] = rec
      elif len(rec.get("caption") or "") > len(best[h].get("caption") or ""):
        best[h] = rec
    return (best[h] for h in order)
  return StreamRule("longest_caption_per_image", fn)


# --- caption text (A.1 rules 4-8, academic special tags) ---------------------------------------

_CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
# English: printable ASCII; Chinese: CJK ideographs, CJK punctuation, full-width forms; plus the General
# Punctuation block (curly quotes, dashes, ellipsis) that both languages' web text uses.
_NOT_EN_ZH = re.compile(rf"[^\t\n\r\x20-\x7e{_CJK}\u3000-\u303f\uff00-\uffef\u2000-\u206f\u00b7]")
_EMOJI = re.compile(
    "[\U0001F000-\U0001FAFF\u2600-\u27bf\u2b00-\u2bff\u2300-\u23ff\ufe0f\u200d\u20e3\U000E0020-\U000E007F]")
_TAG = re.compile(r"<[^<>]{0,200}>")
_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
_SPACES = re.compile(r"\s+")
_REPEAT_PUNCT = re.compile(r"([!?.,;:~\-_=*#])\1{2,}")


def _length(text: str) -> int:
  """Words, counting each CJK character as a word (Chinese has no spaces)."""
  cjk = len(re.findall(f"[{_CJK}]", text))
  return len(re.sub(f"[{_CJK}]", " ", text).split()) + cjk


def caption_length(min_len: int = 2, max_len: int = 128, field: str = "caption") -> Rule:
  """Removes texts shorter than `min_len` or longer than `max_len` words (CJK chars count as words).

  A record without the field is removed too: a caption dataset needs captions.
  """
  def fn(rec):
    v = rec.get(field)
    return rec if isinstance(v, str) and min_len <= _length(v) <= max_len else None
  return Rule("caption_length", fn)


def special_tags(tags: Sequence[str] = ("<PERSON>",), fields=("caption",)) -> Rule:
  """Removes texts containing dataset placeholder tags (CC12M replaces names with `<PERSON>`)."""
  return _text_filter("special_tags", lambda t: any(tag in t for tag in tags), fields)


def _strip_html(text: str) -> str:
  return _SPACES.sub(" ", html.unescape(_TAG.sub(" ", text))).strip()


def strip_html(field: str = "caption") -> Rule:
  """A.1 rule 7: drops HTML tags, unescapes entities; an emptied text removes the record."""
  return _text_rewrite("strip_html", _strip_html, field)


def _normalize_patterns(text: str) -> str:
  text = _URL.sub(" ", text)
  text = _REPEAT_PUNCT.sub(r"\1", text)
  return _SPACES.sub(" ", text).strip()


def irregular_patterns(field: str = "caption") -> Rule:
  """A.1 rule 8 (the paper does not list its patterns): URLs removed, runs of punctuation collapsed,
  whitespace normalised."""
  return _text_rewrite("irregular_patterns", _normalize_patterns, field)


def no_emoji(fields=("caption",)) -> Rule:
  return _text_filter("no_emoji", lambda t: _EMOJI.search(t) is not None, fields)


def english_or_chinese(fields=("caption",)) -> Rule:
  """A.1 rule 4: removes texts with characters outside English (ASCII) and Chinese (CJK) scripts."""
  return _text_filter("english_or_chinese", lambda t: _NOT_EN_ZH.search(t) is not None, fields)


# --- OCR pages (A.4) ---------------------------------------------------------------------------

_LATIN_EXT = re.compile("[\u0100-\u024f]")  # Latin Extended-A (0100-017F) and -B (0180-024F)
_PUA = re.compile("[\ue000-\uf8ff\U000F0000-\U000FFFFD\U00100000-\U0010FFFD]")  # BMP + planes 15-16


def ocr_char_count(min_chars: int = 10, max_chars: int = 4000, fields=("words",)) -> Rule:
  """A.4: removes pages with too many or too few characters (whitespace not counted)."""
  def fn(rec):
    n = sum(len(t.replace(" ", "")) for t in _texts(rec, fields))
    return rec if min_chars <= n <= max_chars else None
  return Rule("ocr_char_count", fn)


def no_latin_extended(fields=("words",)) -> Rule:
  return _text_filter("no_latin_extended", lambda t: _LATIN_EXT.search(t) is not None, fields)


def no_private_use(fields=("words",)) -> Rule:
  return _text_filter("no_private_use", lambda t: _PUA.search(t) is not None, fields)


# --- grounding and VQA (A.2, A.3) --------------------------------------------------------------

def remove_nested_refs() -> Rule:
  """A.3: GRIT captions nest grounded spans; keep the most spans with none inside another (greedy).

  Objects sharing one span stay together; the greedy picks spans by earliest end, which maximises the
  number of non-overlapping spans kept. Objects without a span are untouched.
  """
  def fn(rec):
    objs = rec.get("objects") or []
    spans = sorted({tuple(o["span"]) for o in objs if o.get("span") is not None}, key=lambda s: (s[1], s[0]))
    kept, end = set(), -1
    for s in spans:
      if s[0] >= end:
        kept.add(s)
        end = s[1]
    if len(kept) == len(spans):
      return rec
    return {**rec, "objects": [o for o in objs if o.get("span") is None or tuple(o["span"]) in kept]}
  return Rule("remove_nested_refs", fn)


_CONFIDENCE = {"yes": 2, "maybe": 1, "no": 0}


def most_confident_answer() -> Rule:
  """A.2 (VQAv2): a question with several annotated `answers` [{"answer", "confidence"}] keeps the one
  with the highest confidence ("yes" > "maybe" > "no", or a number); ties go to the most frequent."""
  def fn(rec):
    qas = rec.get("qa") or []
    if not any("answers" in qa for qa in qas):
      return rec
    out = []
    for qa in qas:
      if "answers" in qa and qa["answers"]:
        freq = collections.Counter(a["answer"] for a in qa["answers"])
        conf = lambda a: _CONFIDENCE.get(a.get("confidence"), a.get("confidence") or 0)
        best = max(qa["answers"], key=lambda a: (conf(a), freq[a["answer"]]))
        qa = {"question": qa["question"], "answer": best["answer"]}
      out.append(qa)
    return {**rec, "qa": out}
  return Rule("most_confident_answer", fn)


# --- recipes -----------------------------------------------------------------------------------

def paper_caption_rules(min_side: int = 224, max_ratio: float = 3.0, min_len: int = 2,
                        max_len: int = 128) -> list[Rule]:
  """A.1's model-free steps for image-text pairs, in a safe order.

  `longest_caption_per_image` also removes duplicate images (it keeps one record per image hash); it
  buffers the set, so for very large sets use `dedup_images` (streaming, keeps the first) instead.
  """
  return [min_image_size(min_side), max_aspect_ratio(max_ratio), special_tags(), strip_html(),
          irregular_patterns(), no_emoji(), english_or_chinese(), caption_length(min_len, max_len),
          longest_caption_per_image()]

