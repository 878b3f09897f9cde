"""The one table between our parameter tree and the released HF/PyTorch state dict (and config.json).

Every parameter is one `Entry`: our dotted path, its HF key (with `{i}` for per-layer keys, which
stack into our leading [L] axis) and an einops-style pattern such as `"(3 H hd) D -> D 3 H hd"`
that says how one HF tensor becomes our (per-layer) array. The same pattern read right-to-left is
the inverse, so HF -> ours -> HF is a pure reshape/transpose round trip that cannot drift.

Pattern axes are symbols bound to config fields (`SYMBOLS`), so the table also gives every expected
shape for a config and, when tensors disagree with a config, the name of the field that is wrong.
Other sources (OpenCLIP ViT, a Qwen-7B LLM) are derived views of the same table.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Iterable, Mapping, Sequence

import numpy as np

from qwenvl_jax.config import (AdapterConfig, ConfigError, LLMConfig, ModelConfig, VisionConfig)


class LayoutError(ValueError):
  """Tensors do not fit the layout (missing / unexpected keys, shapes); the message names them."""


# --------------------------------------------------------------------------------------------
# Symbols: pattern axis name -> (value from a ModelConfig, the config field it comes from).

SYMBOLS = {
    "V": (lambda c: c.llm.vocab_size, "model.llm.vocab_size"),
    "D": (lambda c: c.llm.hidden, "model.llm.hidden"),
    "E": (lambda c: c.llm.hidden, "model.llm.hidden"),  # adapter width (= LLM hidden), second axis
    "L": (lambda c: c.llm.layers, "model.llm.layers"),
    "H": (lambda c: c.llm.heads, "model.llm.heads"),
    "hd": (lambda c: c.llm.head_dim, "model.llm.head_dim"),
    "F": (lambda c: c.llm.mlp_dim, "model.llm.mlp_dim"),
    "W": (lambda c: c.vision.width, "model.vision.width"),
    "VL": (lambda c: c.vision.layers, "model.vision.layers"),
    "VH": (lambda c: c.vision.heads, "model.vision.heads"),
    "Vhd": (lambda c: c.vision.head_dim, "model.vision.width / model.vision.heads"),
    "VF": (lambda c: c.vision.mlp_dim, "model.vision.mlp_dim"),
    "kh": (lambda c: c.vision.patch_size, "model.vision.patch_size"),
    "kw": (lambda c: c.vision.patch_size, "model.vision.patch_size"),
    "G2": (lambda c: c.vision.pos_grid ** 2, "model.vision.pos_grid (squared)"),
    "Q": (lambda c: c.adapter.n_queries, "model.adapter.n_queries"),
    "AH": (lambda c: c.adapter.heads, "model.adapter.heads"),
    "Ahd": (lambda c: c.llm.hidden // c.adapter.heads, "model.llm.hidden / model.adapter.heads"),
}


def symbol_sizes(cfg: ModelConfig) -> dict[str, int]:
  return {name: fn(cfg) for name, (fn, _) in SYMBOLS.items()}


# --------------------------------------------------------------------------------------------
# Patterns: "(a b) c -> c a b". Groups multiply; digits are literal sizes.

Group = tuple[str, ...]


def _parse_side(side: str) -> list[Group]:
  groups, cur = [], None
  for tok in side.replace("(", " ( ").replace(")", " ) ").split():
    if tok == "(":
      cur = []
    elif tok == ")":
      groups.append(tuple(cur))
      cur = None
    elif cur is not None:
      cur.append(tok)
    else:
      groups.append((tok,))
  return groups


def _size(axis: str, sizes: Mapping[str, int]) -> int:
  return int(axis) if axis.isdigit() else sizes[axis]


@dataclasses.dataclass(frozen=True)
class Pattern:
  src: tuple[Group, ...]
  dst: tuple[Group, ...]

  @classmethod
  def parse(cls, text: str) -> "Pattern":
    left, right = text.split("->")
    src, dst = tuple(_parse_side(left)), tuple(_parse_side(right))
    flat_src = [a for g in src for a in g]
    assert sorted(flat_src) == sorted(a for g in dst for a in g), text
    assert len(set(flat_src)) == len(flat_src), f"repeated axis in {text}"
    return cls(src, dst)

  def inverse(self) -> "Pattern":
    return Pattern(self.dst, self.src)

  def shape(self, side: Sequence[Group], sizes) -> tuple[int, ...]:
    return tuple(math.prod(_size(a, sizes) for a in g) for g in side)

  def apply(self, x: np.ndarray, sizes: Mapping[str, int]) -> np.ndarray:
    """src layout -> dst layout (a view where numpy allows, else one copy)."""
    flat_src = [a for g in self.src for a in g]
    flat_dst = [a for g in self.dst for a in g]
    expected = self.shape(self.src, sizes)
    if tuple(x.shape) != expected:
      raise LayoutError(f"shape {tuple(x.shape)} does not match {describe(self.src)} = {expected}")
    x = x.reshape([_size(a, sizes) for a in flat_src])
    x = x.transpose([flat_src.index(a) for a in flat_dst])
    return x.reshape(self.shape(self.dst, sizes))


def describe(groups: Sequence[Group]) -> str:
  return "(" + ", ".join("*".join(g) for g in groups) + ")"


# --------------------------------------------------------------------------------------------
# The table.

@dataclasses.dataclass(frozen=True)
class Entry:
  ours: str  # dotted path in nnx.state(QwenVL).to_pure_dict()
  hf: str  # HF key; "{i}" is the layer index for stacked entries
  pattern: Pattern  # HF tensor (one layer) -> our array (one layer)
  stack: str | None = None  # "llm" / "vit": our array has a leading [layers] axis

  def n_layers(self, cfg: ModelConfig) -> int | None:
    return {None: None, "llm": cfg.llm.layers, "vit": cfg.vision.layers}[self.stack]

  def hf_keys(self, cfg: ModelConfig) -> list[str]:
    n = self.n_layers(cfg)
    return [self.hf] if n is None else [self.hf.format(i=i) for i in range(n)]

  def hf_shape(self, cfg: ModelConfig) -> tuple[int, ...]:
    return self.pattern.shape(self.pattern.src, symbol_sizes(cfg))

  def ours_shape(self, cfg: ModelConfig) -> tuple[int, ...]:
    per_layer = self.pattern.shape(self.pattern.dst, symbol_sizes(cfg))
    n = self.n_layers(cfg)
    return per_layer if n is None else (n, *per_layer)

  def ours_groups(self) -> tuple[Group, ...]:
    lead = {None: (), "llm": (("L",),), "vit": (("VL",),)}[self.stack]
    return lead + self.pattern.dst

  def block_axis(self) -> tuple[str, int] | None:
    """(symbol, axis of our array) when a block of HF rows is a block of one of our axes.

    Big unstacked tensors (the embedding, lm_head) are converted in such row blocks, so no
    conversion ever holds them whole.
    """
    first = self.pattern.src[0]
    if self.stack or len(first) != 1 or first[0].isdigit():
      return None
    for pos, group in enumerate(self.pattern.dst):
      if group == first:
        return first[0], pos
    return None

  def _sizes(self, cfg: ModelConfig, rows: int | None) -> dict[str, int]:
    sizes = symbol_sizes(cfg)
    if rows is not None:
      sizes[self.block_axis()[0]] = rows
    return sizes

  def to_ours(self, hf_tensor: np.ndarray, cfg: ModelConfig, rows: bool = False) -> np.ndarray:
    """One HF tensor (one layer) -> our layout (one layer slice); `rows`: a block of HF rows."""
    return self.pattern.apply(hf_tensor, self._sizes(cfg, hf_tensor.shape[0] if rows else None))

  def to_hf(self, ours_slice: np.ndarray, cfg: ModelConfig, rows: int | None = None) -> np.ndarray:
    """One of our (per-layer) slices -> the HF tensor, C-contiguous for writing; `rows`: the
    slice is a block of that many HF rows (along `block_axis`)."""
    return np.ascontiguousarray(self.pattern.inverse().apply(ours_slice, self._sizes(cfg, rows)))


def _e(ours, hf, pattern, stack=None):
  return Entry(ours, hf, Pattern.parse(pattern), stack)


_VIS = "transformer.visual."
_VB = _VIS + "transformer.resblocks.{i}."
_AP = _VIS + "attn_pool."
_H = "transformer.h.{i}."

ENTRIES: tuple[Entry, ...] = (
    # Vision tower (OpenCLIP layout; in_proj rows interleaved per head: [heads, 3, head_dim]).
    _e("visual.patch_embed", _VIS + "conv1.weight", "W 3 kh kw -> kh kw 3 W"),
    _e("visual.pos_embed", _VIS + "positional_embedding", "G2 W -> G2 W"),
    _e("visual.ln_pre.scale", _VIS + "ln_pre.weight", "W -> W"),
    _e("visual.ln_pre.bias", _VIS + "ln_pre.bias", "W -> W"),
    _e("visual.blocks.ln_1.scale", _VB + "ln_1.weight", "W -> W", "vit"),
    _e("visual.blocks.ln_1.bias", _VB + "ln_1.bias", "W -> W", "vit"),
    _e("visual.blocks.attn.qkv.kernel", _VB + "attn.in_proj.weight", "(VH 3 Vhd) W -> W 3 VH Vhd", "vit"),
    _e("visual.blocks.attn.qkv.bias", _VB + "attn.in_proj.bias", "(VH 3 Vhd) -> 3 VH Vhd", "vit"),
    _e("visual.blocks.attn.out.kernel", _VB + "attn.out_proj.weight", "W (VH Vhd) -> VH Vhd W", "vit"),
    _e("visual.blocks.attn.out.bias", _VB + "attn.out_proj.bias", "W -> W", "vit"),
    _e("visual.blocks.ln_2.scale", _VB + "ln_2.weight", "W -> W", "vit"),
    _e("visual.blocks.ln_2.bias", _VB + "ln_2.bias", "W -> W", "vit"),
    _e("visual.blocks.mlp.fc_in.kernel", _VB + "mlp.c_fc.weight", "VF W -> W VF", "vit"),
    _e("visual.blocks.mlp.fc_in.bias", _VB + "mlp.c_fc.bias", "VF -> VF", "vit"),
    _e("visual.blocks.mlp.fc_out.kernel", _VB + "mlp.c_proj.weight", "W VF -> VF W", "vit"),
    _e("visual.blocks.mlp.fc_out.bias", _VB + "mlp.c_proj.bias", "W -> W", "vit"),
    # Adapter = attn_pool (nn.MultiheadAttention: q, k, v contiguous) + ln_post + proj ([in, out]).
    _e("adapter.query", _AP + "query", "Q D -> Q D"),
    _e("adapter.pos_embed", _AP + "pos_embed", "Q D -> Q D"),
    _e("adapter.kv_proj.kernel", _AP + "kv_proj.weight", "D W -> W D"),
    _e("adapter.ln_q.scale", _AP + "ln_q.weight", "D -> D"),
    _e("adapter.ln_q.bias", _AP + "ln_q.bias", "D -> D"),
    _e("adapter.ln_kv.scale", _AP + "ln_kv.weight", "D -> D"),
    _e("adapter.ln_kv.bias", _AP + "ln_kv.bias", "D -> D"),
    _e("adapter.in_proj.kernel", _AP + "attn.in_proj_weight", "(3 AH Ahd) D -> D 3 AH Ahd"),
    _e("adapter.in_proj.bias", _AP + "attn.in_proj_bias", "(3 AH Ahd) -> 3 AH Ahd"),
    _e("adapter.out_proj.kernel", _AP + "attn.out_proj.weight", "D (AH Ahd) -> AH Ahd D"),
    _e("adapter.out_proj.bias", _AP + "attn.out_proj.bias", "D -> D"),
    _e("adapter.ln_post.scale", _VIS + "ln_post.weight", "D -> D"),
    _e("adapter.ln_post.bias", _VIS + "ln_post.bias", "D -> D"),
    _e("adapter.proj", _VIS + "proj", "D E -> D E"),
    # LLM (c_attn: q | k | v contiguous; torch Linear weights are [out, in]; w2 is the gate).
    _e("llm.embed", "transformer.wte.weight", "V D -> V D"),
    _e("llm.blocks.ln_1.scale", _H + "ln_1.weight", "D -> D", "llm"),
    _e("llm.blocks.attn.qkv.kernel", _H + "attn.c_attn.weight", "(3 H hd) D -> D 3 H hd", "llm"),
    _e("llm.blocks.attn.qkv.bias", _H + "attn.c_attn.bias", "(3 H hd) -> 3 H hd", "llm"),
    _e("llm.blocks.attn.out.kernel", _H + "attn.c_proj.weight", "D (H hd) -> H hd D", "llm"),
    _e("llm.blocks.ln_2.scale", _H + "ln_2.weight", "D -> D", "llm"),
    _e("llm.blocks.mlp.w1.kernel", _H + "mlp.w1.weight", "F D -> D F", "llm"),
    _e("llm.blocks.mlp.w2.kernel", _H + "mlp.w2.weight", "F D -> D F", "llm"),
    _e("llm.blocks.mlp.c_proj.kernel", _H + "mlp.c_proj.weight", "D F -> F D", "llm"),
    _e("llm.ln_f.scale", "transformer.ln_f.weight", "D -> D"),
    _e("llm.lm_head", "lm_head.weight", "V D -> D V"),
)

BY_OURS = {e.ours: e for e in ENTRIES}

# Keys some HF checkpoints carry that are not parameters (recomputed buffers): ignored on import.
IGNORED_HF_SUFFIXES = (".rotary_emb.inv_freq", ".attn.bias", ".attn.masked_bias")


def hf_key_map(cfg: ModelConfig,
               entries: Iterable[Entry] = ENTRIES) -> dict[str, tuple[Entry, int | None]]:
  """HF key -> (entry, layer index or None), in table order."""
  out = {}
  for e in entries:
    for i, key in enumerate(e.hf_keys(cfg)):
      out[key] = (e, None if e.stack is None else i)
  return out


def hf_shapes(cfg: ModelConfig, entries: Iterable[Entry] = ENTRIES) -> dict[str, tuple[int, ...]]:
  return {k: e.hf_shape(cfg) for k, (e, _) in hf_key_map(cfg, entries).items()}


def ours_shapes(cfg: ModelConfig, entries: Iterable[Entry] = ENTRIES) -> dict[str, tuple[int, ...]]:
  return {e.ours: e.ours_shape(cfg) for e in entries}


# --------------------------------------------------------------------------------------------
# Derived tables for the stage-1 sources.

def openclip_entries(prefix: str = "visual.") -> tuple[Entry, ...]:
  """The vision tower as an OpenCLIP ViT state dict names it.

  OpenCLIP uses `nn.MultiheadAttention`, so its `in_proj_weight` rows are q | k | v contiguous
  (Qwen-VL's own `in_proj` interleaves them per head). The position table has a class-token row
  first; `convert` drops it (and resizes the grid) before this pattern applies. Not used by
  Qwen-VL and dropped: `class_embedding`, OpenCLIP's `ln_post` / `proj` (the CLIP head; Qwen-VL's
  ln_post / proj act on the adapter output), any `attn_pool`, and the whole text tower.
  """
  out = []
  for e in ENTRIES:
    if not e.ours.startswith("visual."):
      continue
    key = prefix + e.hf[len(_VIS):]
    if e.ours == "visual.blocks.attn.qkv.kernel":
      e = _e(e.ours, key.replace("attn.in_proj.weight", "attn.in_proj_weight"),
             "(3 VH Vhd) W -> W 3 VH Vhd", "vit")
    elif e.ours == "visual.blocks.attn.qkv.bias":
      e = _e(e.ours, key.replace("attn.in_proj.bias", "attn.in_proj_bias"),
             "(3 VH Vhd) -> 3 VH Vhd", "vit")
    else:
      e = dataclasses.replace(e, hf=key)
    out.append(e)
  return tuple(out)


def part_entries(part: str) -> tuple[Entry, ...]:
  """Entries of one top-level part: "visual", "adapter" or "llm"."""
  return tuple(e for e in ENTRIES if e.ours.split(".")[0] == part)


# --------------------------------------------------------------------------------------------
# Checking tensors against a config.

def _fmt_keys(keys: Sequence[str], limit: int = 12) -> str:
  keys = sorted(keys)
  more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
  return ", ".join(keys[:limit]) + more


def check_tensors(actual: Mapping[str, tuple[int, ...]], cfg: ModelConfig, *, side: str,
                  entries: Sequence[Entry] = ENTRIES, where: str = "checkpoint",
                  ignore_unexpected: bool = False):
  """Raises LayoutError naming missing / unexpected keys, config fields or key + both shapes.

  `side` is "hf" (keys and shapes of the HF state dict) or "ours" (dotted paths, stacked shapes).
  """
  if side == "hf":
    expected = {k: (e, e.pattern.src) for k, (e, _) in hf_key_map(cfg, entries).items()}
    actual = {k: v for k, v in actual.items() if not k.endswith(IGNORED_HF_SUFFIXES)}
  else:
    expected = {e.ours: (e, e.ours_groups()) for e in entries}
  missing = [k for k in expected if k not in actual]
  unexpected = [] if ignore_unexpected else [k for k in actual if k not in expected]
  problems = _layer_count_problems(actual, cfg, entries) if side == "hf" else []
  if missing:
    problems.append(f"missing keys in the {where}: {_fmt_keys(missing)}")
  if unexpected:
    problems.append(f"unexpected keys in the {where}: {_fmt_keys(unexpected)}")
  sizes = symbol_sizes(cfg)
  # Per config field, every tensor dim that measures it: a field is wrong when *all* of them
  # disagree with it; otherwise the odd tensor out is a plain shape mismatch.
  seen: dict[str, list[tuple[str, int, int]]] = {}
  mismatched = []
  for key, (entry, groups) in expected.items():
    if key not in actual:
      continue
    want = tuple(math.prod(_size(a, sizes) for a in g) for g in groups)
    got = tuple(actual[key])
    if len(got) == len(want):
      for g, n_got, n_want in zip(groups, got, want):
        if len(g) == 1 and not g[0].isdigit():
          seen.setdefault(SYMBOLS[g[0]][1], []).append((key, n_got, n_want))
    if got != want:
      mismatched.append((key, got, want, groups))
  bad_fields = {f: obs for f, obs in seen.items() if all(g != w for _, g, w in obs)}
  for field, obs in bad_fields.items():
    key, n_got, n_want = obs[0]
    got = tuple(actual[key])
    problems.append(f"config field '{field}' disagrees with the tensors: the config gives {n_want}, "
                    f"but {key} has {n_got} (shape {got}, expected "
                    f"{tuple(math.prod(_size(a, sizes) for a in g) for g in expected[key][1])})")
  bad_keys = {k for obs in bad_fields.values() for k, _, _ in obs}
  shape_msgs = [f"{key}: {where} shape {got} != expected {want} {describe(groups)}"
                for key, got, want, groups in mismatched if key not in bad_keys]
  if shape_msgs:
    more = f" ... and {len(shape_msgs) - 6} more" if len(shape_msgs) > 6 else ""
    problems.append("shape mismatch: " + "; ".join(shape_msgs[:6]) + more)
  if problems:
    raise LayoutError("; ".join(problems))


def _layer_count_problems(actual: Mapping, cfg: ModelConfig, entries: Sequence[Entry]) -> list[str]:
  """HF keys carry the layer count in their names: compare it with the config."""
  out = []
  for stack, field in (("vit", "model.vision.layers"), ("llm", "model.llm.layers")):
    stacked = [e for e in entries if e.stack == stack]
    if not stacked:
      continue
    pattern = re.compile(re.escape(stacked[0].hf).replace(re.escape("{i}"), r"(\d+)") + "$")
    found = {int(m.group(1)) for k in actual if (m := pattern.match(k))}
    want = stacked[0].n_layers(cfg)
    if found and len(found) != want:
      out.append(f"config field '{field}' disagrees with the tensors: the config gives {want}, "
                 f"the checkpoint has {len(found)} layers ({stacked[0].hf.format(i='N')})")
  return out


# --------------------------------------------------------------------------------------------
# config.json <-> ModelConfig.

# Released constants that config.json does not carry; written into `visual` only when ours differ.
_RELEASED_POS_GRID = 16
_RELEASED_N_QUERIES = 256
_RELEASED_LN_EPS = 1e-6
_HEAD_DIM_ADAPTER = 128  # released: Resampler(num_heads=output_dim // 128)

ARCH_FIELDS = (
    "vision.image_size", "vision.patch_size", "vision.width", "vision.layers", "vision.heads",
    "vision.mlp_dim", "vision.pos_grid", "vision.ln_eps", "adapter.n_queries", "adapter.heads",
    "adapter.ln_eps", "llm.vocab_size", "llm.hidden", "llm.layers", "llm.heads", "llm.head_dim",
    "llm.mlp_dim", "llm.rope_base", "llm.rms_eps", "llm.seq_length", "llm.use_dynamic_ntk",
    "llm.use_logn_attn", "image_start_id", "image_end_id", "image_pad_id")


def _get(cfg, dotted: str):
  for part in dotted.split("."):
    cfg = getattr(cfg, part)
  return cfg


def _cfg_error(field: str, msg: str):
  raise ConfigError(f"config.json field '{field}': {msg}")


_INT_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
               "intermediate_size", "kv_channels", "seq_length")
_FLOAT_FIELDS = ("rotary_emb_base", "layer_norm_epsilon", "rotary_pct")
_VISUAL_INT_FIELDS = ("image_size", "patch_size", "width", "layers", "heads", "pos_grid", "n_queries",
                      "adapter_heads", "output_dim", "image_start_id", "image_end_id", "image_pad_id")
_VISUAL_FLOAT_FIELDS = ("mlp_ratio", "ln_eps")


def _check_types(cj: Mapping):
  """Numbers must be numbers (a string "two" would otherwise fail deep inside as a TypeError)."""
  def check(d, prefix, ints, floats):
    for f in ints:
      v = d.get(f)
      low = 0 if f.startswith("image_") else 1  # token ids may be 0; sizes and counts may not
      if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < low):
        _cfg_error(prefix + f, f"{v!r} is not an integer >= {low}")
    for f in floats:
      v = d.get(f)
      if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
        _cfg_error(prefix + f, f"{v!r} is not a number")

  if not isinstance(cj, Mapping):
    raise ConfigError(f"config.json must hold a JSON object, got {type(cj).__name__}")
  check(cj, "", _INT_FIELDS, _FLOAT_FIELDS)
  vis = cj.get("visual")
  if vis is not None and not isinstance(vis, Mapping):
    _cfg_error("visual", f"must be an object, got {type(vis).__name__}")
  check(vis or {}, "visual.", _VISUAL_INT_FIELDS, _VISUAL_FLOAT_FIELDS)


def hf_llm_config(cj: Mapping) -> LLMConfig:
  """The LLM part of a Qwen / Qwen-VL config.json."""
  _check_types(cj)
  for field in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size"):
    if field not in cj:
      _cfg_error(field, "missing")
  if cj.get("rotary_pct", 1.0) != 1.0:
    _cfg_error("rotary_pct", f"{cj['rotary_pct']} unsupported (Qwen-VL rotates all dims: 1.0)")
  if not cj.get("no_bias", True):
    _cfg_error("no_bias", "false unsupported (Qwen-VL has no MLP / c_proj biases)")
  if cj.get("tie_word_embeddings", False):
    _cfg_error("tie_word_embeddings", "true unsupported (Qwen-VL's lm_head is untied)")
  if cj["intermediate_size"] % 2:
    _cfg_error("intermediate_size", f"{cj['intermediate_size']} must be even (w1, w2 are half each)")
  hidden, heads = cj["hidden_size"], cj["num_attention_heads"]
  return LLMConfig(
      vocab_size=cj["vocab_size"], hidden=hidden, layers=cj["num_hidden_layers"], heads=heads,
      head_dim=cj.get("kv_channels", hidden // heads), mlp_dim=cj["intermediate_size"] // 2,
      rope_base=float(cj.get("rotary_emb_base", 10000.0)),
      rms_eps=float(cj.get("layer_norm_epsilon", 1e-6)), seq_length=cj.get("seq_length", 2048),
      use_dynamic_ntk=bool(cj.get("use_dynamic_ntk", True)),
      use_logn_attn=bool(cj.get("use_logn_attn", True)))


def hf_config_to_model_config(cj: Mapping, base: ModelConfig | None = None) -> ModelConfig:
  """The released config.json (plus our optional extras in `visual`) -> ModelConfig.

  Runtime fields (dtype, param_dtype, remat, scan_layers, window attention) come from `base`; if
  `base` is given, its architecture must agree with config.json (the message names the field).
  """
  llm = hf_llm_config(cj)
  vis = dict(cj.get("visual") or {})
  hidden = llm.hidden
  if "output_dim" in vis and vis["output_dim"] != hidden:
    _cfg_error("visual.output_dim", f"{vis['output_dim']} != hidden_size {hidden}")
  width = vis.get("width", 1664)
  base_vision = base.vision if base is not None else VisionConfig()
  vision = dataclasses.replace(
      base_vision, image_size=vis.get("image_size", 448), patch_size=vis.get("patch_size", 14),
      width=width, layers=vis.get("layers", 48), heads=vis.get("heads", 16),
      mlp_dim=int(width * vis.get("mlp_ratio", 4.9231)),
      pos_grid=vis.get("pos_grid", _RELEASED_POS_GRID), ln_eps=float(vis.get("ln_eps", _RELEASED_LN_EPS)))
  adapter_heads = vis.get("adapter_heads", hidden // _HEAD_DIM_ADAPTER)
  if adapter_heads < 1:
    _cfg_error("visual.adapter_heads", f"missing, and the released default hidden_size // 128 is 0 "
                                       f"for hidden_size {hidden}")
  adapter = AdapterConfig(n_queries=vis.get("n_queries", _RELEASED_N_QUERIES), heads=adapter_heads,
                          ln_eps=float(vis.get("ln_eps", _RELEASED_LN_EPS)))
  start = vis.get("image_start_id", 151857)
  runtime = {} if base is None else dict(dtype=base.dtype, param_dtype=base.param_dtype,
                                          remat=base.remat, scan_layers=base.scan_layers)
  cfg = ModelConfig(vision=vision, adapter=adapter, llm=llm, image_start_id=start,
                    image_end_id=vis.get("image_end_id", start + 1),
                    image_pad_id=vis.get("image_pad_id", start + 2), **runtime)
  if base is not None:
    for field in ARCH_FIELDS:
      if _get(base, field) != _get(cfg, field):
        raise ConfigError(f"config field 'model.{field}': the given config says {_get(base, field)!r} "
                          f"but the checkpoint's config.json says {_get(cfg, field)!r}")
  return cfg.validate()


def _mlp_ratio(width: int, mlp_dim: int) -> float:
  """A ratio r with int(width * r) == mlp_dim (the released code's formula), short when possible."""
  for digits in range(4, 17):
    r = round(mlp_dim / width, digits)
    if int(width * r) == mlp_dim:
      return r
  r = mlp_dim / width
  while int(width * r) < mlp_dim:
    r = float(np.nextafter(r, np.inf))
  return r


_TORCH_DTYPE = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def model_config_to_hf_config(cfg: ModelConfig, dtype: str = "bfloat16",
                              base: Mapping | None = None) -> dict:
  """ModelConfig -> a released-style config.json dict, merged over `base` (the original one, so
  fields we do not model, e.g. auto_map, survive a round trip)."""
  out = dict(base or {
      "architectures": ["QWenLMHeadModel"],
      "auto_map": {"AutoConfig": "configuration_qwen.QWenConfig",
                   "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel"},
      "attn_dropout_prob": 0.0, "emb_dropout_prob": 0.0, "initializer_range": 0.02,
      "max_position_embeddings": 8192, "model_type": "qwen", "onnx_safe": None,
      "scale_attn_weights": True, "tokenizer_type": "QWenTokenizer", "use_cache": True,
      "use_flash_attn": "auto",
  })
  llm, vis, ad = cfg.llm, cfg.vision, cfg.adapter
  out.update({
      "bf16": dtype == "bfloat16", "fp16": dtype == "float16", "fp32": dtype == "float32",
      "hidden_size": llm.hidden, "intermediate_size": 2 * llm.mlp_dim, "kv_channels": llm.head_dim,
      "layer_norm_epsilon": llm.rms_eps, "no_bias": True, "num_attention_heads": llm.heads,
      "num_hidden_layers": llm.layers, "rotary_emb_base": _num(llm.rope_base), "rotary_pct": 1.0,
      "seq_length": llm.seq_length, "tie_word_embeddings": False, "torch_dtype": _TORCH_DTYPE[dtype],
      "use_dynamic_ntk": llm.use_dynamic_ntk, "use_logn_attn": llm.use_logn_attn,
      "vocab_size": llm.vocab_size,
  })
  base_vis = dict((base or {}).get("visual") or {})
  ours_extras = ("pos_grid", "n_queries", "adapter_heads", "ln_eps", "image_end_id", "image_pad_id")
  visual = {k: v for k, v in base_vis.items() if k not in ours_extras}
  mlp_ratio = base_vis.get("mlp_ratio")
  if mlp_ratio is None or int(vis.width * mlp_ratio) != vis.mlp_dim:
    mlp_ratio = _mlp_ratio(vis.width, vis.mlp_dim)
  visual.update({"heads": vis.heads, "image_size": vis.image_size, "image_start_id": cfg.image_start_id,
                 "layers": vis.layers, "mlp_ratio": mlp_ratio, "output_dim": llm.hidden,
                 "patch_size": vis.patch_size, "width": vis.width})
  extras = {"pos_grid": (vis.pos_grid, _RELEASED_POS_GRID),
            "n_queries": (ad.n_queries, _RELEASED_N_QUERIES),
            "adapter_heads": (ad.heads, llm.hidden // _HEAD_DIM_ADAPTER),
            "ln_eps": (vis.ln_eps, _RELEASED_LN_EPS),
            "image_end_id": (cfg.image_end_id, cfg.image_start_id + 1),
            "image_pad_id": (cfg.image_pad_id, cfg.image_start_id + 2)}
  if ad.ln_eps != vis.ln_eps:
    raise ConfigError("config field 'model.adapter.ln_eps': the HF layout has one eps for the "
                      f"vision tower and adapter, got {vis.ln_eps} and {ad.ln_eps}")
  for key, (value, default) in extras.items():
    if value != default:
      visual[key] = value
  out["visual"] = dict(sorted(visual.items()))
  return dict(sorted(out.items()))


def _num(x: float):
  return int(x) if float(x).is_integer() else x
