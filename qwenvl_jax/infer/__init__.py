"""Inference: KV-cache generation, option scoring, multi-image chat, grounding boxes drawn.

  generate.py  bucketed, jitted prefill + while-loop decode; sampling; stops; NTK / log-n; mesh
  score.py     mean CE of candidate continuations (multiple choice)
  api.py       load_model / load_predictor -> Predictor.generate / score_options / chat
  chat.py      ChatML rounds with "Picture N:" numbering kept across turns; history helpers
  draw.py      the answer's <ref>/<box> drawn on the picture they belong to

Heavy imports stay in the submodules: `from qwenvl_jax.infer.api import load_predictor`.
"""
