"""int8 (or int4 / nf4) weights vs bf16: weight bytes, top-1 agreement and mean KL on held-out text.

  python benchmarks/quant_agreement.py --ckpt DIR [--tokenizer FILE] --heldout a.jsonl [b.jsonl ...]
                                       [--n 200] [--fmt int8] [--json out.json]

Both models load through `infer.api.load_model(dtype="bfloat16")`, the quantised one with
`quantize=FMT` (what `--quantize` does in serve / chat / eval / generate). For each of the first
`--n` held-out records (the synthetic datasets' JSONL: image path + caption / question-answer
texts) the prompt "<img>..</img> + the record's texts" is run teacher-forced through both models;
every text position's next-token distribution is compared: top-1 agreement (argmax equal) and
KL(bf16 || quantised), averaged over all positions and reported per record too.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from qwenvl_jax.infer.api import load_model
from qwenvl_jax.model.quant import weight_bytes
from qwenvl_jax.text import interface


def record_text(rec: dict) -> str:
  parts = [rec.get("caption") or ""]
  parts += [f"Question: {qa['question']} Answer: {qa['answer']}" for qa in rec.get("qa", [])]
  return " ".join(p for p in parts if p)


def load_records(paths, n: int) -> list[tuple[pathlib.Path, dict]]:
  per_file = [[(pathlib.Path(p), json.loads(line)) for line in open(p) if line.strip()]
              for p in paths]
  out, i = [], 0
  while len(out) < n and any(i < len(f) for f in per_file):  # interleave the files
    out += [f[i] for f in per_file if i < len(f)]
    i += 1
  return out[:n]


def kernel_bytes(model) -> int:
  """Bytes of the LLM / ViT linear weights (what quantisation replaces)."""
  state = nnx.state(model)
  total = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    key = jax.tree_util.keystr(path)
    if ("llm" in key or "visual" in key) and ("kernel" in key) and hasattr(leaf, "dtype"):
      total += int(np.prod(leaf.shape)) * jnp.dtype(leaf.dtype).itemsize
  return total


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--ckpt", required=True)
  ap.add_argument("--tokenizer", default=None)
  ap.add_argument("--heldout", nargs="+", required=True)
  ap.add_argument("--n", type=int, default=200)
  ap.add_argument("--fmt", default="int8")
  ap.add_argument("--json", default=None)
  args = ap.parse_args(argv)

  full, cfg, tok = load_model(args.ckpt, tokenizer=args.tokenizer)
  ref, _, _ = load_model(args.ckpt, tokenizer=args.tokenizer, dtype="bfloat16")
  quant, _, _ = load_model(args.ckpt, tokenizer=args.tokenizer, dtype="bfloat16",
                           quantize=args.fmt)
  sizes = {"checkpoint_dtype": cfg.param_dtype, "all_bytes_checkpoint": weight_bytes(full),
           "all_bytes_bf16": weight_bytes(ref), f"all_bytes_{args.fmt}": weight_bytes(quant),
           "linear_bytes_bf16": kernel_bytes(ref), f"linear_bytes_{args.fmt}": kernel_bytes(quant)}
  del full

  from qwenvl_jax.data.preprocess import load_and_preprocess

  size = cfg.vision.image_size
  forward = lambda g: jax.jit(lambda state, ids, images: jax.nn.log_softmax(
      nnx.merge(g, state)(ids, images).astype(jnp.float32), axis=-1))
  g_ref, s_ref = nnx.split(ref)
  g_q, s_q = nnx.split(quant)
  f_ref, f_q = forward(g_ref), forward(g_q)
  agree, kls, per_record = 0, [], []
  records = load_records(args.heldout, args.n)
  length = None
  encoded = []
  for path, rec in records:
    enc = interface.encode_segments(tok, [{"image": rec["image"]}, {"text": record_text(rec)}],
                                    n_image_tokens=cfg.tokens_per_image)
    encoded.append((enc.ids, load_and_preprocess(path.parent / rec["image"], size)))
  length = max(len(ids) for ids, _ in encoded)
  for ids, image in encoded:
    text_start = cfg.tokens_per_image + 2
    arr = np.full((1, length), tok.pad_id, np.int32)  # right-padded: causal, pads never attended
    arr[0, :len(ids)] = ids
    lp_ref = np.asarray(f_ref(s_ref, arr, image[None, None]))[0, text_start - 1:len(ids) - 1]
    lp_q = np.asarray(f_q(s_q, arr, image[None, None]))[0, text_start - 1:len(ids) - 1]
    same = lp_ref.argmax(-1) == lp_q.argmax(-1)
    kl = (np.exp(lp_ref) * (lp_ref - lp_q)).sum(-1)
    agree += int(same.sum())
    kls.extend(kl.tolist())
    per_record.append(float(same.mean()))
  n_pos = len(kls)
  result = {"ckpt": args.ckpt, "format": args.fmt, "records": len(records), "positions": n_pos,
            "top1_agreement": round(agree / n_pos, 5), "mean_kl": float(np.mean(kls)),
            "max_kl": float(np.max(kls)),
            "records_all_agree": int(sum(a == 1.0 for a in per_record)), **sizes}
  print(json.dumps(result, indent=2))
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
  main()
