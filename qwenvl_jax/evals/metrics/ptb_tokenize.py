"""A Python stand-in for coco-caption's tokenisation (Stanford PTBTokenizer 3.4.1 + punctuation drop).

pycocoevalcap shells out to Java (`PTBTokenizer -preserveLines -lowerCase`) and then drops the tokens
'' ' `` ` . ? ! , : - -- ... ; -- this module reproduces that on the text captions are made of, so
CIDEr can run without Java. What it does, per whitespace-separated chunk:
  * splits leading/trailing quotes, brackets (-> -lrb- -rrb- -lsb- -rsb- -lcb- -rcb-, which survive:
    the drop list is upper-case and the tokenizer lower-cases first), , ; : ? ! ... - $ % and final
    periods, keeping the period of abbreviations (mr., st., etc., single letters, u.s., a.m., ...);
  * splits inner commas/colons unless between digits, and * ~ ^ | + = \\ & % " and -- (em/en dashes);
  * splits clitics: n't 's 're 've 'll 'd 'm, cannot/gonna/gotta/wanna/gimme/lemme, 'tis/'twas.
Known differences from the Java tokenizer (none occur in ordinary captions): runs of periods glued to
a word ("a..."), quotes inside a word (5'6"), '#' before digits, currency prefixes ("US$5"), Unicode
punctuation beyond quotes/dashes/ellipsis, and its full abbreviation list (only common ones here).
The tests compare this against the Java tokenizer on realistic captions when Java is available.
"""

from __future__ import annotations

import re

DROP = frozenset(("''", "'", "``", "`", ".", "?", "!", ",", ":", "-", "--", "...", ";"))
_OPEN = {"(": "-lrb-", "[": "-lsb-", "{": "-lcb-"}
_CLOSE = {")": "-rrb-", "]": "-rsb-", "}": "-rcb-"}
_ABBREVIATIONS = frozenset("""mr mrs ms dr prof st jr sr mt ft etc vs inc ltd co corp ave blvd rd gen gov
  sen rep capt col lt sgt jan feb mar apr jun jul aug sep sept oct nov dec dept est cf al""".split())
_LETTER_ABBREV = re.compile(r"[^\W\d_](\.[^\W\d_])*", re.UNICODE)  # i, u.s, a.m, e.g
_CLITICS = ("'s", "'re", "'ve", "'ll", "'d", "'m")
_SPECIAL = {"cannot": (3,), "gonna": (3,), "gotta": (3,), "wanna": (3,), "gimme": (3,), "lemme": (3,),
            "'tis": (2,), "'twas": (2,)}
_INNER_SPLIT = set("*~^|+=\\%;")
_UNICODE = {"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2014": " -- ",
            "\u2013": " -- ", "\u2026": " ... "}


def _split_clitic(word: str) -> list[str]:
  low = word.lower()
  if low in _SPECIAL:
    cuts = _SPECIAL[low]
    return [word[:cuts[0]], word[cuts[0]:]]
  if len(low) > 3 and low.endswith("n't"):
    return [word[:-3], word[-3:]]
  for suffix in _CLITICS:
    if len(low) > len(suffix) and low.endswith(suffix):
      return [word[:-len(suffix)], word[-len(suffix):]]
  if low == "y'all":
    return [word[:2], word[2:]]
  if "'n'" in low[1:-1]:
    i = low.index("'n'", 1)
    return [word[:i], word[i:i + 3], word[i + 3:]]
  if len(low) > 2 and low.endswith("'n"):
    return [word[:-2], word[-2:]]
  return [word]


def _split_inner(core: str) -> list[str]:
  parts, buf = [], ""
  for i, ch in enumerate(core):
    prev = core[i - 1] if i else ""
    nxt = core[i + 1] if i + 1 < len(core) else ""
    sep = None
    if ch in ",:":
      if not (prev.isdigit() and nxt.isdigit()):
        sep = ch
    elif ch in _INNER_SPLIT:
      sep = ch
    elif ch == "&":
      if not (prev.isupper() and nxt.isupper()):  # AT&T stays whole
        sep = ch
    elif ch == '"':
      sep = "''"
    elif ch in _OPEN:
      sep = _OPEN[ch]
    elif ch in _CLOSE:
      sep = _CLOSE[ch]
    if sep is None:
      buf += ch
      continue
    if buf:
      parts.append(buf)
    parts.append(sep)
    buf = ""
  if buf:
    parts.append(buf)
  out = []
  for p in parts:
    out.extend(_split_clitic(p))
  return out


def _is_abbreviation(stem: str) -> bool:
  low = stem.lower()
  return low in _ABBREVIATIONS or _LETTER_ABBREV.fullmatch(low) is not None


def _split_chunk(chunk: str) -> list[str]:
  head, tail = [], []
  w = chunk
  while w:  # leading punctuation
    low = w.lower()
    if w[0] == '"' or w.startswith("``"):
      head.append("``")
      w = w[2:] if w.startswith("``") else w[1:]
    elif w[0] in _OPEN:
      head.append(_OPEN[w[0]])
      w = w[1:]
    elif w.startswith("..."):
      head.append("...")
      w = w[3:]
    elif w.startswith("--"):
      head.append("--")
      w = w[2:]
    elif len(w) > 1 and w[0] in "-?!,;:`$\u00bf\u00a1":
      head.append(w[0])
      w = w[1:]
    elif w[0] == "'" and len(w) > 1 and not (low in _SPECIAL or low[1:] in ("s", "re", "ve", "ll", "d", "m", "t")
                                             or w[1].isdigit() or low.startswith("'n'")):
      head.append("'")
      w = w[1:]
    else:
      break
  while w:  # trailing punctuation, outermost first
    if w[-1] == '"':
      tail.append("''")
      w = w[:-1]
    elif w[-1] in _CLOSE:
      tail.append(_CLOSE[w[-1]])
      w = w[:-1]
    elif w.endswith("..."):
      tail.append("...")
      w = w[:-3]
    elif w.endswith("--"):
      tail.append("--")
      w = w[:-2]
    elif w[-1] in "?!":
      run = len(w) - len(w.rstrip("?!"))
      if run == len(w):
        break
      tail.append(w[-run:])
      w = w[:-run]
    elif len(w) > 1 and w[-1] in ",;:-%":
      tail.append(w[-1])
      w = w[:-1]
    elif len(w) > 1 and w[-1] == "'" and not w.lower().endswith("'n'"):
      tail.append("'")
      w = w[:-1]
    elif len(w) > 1 and w[-1] == ".":
      stem = w.rstrip(".")
      if not stem or (_is_abbreviation(stem) and len(w) - len(stem) == 1):
        break
      tail.append(".")
      w = stem
    else:
      break
  return head + (_split_inner(w) if w else []) + tail[::-1]


def ptb_tokenize(text: str) -> str:
  """One caption -> space-joined lower-case tokens with punctuation dropped (coco-caption style)."""
  text = text.replace("\n", " ")
  for src, dst in _UNICODE.items():
    text = text.replace(src, dst)
  text = text.replace("--", " -- ")
  tokens = []
  for chunk in text.split():
    tokens.extend(_split_chunk(chunk))
  return " ".join(t.lower() for t in tokens if t.lower() not in DROP)
