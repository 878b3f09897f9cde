"""Evaluation on the paper's benchmarks: metrics, task registry, runner.

Model-independent: `metrics` are pure functions on strings and numbers, `tasks` read each benchmark's
published annotation files and build the paper's prompts, `runner.evaluate` drives any `predict_fn`
(and `score_fn` for likelihood tasks) and writes resumable predictions + metrics. The model side plugs
in through those two callables only.
"""
