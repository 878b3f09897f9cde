"""What the serving engine's prefix cache saves in a multi-turn chat about a picture (the web chat's
use): time to first token and the prompt tokens prefilled per turn, with and without the cache.

  python benchmarks/serve_prefix_cache.py [--ckpt DIR] [--chats 4] [--turns 4] [--max-tokens 32]

In-process, no HTTP: the `BatchEngine` `serve` runs (default: serve_load's random configs/small.py
checkpoint), fed OpenAI-style requests through the server's own request parser. Each chat has its
own 224 px picture in its first question; every turn resends the whole conversation (as an OpenAI
client does) with the previous answers: fixed sentences by default (a random model's answers are
noise whose re-encoding can be many times longer). `--own-answers text` resends the model's own
answers as text (as a client does; a trained model's answers re-encode to the tokens it generated,
so the engine's stored answer blocks are reused; a random model's byte noise does not round-trip).
`--own-answers ids` puts the generated tokens themselves in the next prompt where the re-encoded
answer was (a random model's answers as if they round-tripped: the answer-cache case at any
length). Two engines, with and without the prefix cache, run the
same chats one turn at a time, alternately; each turn's time to first token is the admission
(prefill; with the picture, the ViT too) plus the wait for the engine thread. Prints the median per
turn over the chats and the ratio.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import threading
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import serve_load  # noqa: E402  (its checkpoint, pictures and question words)

QUESTIONS = ["What is in this picture?", "Which colour is the largest part?",
             "Where is the brightest region?", "Describe the top left corner.",
             "Is there anything round?", "Count the squares."]
ANSWER = "The picture shows a few coloured squares, the largest one near the middle and a bright one left."


def ask(engine, pred, messages, max_tokens: int, splice=None):
  """-> (seconds to the first token, seconds to the end, answer ids, prompt ids as encoded, prompt
  ids as sent). `splice` = (the previous prompt as encoded, as sent, its answer's generated ids,
  its answer text): the answer's re-encoding in this prompt is replaced by the generated ids."""
  from qwenvl_jax.serve.engine import Request
  from qwenvl_jax.serve.messages import ServeLimits, parse_request

  chat = parse_request({"model": "bench", "messages": messages, "temperature": 0}, pred,
                       ServeLimits(), model_names=["bench"])
  sent = chat.ids
  if splice:
    encoded, prev_sent, generated, text = splice
    answer = pred.tokenizer.encode(text)
    end = len(encoded) + len(answer)
    assert chat.ids[:len(encoded)] == encoded and chat.ids[len(encoded):end] == answer
    sent = prev_sent + generated + chat.ids[end:]
  ids, first, done = [], [], threading.Event()

  def emit(new, reason):
    if not first:
      first.append(time.perf_counter())
    ids.extend(new)
    if reason:
      done.set()

  t0 = time.perf_counter()
  engine.submit(Request(sent, chat.images, max_tokens, emit))
  assert done.wait(600)
  return first[0] - t0, time.perf_counter() - t0, ids, chat.ids, sent


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--ckpt", default=None)
  ap.add_argument("--workdir", default="/tmp/qwenvl_serve_bench")
  ap.add_argument("--chats", type=int, default=4)
  ap.add_argument("--turns", type=int, default=4)
  ap.add_argument("--max-tokens", type=int, default=32)
  ap.add_argument("--own-answers", choices=("text", "ids"), default=None,
                  help="resend the model's answers (default: a fixed sentence)")
  args = ap.parse_args(argv)

  from qwenvl_jax.infer.api import load_predictor
  from qwenvl_jax.serve.engine import BatchEngine

  ckpt = pathlib.Path(args.ckpt) if args.ckpt else serve_load.small_checkpoint(
      pathlib.Path(args.workdir))
  pred = load_predictor(ckpt, batch_size=1)
  engines = {"prefix cache": BatchEngine(pred.generator, gather_s=0),
             "no prefix cache": BatchEngine(pred.generator, gather_s=0, prefix_cache_tokens=0)}
  ttft = {name: np.zeros((args.chats + 1, args.turns)) for name in engines}
  prompt = np.zeros((args.chats + 1, args.turns), int)
  try:
    for c in range(args.chats + 1):  # chat 0 compiles the shapes: not counted
      history = {name: [] for name in engines}
      splice = {name: None for name in engines}
      for t in range(args.turns):
        for name, engine in engines.items():
          question = [{"type": "text", "text": QUESTIONS[t % len(QUESTIONS)]}]
          if t == 0:
            question.insert(0, {"type": "image_url", "image_url": {"url": serve_load.picture_url(c)}})
          msgs = history[name] + [{"role": "user", "content": question}]
          first, _, ids, encoded, sent = ask(engine, pred, msgs, args.max_tokens, splice[name])
          answer = pred.tokenizer.decode(ids, skip_special=True).strip() if args.own_answers else ANSWER
          if args.own_answers == "ids":
            answer = f"answer {c} {t}"  # any text: its ids are replaced by the generated ones
            splice[name] = (encoded, sent, ids, answer)
          history[name] = msgs + [{"role": "assistant", "content": answer}]
          ttft[name][c, t], prompt[c, t] = first, len(sent)
  finally:
    for engine in engines.values():
      engine.close()
  names = list(engines)
  print(f"{'turn':>4} {'prompt tokens':>13} " + " ".join(f"{n + ' ms':>20}" for n in names)
        + f" {'ratio':>6}")
  for t in range(args.turns):
    med = [float(np.median(ttft[n][1:, t])) * 1e3 for n in names]
    print(f"{t + 1:>4} {int(np.median(prompt[1:, t])):>13} "
          + " ".join(f"{m:>20.1f}" for m in med) + f" {med[1] / med[0]:>6.2f}")
  print("(median time to first token over the chats; ratio = without / with the cache)")
  for name in names:
    print(f"{name}, ms per chat and turn:", np.round(ttft[name][1:] * 1e3).astype(int).tolist())
  hits = engines["prefix cache"].stats
  print(f"prefix cache: {hits.prefix_hits} of {hits.admitted} requests reused a prefix, "
        f"{hits.prefix_tokens} prompt tokens not prefilled, {hits.answer_blocks} answer blocks stored")


if __name__ == "__main__":
  main()
