"""An independent PyTorch forward of the released Qwen-VL, built from `torch.nn` primitives.

The parity oracle for the JAX model and the PyTorch side of benchmarks. Module names reproduce the
released state dict exactly (`transformer.visual.transformer.resblocks.N.attn.in_proj.weight`, ...),
so weights load with `load_state_dict(strict=True)` and nothing here shares code or conventions
with `qwenvl_jax.model` or our conversion table. Written from the released `visual.py` /
`modeling_qwen.py` behaviour:

* ViT (OpenCLIP layout, no class token): conv1 -> + bicubic-resized positional_embedding (
  `F.interpolate`) -> ln_pre -> pre-LN blocks whose `in_proj` rows are interleaved per head.
* attn_pool: `nn.MultiheadAttention` with queries + 16x16 sin-cos table, keys + that table
  bicubically resized to the patch grid, values plain; then ln_post and `x @ proj`.
* LLM: RMSNorm (fp32 statistics), c_attn (q|k|v contiguous), NeoX rotary over the full head dim
  at raw array positions, optional dynamic-NTK base and log-n query scaling, SwiGLU with w2 as the
  gate, untied lm_head. Image features overwrite the positions strictly between <img> and </img>.

API: `TorchQwenVL.from_state_dict(sd, model_cfg)`, `.forward(input_ids, images)` -> logits,
`.greedy(input_ids, images, max_new_tokens, stop_ids)` -> ids (KV cache).
"""

from __future__ import annotations

import collections
import json
import math
import pathlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qwenvl_jax.config import ModelConfig


def get_abs_pos(abs_pos: torch.Tensor, tgt_len: int) -> torch.Tensor:
  """[s*s, C] -> [t*t, C] with PyTorch bicubic (align_corners=False), in float32."""
  src = int(math.sqrt(abs_pos.size(0)))
  tgt = int(math.sqrt(tgt_len))
  if src == tgt:
    return abs_pos
  out = F.interpolate(abs_pos.float().reshape(1, src, src, -1).permute(0, 3, 1, 2), size=(tgt, tgt),
                      mode="bicubic", align_corners=False)
  return out.permute(0, 2, 3, 1).flatten(0, 2).to(abs_pos.dtype)


# --------------------------------------------------------------------------------------------
# Vision tower.

class VisualAttention(nn.Module):

  def __init__(self, width: int, heads: int):
    super().__init__()
    self.heads, self.head_dim = heads, width // heads
    self.in_proj = nn.Linear(width, 3 * width)
    self.out_proj = nn.Linear(width, width)

  def forward(self, x):
    b, n, w = x.shape
    mixed = self.in_proj(x).view(b, n, self.heads, 3 * self.head_dim)
    q, k, v = (t.transpose(1, 2) for t in mixed.split(self.head_dim, dim=-1))  # per-head q|k|v
    scores = (q / math.sqrt(self.head_dim)) @ k.transpose(-1, -2)
    out = scores.softmax(dim=-1) @ v
    return self.out_proj(out.transpose(1, 2).reshape(b, n, w))


class ResidualAttentionBlock(nn.Module):

  def __init__(self, width: int, heads: int, mlp_dim: int, eps: float):
    super().__init__()
    self.ln_1 = nn.LayerNorm(width, eps=eps)
    self.attn = VisualAttention(width, heads)
    self.ln_2 = nn.LayerNorm(width, eps=eps)
    self.mlp = nn.Sequential(collections.OrderedDict([
        ("c_fc", nn.Linear(width, mlp_dim)), ("gelu", nn.GELU()), ("c_proj", nn.Linear(mlp_dim, width))]))

  def forward(self, x):
    x = x + self.attn(self.ln_1(x))
    return x + self.mlp(self.ln_2(x))


class Resampler(nn.Module):
  """The released `attn_pool`."""

  def __init__(self, n_queries: int, embed: int, heads: int, kv_dim: int, eps: float):
    super().__init__()
    self.query = nn.Parameter(torch.zeros(n_queries, embed))
    self.pos_embed = nn.Parameter(torch.zeros(n_queries, embed), requires_grad=False)
    self.kv_proj = nn.Linear(kv_dim, embed, bias=False)
    self.attn = nn.MultiheadAttention(embed, heads)
    self.ln_q = nn.LayerNorm(embed, eps=eps)
    self.ln_kv = nn.LayerNorm(embed, eps=eps)

  def forward(self, x):
    pos = get_abs_pos(self.pos_embed, x.size(1))
    x = self.ln_kv(self.kv_proj(x)).permute(1, 0, 2)  # [N, B, E] (sequence first)
    q = self.ln_q(self.query)
    q = q.unsqueeze(1).repeat(1, x.shape[1], 1) + self.pos_embed.unsqueeze(1)
    out = self.attn(q, x + pos.unsqueeze(1), x, need_weights=False)[0]
    return out.permute(1, 0, 2)


class Transformer(nn.Module):

  def __init__(self, cfg: ModelConfig):
    super().__init__()
    v = cfg.vision
    self.resblocks = nn.ModuleList(
        ResidualAttentionBlock(v.width, v.heads, v.mlp_dim, v.ln_eps) for _ in range(v.layers))

  def forward(self, x):
    for block in self.resblocks:
      x = block(x)
    return x


class VisionTransformer(nn.Module):

  def __init__(self, cfg: ModelConfig):
    super().__init__()
    v, embed = cfg.vision, cfg.llm.hidden
    self.conv1 = nn.Conv2d(3, v.width, kernel_size=v.patch_size, stride=v.patch_size, bias=False)
    self.positional_embedding = nn.Parameter(torch.zeros(v.pos_grid ** 2, v.width))
    self.ln_pre = nn.LayerNorm(v.width, eps=v.ln_eps)
    self.transformer = Transformer(cfg)
    self.attn_pool = Resampler(cfg.adapter.n_queries, embed, cfg.adapter.heads, v.width,
                               cfg.adapter.ln_eps)
    self.ln_post = nn.LayerNorm(embed, eps=cfg.adapter.ln_eps)
    self.proj = nn.Parameter(torch.zeros(embed, embed))

  def forward(self, images):
    """images [N, 3, H, W] (normalised) -> [N, n_queries, embed]."""
    x = self.conv1(images.to(self.conv1.weight.dtype))
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    x = x + get_abs_pos(self.positional_embedding, x.size(1))
    x = self.transformer(self.ln_pre(x))
    x = self.ln_post(self.attn_pool(x))
    return x @ self.proj


# --------------------------------------------------------------------------------------------
# LLM.

class RMSNorm(nn.Module):

  def __init__(self, dim: int, eps: float):
    super().__init__()
    self.eps = eps
    self.weight = nn.Parameter(torch.ones(dim))

  def forward(self, x):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rotate_half(x):
  x1, x2 = x.chunk(2, dim=-1)
  return torch.cat((-x2, x1), dim=-1)


class QWenAttention(nn.Module):

  def __init__(self, cfg: ModelConfig):
    super().__init__()
    c = cfg.llm
    self.heads, self.head_dim = c.heads, c.head_dim
    self.c_attn = nn.Linear(c.hidden, 3 * c.heads * c.head_dim)
    self.c_proj = nn.Linear(c.heads * c.head_dim, c.hidden, bias=False)

  def forward(self, x, cos, sin, mask, q_scale, past):
    b, t, _ = x.shape
    q, k, v = (s.view(b, t, self.heads, self.head_dim)
               for s in self.c_attn(x).split(self.heads * self.head_dim, dim=2))
    q = (q.float() * cos + rotate_half(q.float()) * sin).type_as(x)
    k = (k.float() * cos + rotate_half(k.float()) * sin).type_as(x)
    if q_scale is not None:
      q = q * q_scale.type_as(q)
    if past is not None:
      k, v = torch.cat([past[0], k], dim=1), torch.cat([past[1], v], dim=1)
    present = (k, v)
    q, k_, v_ = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    scores = q @ k_.transpose(-1, -2) / math.sqrt(self.head_dim)
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    out = scores.softmax(dim=-1).type(v_.dtype) @ v_
    return self.c_proj(out.transpose(1, 2).reshape(b, t, -1)), present


class QWenMLP(nn.Module):

  def __init__(self, cfg: ModelConfig):
    super().__init__()
    c = cfg.llm
    self.w1 = nn.Linear(c.hidden, c.mlp_dim, bias=False)
    self.w2 = nn.Linear(c.hidden, c.mlp_dim, bias=False)
    self.c_proj = nn.Linear(c.mlp_dim, c.hidden, bias=False)

  def forward(self, x):
    return self.c_proj(self.w1(x) * F.silu(self.w2(x)))


class QWenBlock(nn.Module):

  def __init__(self, cfg: ModelConfig):
    super().__init__()
    self.ln_1 = RMSNorm(cfg.llm.hidden, cfg.llm.rms_eps)
    self.attn = QWenAttention(cfg)
    self.ln_2 = RMSNorm(cfg.llm.hidden, cfg.llm.rms_eps)
    self.mlp = QWenMLP(cfg)

  def forward(self, x, cos, sin, mask, q_scale, past):
    h, present = self.attn(self.ln_1(x), cos, sin, mask, q_scale, past)
    x = x + h
    return x + self.mlp(self.ln_2(x)), present


class QWenModel(nn.Module):

  def __init__(self, cfg: ModelConfig):
    super().__init__()
    self.wte = nn.Embedding(cfg.llm.vocab_size, cfg.llm.hidden)
    self.h = nn.ModuleList(QWenBlock(cfg) for _ in range(cfg.llm.layers))
    self.ln_f = RMSNorm(cfg.llm.hidden, cfg.llm.rms_eps)
    self.visual = VisionTransformer(cfg)


class TorchQwenVL(nn.Module):
  """The whole released model; see the module docstring."""

  def __init__(self, cfg: ModelConfig):
    super().__init__()
    self.cfg = cfg
    self.transformer = QWenModel(cfg)
    self.lm_head = nn.Linear(cfg.llm.hidden, cfg.llm.vocab_size, bias=False)

  @classmethod
  def from_state_dict(cls, sd, model_cfg: ModelConfig, dtype=torch.float32) -> "TorchQwenVL":
    """`sd`: HF key -> torch tensor (or numpy array). Strict: every key must match."""
    sd = {k: (torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v)
          for k, v in sd.items() if not k.endswith(".rotary_emb.inv_freq")}
    with torch.device("meta"):
      model = cls(model_cfg)
    model.load_state_dict(sd, strict=True, assign=True)
    return model.to(dtype).eval()

  @classmethod
  def from_hf_dir(cls, path, model_cfg: ModelConfig | None = None, dtype=torch.float32) -> "TorchQwenVL":
    """Loads a (small) HF checkpoint dir whole: config.json + safetensors / bin shards."""
    from qwenvl_jax.ckpt.hf_io import HFWeights, numpy_to_torch
    from qwenvl_jax.ckpt.hf_layout import hf_config_to_model_config

    path = pathlib.Path(path)
    if model_cfg is None:
      model_cfg = hf_config_to_model_config(json.loads((path / "config.json").read_text()))
    weights = HFWeights(path)
    sd = {k: numpy_to_torch(weights.read(k)).float() for k in weights.keys()}
    weights.close()
    return cls.from_state_dict(sd, model_cfg, dtype)

  # ------------------------------------------------------------------------------------------

  def encode_images(self, images) -> torch.Tensor:
    """images [N, H, W, 3] (normalised, channels last) -> [N, n_queries, hidden]."""
    images = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images)
    return self.transformer.visual(images.permute(0, 3, 1, 2))

  def _embed(self, ids: torch.Tensor, images, strict: bool = True) -> torch.Tensor:
    x = self.transformer.wte(ids)
    start, end = self.cfg.image_start_id, self.cfg.image_end_id
    if images is None:
      if strict and (ids == start).any():
        raise ValueError("the tokens contain <img> spans but no images were given")
      return x
    images = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images)
    b, m = images.shape[:2]
    feats = self.encode_images(images.reshape(b * m, *images.shape[2:])).reshape(b, m, -1, x.shape[-1])
    x = x.clone()
    for row in range(ids.shape[0]):
      starts = torch.nonzero(ids[row] == start).flatten().tolist()
      ends = torch.nonzero(ids[row] == end).flatten().tolist()
      if len(starts) != len(ends) or len(starts) > m:
        raise ValueError(f"row {row}: {len(starts)} <img> / {len(ends)} </img> tags for {m} images")
      for j, (a, e) in enumerate(zip(starts, ends)):
        x[row, a + 1:e] = feats[row, j].to(x.dtype)
    return x

  def _rope(self, positions: torch.Tensor, alpha: float):
    hd = self.cfg.llm.head_dim
    base = self.cfg.llm.rope_base * alpha ** (hd / (hd - 2))
    inv_freq = 1.0 / (base ** (torch.arange(0, hd, 2).float() / hd))
    freqs = torch.outer(positions.float(), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)[None, :, None, :]  # [1, T, 1, hd]
    return emb.cos(), emb.sin()

  def _logn(self, positions: torch.Tensor):
    n = self.cfg.llm.seq_length
    p1 = positions.double() + 1
    scale = torch.where(p1 > n, torch.log(p1) / math.log(n), torch.ones_like(p1))
    return scale.float()[None, :, None, None]

  def _run(self, ids, images, attention_mask, past, rope_alpha, logn):
    """One pass over new tokens `ids` [B, T] after `past` (list of (k, v) or None)."""
    b, t = ids.shape
    offset = 0 if past is None else past[0][0].shape[1]
    x = self._embed(ids, images, strict=past is None)  # a decoded <img> is just a token
    positions = torch.arange(offset, offset + t)
    cos, sin = self._rope(positions, rope_alpha)
    q_scale = self._logn(positions) if logn else None
    total = offset + t
    causal = torch.ones(total, total, dtype=torch.bool).tril()[offset:total]  # [T, S]
    mask = causal[None, None]
    if attention_mask is not None:  # [B, S]: 1 = token, 0 = padding (keys only, as the reference)
      mask = mask & attention_mask[:, None, None, :total].bool()
    presents = []
    for i, block in enumerate(self.transformer.h):
      x, present = block(x, cos, sin, mask, q_scale, None if past is None else past[i])
      presents.append(present)
    return self.lm_head(self.transformer.ln_f(x)), presents

  @torch.no_grad()
  def forward(self, input_ids, images=None, *, attention_mask=None, rope_alpha: float = 1.0,
              logn: bool = False) -> torch.Tensor:
    """input_ids [B, T], images [B, M, H, W, 3] float32 normalised or None -> logits [B, T, V].

    Positions are raw indices 0..T-1 (as the reference); `attention_mask` masks padding keys.
    """
    ids = torch.as_tensor(np.asarray(input_ids) if not torch.is_tensor(input_ids) else input_ids).long()
    am = None if attention_mask is None else torch.as_tensor(np.asarray(attention_mask))
    return self._run(ids, images, am, None, rope_alpha, logn)[0]

  def ntk_alpha(self, context_len: int) -> float:
    """The reference's dynamic-NTK alpha for a first pass over `context_len` tokens."""
    if not self.cfg.llm.use_dynamic_ntk:
      return 1.0
    ratio = math.log(context_len / self.cfg.llm.seq_length, 2) + 1
    return float(max(2 ** math.ceil(ratio) - 1, 1))

  @torch.no_grad()
  def greedy(self, input_ids, images=None, max_new_tokens: int = 16, stop_ids=(), *,
             attention_mask=None, pad_id: int | None = None) -> torch.Tensor:
    """Greedy decoding with a KV cache, inference semantics of the reference (NTK alpha fixed at
    the first pass, log-n scaling when enabled). Returns [B, T + steps]; finished rows get
    `pad_id` (default: the first stop id, else 0)."""
    ids = torch.as_tensor(np.asarray(input_ids) if not torch.is_tensor(input_ids) else input_ids).long()
    am = None if attention_mask is None else torch.as_tensor(np.asarray(attention_mask)).long()
    stop = torch.tensor(list(stop_ids), dtype=torch.long)
    pad = pad_id if pad_id is not None else (int(stop[0]) if len(stop) else 0)
    alpha = self.ntk_alpha(ids.shape[1])
    logn = self.cfg.llm.use_logn_attn
    logits, past = self._run(ids, images, am, None, alpha, logn)
    out, done = ids, torch.zeros(ids.shape[0], dtype=torch.bool)
    for _ in range(max_new_tokens):
      nxt = logits[:, -1].argmax(-1)
      nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
      out = torch.cat([out, nxt[:, None]], dim=1)
      done = done | torch.isin(nxt, stop)
      if bool(done.all()):
        break
      if am is not None:
        am = torch.cat([am, torch.ones_like(am[:, :1])], dim=1)
      logits, past = self._run(nxt[:, None], None, am, past, alpha, logn)
    return out
