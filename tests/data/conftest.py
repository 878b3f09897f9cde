"""A byte-level tiktoken vocabulary (256 ranks): loads instantly, encodes anything, one token per byte."""

import base64

import pytest


@pytest.fixture(scope="session")
def byte_vocab(tmp_path_factory):
  path = tmp_path_factory.mktemp("vocab") / "bytes.tiktoken"
  path.write_text("".join(f"{base64.b64encode(bytes([i])).decode()} {i}\n" for i in range(256)))
  return str(path)
