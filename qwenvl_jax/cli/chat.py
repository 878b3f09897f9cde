"""`qwenvl-jax chat --ckpt DIR`: talk to a checkpoint about images in the terminal.

  qwenvl-jax chat --ckpt ckpts/qwen-vl-chat                        interactive
  qwenvl-jax chat --ckpt DIR --image a.jpg --prompt "Where is the dog?"   one answer, then exit

Interactive commands: `/image PATH` attaches a picture to your next message (several allowed),
`/history` shows the conversation, `/clear` starts over, `/quit` (or Ctrl-D) leaves. Pictures are
numbered across the whole conversation. When an answer holds boxes they are drawn on their picture
and the PNG path is printed.

An HF directory (config.json + weights) is converted once into a cache, never next to it:
$QWENVL_JAX_CACHE, else $XDG_CACHE_HOME/qwenvl-jax, else ~/.cache/qwenvl-jax, under
converted/<folder>-<path hash>-<files hash>. The files hash covers every file's name, size, mtime
and inode, so a changed HF folder is converted again (its older entry is removed); deleting the
cache is always safe.
"""

HELP = "commands: /image PATH (attach a picture to the next message), /history, /clear, /quit"


def register(subparsers):
  import argparse

  p = subparsers.add_parser("chat", help="chat with a checkpoint about images (interactive or one-shot)",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--ckpt", required=True,
                 help="Orbax checkpoint directory, or an HF directory (converted once into the cache: "
                      "see above)")
  p.add_argument("--image", action="append", default=[], metavar="PATH",
                 help="picture for the first message (repeatable)")
  p.add_argument("--prompt", help="ask this once, print the answer and exit")
  p.add_argument("--max-new-tokens", type=int, default=512)
  p.add_argument("--out", default="chat_outputs", help="where drawn-box PNGs go")
  p.add_argument("--greedy", action="store_true", help="greedy decoding instead of top-p 0.3")
  p.add_argument("--seed", type=int, default=0)
  add_model_flags(p)
  p.add_argument("--debug", action="store_true", help="show tracebacks")
  p.set_defaults(handler=run)


def add_model_flags(p):
  """How a model is loaded, the same for chat, serve and generate (`_load`): dtype, quantisation,
  a LoRA run's factors merged or apart, tensor parallelism and the longest prompt."""
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                 help="compute/parameter dtype (default: the checkpoint's)")
  p.add_argument("--quantize", choices=("int8", "int4", "nf4"), default=None,
                 help="weight-only quantisation of the LLM/ViT linear kernels (int8: per-channel)")
  p.add_argument("--merge-lora", action="store_true",
                 help="a LoRA run (--ckpt its workdir): fold the factors into the weights (faster "
                      "decoding; default: kept apart, as trained)")
  p.add_argument("--tensor-parallel", type=int, default=1, metavar="N",
                 help="shard the model over N devices (tensor parallel)")
  p.add_argument("--max-window", type=int, default=None, help="longest prompt in tokens")


def _check_image(path):
  from qwenvl_jax.cli import UserError
  from qwenvl_jax.data.preprocess import CorruptImageError, load_image

  try:
    load_image(path)
  except CorruptImageError as e:
    raise UserError(str(e)) from None


def _load(args):
  from qwenvl_jax.cli import UserError
  from qwenvl_jax.infer.api import load_predictor

  mesh = None
  if args.tensor_parallel > 1:
    from qwenvl_jax.config import MeshConfig
    from qwenvl_jax.sharding import create_mesh

    mesh = create_mesh(MeshConfig(data=-1, fsdp=1, tensor=args.tensor_parallel))
  _say_hf_cache(args.ckpt)
  try:
    return load_predictor(args.ckpt, mesh=mesh, dtype=args.dtype, max_window=args.max_window,
                          batch_size=1, quantize=getattr(args, "quantize", None),
                          merge_lora=getattr(args, "merge_lora", False))
  except FileNotFoundError as e:
    raise UserError(str(e)) from None
  except Exception as e:  # config/tensor mismatches surface from several libraries
    if args.debug:
      raise
    raise UserError(f"cannot load checkpoint {args.ckpt}: {type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else ''}") from None


def _say_hf_cache(ckpt):
  """Tells where an HF directory's conversion lives (and that it is being made), before loading."""
  import pathlib
  import sys

  from qwenvl_jax.infer.api import converted_cache_dir, is_hf_dir

  path = pathlib.Path(ckpt)
  if path.is_dir() and is_hf_dir(path):
    target = converted_cache_dir(path)
    state = "using the converted copy" if target.exists() else "converting it once into"
    print(f"{path} is an HF checkpoint: {state} {target}", file=sys.stderr, flush=True)


class Session:
  """One conversation: history, pictures waiting for the next message, drawing."""

  def __init__(self, predictor, args):
    import dataclasses

    from qwenvl_jax.infer.generate import CHAT_DEFAULTS

    self.pred, self.args = predictor, args
    self.sampling = dataclasses.replace(CHAT_DEFAULTS, max_new_tokens=args.max_new_tokens,
                                        temperature=0.0 if args.greedy else 1.0, seed=args.seed)
    self.history, self.pending, self.turns = [], [], 0

  def next_picture(self) -> int:
    from qwenvl_jax.infer.chat import history_images

    return len(history_images(self.history)) + len(self.pending) + 1

  def attach(self, path: str):
    _check_image(path)
    print(f"Picture {self.next_picture()}: {path} (goes with your next message)", flush=True)
    self.pending.append(path)

  def ask(self, text: str) -> str:
    import dataclasses

    from qwenvl_jax.infer.chat import chat, history_images
    from qwenvl_jax.infer.draw import draw_answer

    self.turns += 1
    sampling = dataclasses.replace(self.sampling, seed=self.sampling.seed + self.turns)
    answer, self.history = chat(self.pred, text, self.history, self.pending, sampling=sampling)
    self.pending = []
    print(f"Assistant: {answer}", flush=True)
    for path in draw_answer(answer, history_images(self.history), self.args.out,
                            stem=f"turn{self.turns}"):
      print(f"Boxes drawn: {path}", flush=True)
    return answer


def _interactive(session) -> int:
  from qwenvl_jax.cli import UserError
  from qwenvl_jax.infer.chat import format_history

  print(HELP, flush=True)
  while True:
    try:
      line = input("User> ")
    except EOFError:
      print()
      return 0
    line = line.strip()
    if not line:
      continue
    cmd, _, rest = line.partition(" ")
    try:
      if cmd in ("/quit", "/exit"):
        return 0
      if cmd == "/image":
        if not rest.strip():
          raise UserError("usage: /image PATH")
        session.attach(rest.strip())
      elif cmd == "/history":
        print(format_history(session.history) or "(empty)", flush=True)
      elif cmd == "/clear":
        session.history, session.pending = [], []
        print("(conversation cleared)", flush=True)
      elif cmd.startswith("/") and cmd[1:].isalpha():
        print(f"unknown command {cmd}; {HELP}", flush=True)
      else:
        session.ask(line)
    except (UserError, ValueError, FileNotFoundError) as e:  # one line, keep the conversation
      from qwenvl_jax.infer.generate import ContextLengthError

      hint = " (/clear starts a new conversation)" if isinstance(e, ContextLengthError) else ""
      print(f"error: {e}{hint}", flush=True)


def run(args):
  from qwenvl_jax.cli import UserError

  if args.max_new_tokens < 1:
    raise UserError("--max-new-tokens must be >= 1")
  for path in args.image:
    _check_image(path)
  session = Session(_load(args), args)
  for path in args.image:
    session.attach(path)
  if args.prompt is not None:
    try:
      session.ask(args.prompt)
    except ValueError as e:  # e.g. the prompt does not fit the context window
      raise UserError(str(e)) from None
    return 0
  return _interactive(session)
