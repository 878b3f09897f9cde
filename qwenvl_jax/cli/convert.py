"""`qwenvl-jax convert`: HF/PyTorch checkpoints <-> our Orbax checkpoints.

  qwenvl-jax convert --from hf --src HF_DIR --dst CKPT [--config qwen_vl_7b]
  qwenvl-jax convert --to hf --src CKPT_OR_WORKDIR --dst HF_DIR [--dtype bf16|fp32] [--format bin]
  qwenvl-jax convert --to hf --src LORA_WORKDIR --dst HF_DIR --merge-lora   (merged full weights)
  qwenvl-jax convert --to peft --src LORA_WORKDIR --dst ADAPTER_DIR        (HF PEFT adapter)
  qwenvl-jax convert --from openclip,qwen-llm --src CLIP_FILE --src QWEN_DIR --dst CKPT
      --config qwen_vl_7b    (stage-1 init: the adapter, and any part not given, is fresh)
"""

_SOURCES = ("hf", "openclip", "qwen-llm")


def register(subparsers):
  import argparse

  p = subparsers.add_parser("convert", help="convert checkpoints between HF/PyTorch and Orbax",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  direction = p.add_mutually_exclusive_group(required=True)
  direction.add_argument("--from", dest="source",
                         help="hf, openclip, qwen-llm, or openclip,qwen-llm (stage-1 init; the "
                              "parts not given, and always the adapter, are freshly initialised)")
  direction.add_argument("--to", dest="target", choices=("hf", "peft"),
                         help="export to the HF layout, or a LoRA run's adapter to HF PEFT")
  p.add_argument("--src", action="append", required=True,
                 help="source path; repeat once per --from item, in the same order")
  p.add_argument("--dst", required=True,
                 help="destination directory (must not exist, unless --overwrite; never the source, a "
                      "folder holding it, or a folder inside it)")
  p.add_argument("--config", help="model config (file or name, e.g. qwen_vl_7b): runtime fields for "
                                  "--from hf, the whole target model for openclip / qwen-llm")
  p.add_argument("--param-dtype", help="dtype of the stored Orbax arrays (default: the config's)")
  p.add_argument("--dtype", help="--to hf: tensor dtype (bf16, fp16, fp32; default: the source's)")
  p.add_argument("--format", default="safetensors", choices=("safetensors", "bin"),
                 help="--to hf: weight file format")
  p.add_argument("--shard-size", default="2GB", help="--to hf: max bytes per shard (e.g. 2GB, 500MB)")
  p.add_argument("--tokenizer", help="tokenizer file to include (default: found in the source)")
  p.add_argument("--merge-lora", action="store_true",
                 help="--to hf from a LoRA / Q-LoRA run: fold the LoRA factors into the weights")
  p.add_argument("--seed", type=int, default=0, help="seed of freshly initialised parameters")
  p.add_argument("--overwrite", action="store_true",
                 help="replace an existing destination (only once the new one is complete)")
  p.add_argument("--quiet", action="store_true", help="no progress bars")
  p.add_argument("--debug", action="store_true", help="show tracebacks")
  p.set_defaults(handler=run)


def parse_size(text: str) -> int:
  units = {"": 1, "B": 1, "KB": 10 ** 3, "MB": 10 ** 6, "GB": 10 ** 9, "KIB": 1 << 10,
           "MIB": 1 << 20, "GIB": 1 << 30}
  t = text.strip().upper()
  num = t.rstrip("KMGIB")
  unit = t[len(num):]
  if not num or unit not in units:
    raise ValueError(f"--shard-size {text!r}: expected a number with an optional unit (e.g. 2GB)")
  return int(float(num) * units[unit])


def run(args):
  from qwenvl_jax.cli import UserError

  try:
    return _run(args)
  except FileExistsError as e:  # an existing --dst: a user error, not a crash
    raise UserError(str(e)) from None


def _refuse_lora_run(src):
  from qwenvl_jax.cli import UserError
  from qwenvl_jax.ckpt.lora_run import is_lora_run

  if is_lora_run(src):
    raise UserError(f"{src} is a LoRA run: pass --merge-lora for full weights, or use --to peft")


def _merged_to_hf(args):
  from qwenvl_jax.train import finetune

  out = finetune.write_merged_hf(args.src[0], args.dst, overwrite=args.overwrite,
                                 tokenizer_file=args.tokenizer, dtype=args.dtype,
                                 shard_size=parse_size(args.shard_size), fmt=args.format,
                                 progress=not args.quiet)
  print(f"wrote {out}")
  return 0


def _run(args):
  from qwenvl_jax.ckpt.atomic import check_disjoint
  from qwenvl_jax.cli import UserError

  check_disjoint(args.dst, *args.src, args.tokenizer)  # before loading anything (the API checks too)
  progress = not args.quiet
  cfg = None
  if args.config:
    from qwenvl_jax.config import load_model_config

    cfg = load_model_config(args.config)
  if args.target == "peft":
    from qwenvl_jax.train import finetune

    if len(args.src) != 1:
      raise UserError("--to peft takes exactly one --src")
    print(f"wrote {finetune.export_peft(args.src[0], args.dst, overwrite=args.overwrite)}")
    return 0
  if args.target == "hf":
    from qwenvl_jax.ckpt.convert import convert_orbax_to_hf

    if len(args.src) != 1:
      raise UserError("--to hf takes exactly one --src")
    if args.merge_lora:
      return _merged_to_hf(args)
    _refuse_lora_run(args.src[0])
    out = convert_orbax_to_hf(args.src[0], args.dst, dtype=args.dtype,
                              shard_size=parse_size(args.shard_size), fmt=args.format,
                              overwrite=args.overwrite, progress=progress)
    print(f"wrote {out}")
    return 0
  sources = [s.strip() for s in args.source.split(",") if s.strip()]
  unknown = [s for s in sources if s not in _SOURCES]
  if unknown or not sources:
    raise UserError(f"--from {args.source!r}: expected hf, openclip, qwen-llm or openclip,qwen-llm")
  if len(args.src) != len(sources):
    raise UserError(f"--from {args.source} needs {len(sources)} --src path(s), got {len(args.src)}")
  paths = dict(zip(sources, args.src))
  if "hf" in paths:
    if len(sources) != 1:
      raise UserError("--from hf cannot be combined with other sources")
    from qwenvl_jax.ckpt.convert import convert_hf_to_orbax

    out = convert_hf_to_orbax(paths["hf"], args.dst, cfg, param_dtype=args.param_dtype,
                              tokenizer_file=args.tokenizer, overwrite=args.overwrite,
                              progress=progress)
    print(f"wrote {out}")
    return 0
  if cfg is None:
    raise UserError("--from openclip / qwen-llm needs --config (the target model)")
  from qwenvl_jax.ckpt.convert import convert_stage1

  report = convert_stage1(args.dst, cfg, openclip=paths.get("openclip"),
                          qwen_llm=paths.get("qwen-llm"), seed=args.seed,
                          param_dtype=args.param_dtype, tokenizer_file=args.tokenizer,
                          overwrite=args.overwrite, progress=progress)
  for name, label in (("from_openclip", "from OpenCLIP"), ("from_qwen_llm", "from Qwen LLM"),
                      ("fresh", "freshly initialised")):
    print(f"{label}: {len(report[name])} arrays")
  if report["dropped"]:
    print(f"dropped (unused by Qwen-VL): {', '.join(report['dropped'])}")
  print(f"wrote {args.dst}")
  return 0
