"""`qwenvl-jax serve --ckpt DIR`: an OpenAI-compatible HTTP API and a web chat page.

  qwenvl-jax serve --ckpt ckpts/qwen-vl-chat --port 8000
  curl localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \\
      -d '{"model": "qwen-vl-chat", "messages": [{"role": "user", "content": "Hello"}]}'

Listens on 127.0.0.1 unless --host says otherwise. Concurrent requests are decoded together
(continuous batching, --max-batch slots). SIGTERM (or Ctrl-C) finishes the requests in flight and
exits 0. See docs/serving.md.
"""


def register(subparsers):
  p = subparsers.add_parser("serve", help="OpenAI-compatible API + web chat page for a checkpoint")
  p.add_argument("--ckpt", required=True, help="Orbax checkpoint directory (or an HF directory)")
  p.add_argument("--host", default="127.0.0.1")
  p.add_argument("--port", type=int, default=8000)
  p.add_argument("--model-name", default=None,
                 help="the model id clients send (default: the checkpoint folder's name)")
  p.add_argument("--max-batch", type=int, default=16, metavar="N",
                 help="requests decoded together (slots of the batched decode loop)")
  p.add_argument("--chunk", type=int, default=8,
                 help="decode steps per device call; new requests join between calls")
  p.add_argument("--gather-ms", type=float, default=50.0, metavar="MS",
                 help="when requests end together and the engine goes idle, wait up to MS for "
                      "their clients' next requests so they prefill and decode together")
  p.add_argument("--prefix-cache-tokens", type=int, default=2048, metavar="N",
                 help="keep the keys/values of up to N prompt tokens (16-token blocks) for later "
                      "prompts that begin the same way: a shared system prompt, a chat's earlier "
                      "turns (0 = off)")
  p.add_argument("--warmup-prompt-tokens", type=int, nargs="+", default=None, metavar="N",
                 help="before listening, compile every shape for prompts of these lengths' buckets "
                      "(and --warmup-max-tokens new tokens), so no request waits for a compile")
  p.add_argument("--warmup-pictures", action="store_true",
                 help="the warm-up also compiles prompts with one picture per row (a picture chat's "
                      "first turn), in the buckets that hold one")
  p.add_argument("--warmup-max-tokens", type=int, default=512, metavar="N",
                 help="longest answer the warm-up compiles for (default 512: the request default)")
  p.add_argument("--image-root", default=None, metavar="DIR",
                 help="allow file:// image URLs under DIR (default: data: URLs only)")
  p.add_argument("--max-image-bytes", type=int, default=10 * 2**20,
                 help="largest encoded image accepted")
  from qwenvl_jax.cli.chat import add_model_flags

  add_model_flags(p)
  p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info",
                                                         "debug"))
  p.add_argument("--debug", action="store_true", help="show tracebacks")
  p.set_defaults(handler=run)


def run(args):
  import pathlib
  import signal

  from qwenvl_jax.cli import UserError
  from qwenvl_jax.cli.chat import _load

  if args.max_batch < 1 or args.chunk < 1:
    raise UserError("--max-batch and --chunk must be >= 1")
  if args.gather_ms < 0 or args.prefix_cache_tokens < 0:
    raise UserError("--gather-ms and --prefix-cache-tokens must be >= 0")
  root = None
  if args.image_root is not None:
    root = pathlib.Path(args.image_root)
    if not root.is_dir():
      raise UserError(f"--image-root {root} is not a directory")
  predictor = _load(args)

  import uvicorn
  from sse_starlette.sse import AppStatus

  from qwenvl_jax.serve.app import Server
  from qwenvl_jax.serve.messages import ServeLimits

  # sse-starlette ends open streams on SIGTERM by default; we drain them instead (uvicorn waits
  # for in-flight requests, then the app's lifespan stops the engine).
  AppStatus.disable_automatic_graceful_drain()
  name = args.model_name or pathlib.Path(args.ckpt).resolve().name
  warmup = None
  if args.warmup_pictures and not args.warmup_prompt_tokens:
    raise UserError("--warmup-pictures needs --warmup-prompt-tokens (the buckets to compile)")
  if args.warmup_prompt_tokens:
    if min(args.warmup_prompt_tokens) < 1 or args.warmup_max_tokens < 1:
      raise UserError("--warmup-prompt-tokens and --warmup-max-tokens must be >= 1")
    warmup = (args.warmup_prompt_tokens, args.warmup_max_tokens, args.warmup_pictures)
  server = Server(predictor, model_name=name, max_batch=args.max_batch, chunk=args.chunk,
                  gather_s=args.gather_ms / 1000, prefix_cache_tokens=args.prefix_cache_tokens,
                  warmup=warmup,
                  limits=ServeLimits(image_root=root, max_image_bytes=args.max_image_bytes))
  config = uvicorn.Config(server.app, host=args.host, port=args.port, log_level=args.log_level,
                          timeout_graceful_shutdown=None, lifespan="on")
  print(f"serving {name} on http://{args.host}:{args.port} (web chat at /, API at /v1)", flush=True)
  # uvicorn drains on SIGTERM/SIGINT and then re-raises the signal to the handler it found: a
  # no-op here, so a drained shutdown exits 0 instead of dying by the signal.
  signal.signal(signal.SIGTERM, lambda *_: None)
  try:
    uvicorn.Server(config).run()
  except KeyboardInterrupt:
    pass
  return 0
