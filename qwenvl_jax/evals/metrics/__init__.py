"""Benchmark metrics as pure functions on strings and numbers (no model, no jax).

One module per metric (`vqa_accuracy`, `exact_match`, `anls`, `relaxed_accuracy`, `cider` with
`ptb_tokenize`, `grounding`, `multiple_choice`, `mme`); each returns a `MetricResult` naming the variant
that produced it. Variants exist where the paper's evaluation code departs from a metric's published
definition; the first listed in a module's `VARIANTS` is its default. Import from the modules
themselves: this package deliberately re-exports nothing, so `metrics.anls` is always the module.
"""
