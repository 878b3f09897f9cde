"""Serving: an OpenAI-compatible HTTP API with continuous batching, and a web chat page.

  qwenvl-jax serve --ckpt DIR [--port 8000]           (see docs/serving.md)

`engine.BatchEngine` batches concurrent requests on the device; `messages` turns OpenAI chat bodies
into prompts; `app.Server` is the Starlette app.
"""
