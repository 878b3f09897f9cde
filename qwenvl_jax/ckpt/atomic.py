"""Atomic writes: build under a hidden temporary name, rename into place on success.

An interrupted conversion (exception, Ctrl-C, or a killed process) therefore never leaves a
directory under the destination name; at worst a `.NAME.partial-PID@HOST-*` sibling remains, which
no loader looks at and which the next write into the same destination removes (unless the process
named in it is still alive, or ran on another machine: two writers to one destination never delete
each other's work).

`check_disjoint` is the guard every converter calls first: replacing a destination that is, holds,
or lies inside one of its sources would delete the input while reading it.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import uuid


def _partial_prefix(dst: pathlib.Path) -> str:
  return f".{dst.name}.partial-"


def _owner() -> str:
  """This process as `PID@HOST` (host hashed: names stay short and free of odd characters), so a
  leftover on a shared filesystem is only judged by the machine that can see its writer."""
  import hashlib
  import socket

  return f"{os.getpid()}@{hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]}"


def _partial_name(dst: pathlib.Path) -> pathlib.Path:
  return dst.parent / f"{_partial_prefix(dst)}{_owner()}-{uuid.uuid4().hex[:8]}"


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by someone else
    return True
  return True


def remove_stale_partials(dst) -> list[pathlib.Path]:
  """Deletes `.NAME.partial-*` leftovers of killed writes into `dst`; returns what was removed.

  A leftover whose writer process is still running (same machine) is kept."""
  dst = pathlib.Path(dst).absolute()
  if not dst.parent.is_dir():
    return []
  removed = []
  prefix = _partial_prefix(dst)
  me, host = _owner(), _owner().split("@")[1]
  for p in [p for p in dst.parent.iterdir() if p.name.startswith(prefix)]:
    owner = p.name[len(prefix):].split("-")[0]
    pid, _, their_host = owner.partition("@")
    if their_host and their_host != host:
      continue  # another machine's writer: it may still be running
    if pid.isdigit() and owner != me and _alive(int(pid)):
      continue
    if p.is_dir() and not p.is_symlink():
      shutil.rmtree(p, ignore_errors=True)
    else:
      p.unlink(missing_ok=True)
    removed.append(p)
  return removed


def check_disjoint(dst, *sources, what: str = "--dst"):
  """Raises ValueError if `dst` is, contains or is inside any of `sources` (symlinks resolved)."""
  d = pathlib.Path(dst).resolve()
  for src in sources:
    if src is None:
      continue
    s = pathlib.Path(src).resolve()
    if d == s:
      raise ValueError(f"{what} {dst} is the source itself: choose another destination")
    if d in s.parents:
      raise ValueError(f"{what} {dst} contains the source {src}: replacing it would delete the source")
    if s in d.parents:
      raise ValueError(f"{what} {dst} is inside the source {src}: choose a destination outside it")


def _check_parent(dst: pathlib.Path):
  for p in [dst.parent, *dst.parent.parents]:
    if p.exists():
      if not p.is_dir():
        raise NotADirectoryError(f"cannot write {dst}: {p} is a file, not a folder")
      return


@contextlib.contextmanager
def atomic_directory(dst, overwrite: bool = False):
  """Yields a fresh temporary directory next to `dst`; renames it to `dst` if the block succeeds."""
  dst = pathlib.Path(dst).absolute()
  if dst.exists() and not overwrite:
    raise FileExistsError(f"destination {dst} already exists (use overwrite / --overwrite to replace it)")
  if dst.exists() and not dst.is_dir():
    raise FileExistsError(f"destination {dst} is a file, not a checkpoint folder: not replacing it")
  _check_parent(dst)
  tmp = _partial_name(dst)
  try:
    dst.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(dst)
    tmp.mkdir()
  except OSError as e:  # name the destination, not our hidden temporary name
    raise OSError(e.errno, f"cannot write {dst}: {e.strerror}") from None
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


@contextlib.contextmanager
def atomic_file(dst, overwrite: bool = False):
  """Yields a temporary path next to `dst` (same suffix); renamed to `dst` if the block succeeds,
  deleted if it fails, so `dst` is either the old file untouched or the complete new one."""
  dst = pathlib.Path(dst).absolute()
  if dst.exists() and not overwrite:
    raise FileExistsError(f"{dst} already exists (use --overwrite to replace it)")
  if dst.is_dir():
    raise IsADirectoryError(f"{dst} is a folder: give a file name")
  _check_parent(dst)
  tmp = dst.parent / f"{_partial_name(dst).name}{dst.suffix}"
  try:
    dst.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(dst)
    tmp.touch()
  except OSError as e:
    raise OSError(e.errno, f"cannot write {dst}: {e.strerror}") from None
  try:
    yield tmp
    os.replace(tmp, dst)
  finally:
    if tmp.exists():
      tmp.unlink()
