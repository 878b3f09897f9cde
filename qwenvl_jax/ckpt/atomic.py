"""Atomic directory writes: build under a hidden temporary name, rename into place on success.

An interrupted conversion (exception, Ctrl-C, or a killed process) therefore never leaves a
directory under the destination name; at worst a `.NAME.partial-*` sibling remains, which no
loader looks at.
"""

from __future__ import annotations

import contextlib
import pathlib
import shutil
import uuid


def _partial_name(dst: pathlib.Path) -> pathlib.Path:
  return dst.parent / f".{dst.name}.partial-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def atomic_directory(dst, overwrite: bool = False):
  """Yields a fresh temporary directory next to `dst`; renames it to `dst` if the block succeeds."""
  dst = pathlib.Path(dst).absolute()
  if dst.exists() and not overwrite:
    raise FileExistsError(f"destination {dst} already exists (use overwrite / --overwrite to replace it)")
  dst.parent.mkdir(parents=True, exist_ok=True)
  tmp = _partial_name(dst)
  tmp.mkdir()
  try:
    yield tmp
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  if dst.exists():
    old = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:8]}"
    dst.rename(old)
    tmp.rename(dst)
    shutil.rmtree(old, ignore_errors=True)
  else:
    tmp.rename(dst)
