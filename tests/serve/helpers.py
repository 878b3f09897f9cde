"""Engine test helpers: requests submitted together, and the same requests decoded alone."""

import threading

from qwenvl_jax.infer.generate import SamplingConfig
from qwenvl_jax.serve.engine import Request


def _each(value, n):
  return list(value) if isinstance(value, (list, tuple)) else [value] * n


def burst(engine, prompts, images=None, max_tokens=6):
  """Submits all requests at once (`submit_all`: they join at the same step boundary); -> their
  tokens. `max_tokens`: one for all, or one per request."""
  images = images or [() for _ in prompts]
  outs = [[] for _ in prompts]
  done = [threading.Event() for _ in prompts]
  reqs = []
  for k, (ids, imgs, n) in enumerate(zip(prompts, images, _each(max_tokens, len(prompts)))):

    def emit(new, reason, k=k):
      outs[k].extend(new)
      if reason:
        done[k].set()

    reqs.append(Request(ids, imgs, n, emit))
  engine.submit_all(reqs)
  assert all(e.wait(300) for e in done)
  return outs


def alone(gen, prompts, images=None, max_tokens=6):
  """Each request prefilled and decoded greedily by itself (`Generator`, no engine)."""
  images = images or [() for _ in prompts]
  greedy = lambda n: SamplingConfig(temperature=0, max_new_tokens=n)
  return [gen.generate_ids([p], [list(i)], sampling=greedy(n))[0]
          for p, i, n in zip(prompts, images, _each(max_tokens, len(prompts)))]
