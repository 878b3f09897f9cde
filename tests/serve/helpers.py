"""Engine test helpers: requests submitted together, and the same requests decoded alone."""

import threading

from qwenvl_jax.infer.generate import SamplingConfig
from qwenvl_jax.serve.engine import Request


def burst(engine, prompts, images=None, max_tokens=6):
  """Submits all requests at once (`submit_all`: they join at the same step boundary); -> their
  tokens."""
  images = images or [() for _ in prompts]
  outs = [[] for _ in prompts]
  done = [threading.Event() for _ in prompts]
  reqs = []
  for k, (ids, imgs) in enumerate(zip(prompts, images)):

    def emit(new, reason, k=k):
      outs[k].extend(new)
      if reason:
        done[k].set()

    reqs.append(Request(ids, imgs, max_tokens, emit))
  engine.submit_all(reqs)
  assert all(e.wait(300) for e in done)
  return outs


def alone(gen, prompts, images=None, max_tokens=6):
  """Each request prefilled and decoded greedily by itself (`Generator`, no engine)."""
  images = images or [() for _ in prompts]
  greedy = SamplingConfig(temperature=0, max_new_tokens=max_tokens)
  return [gen.generate_ids([p], [list(i)], sampling=greedy)[0] for p, i in zip(prompts, images)]
