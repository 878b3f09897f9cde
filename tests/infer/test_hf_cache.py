"""An HF directory given to chat / load_model is converted into a cache keyed by its files, not
beside it; a changed HF folder is converted again and its old entry removed."""

import os

from qwenvl_jax.cli import build_parser
from qwenvl_jax.infer import api


def _entries(root):
  d = root / "converted"
  return sorted(p.name for p in d.iterdir() if not p.name.startswith(".")) if d.is_dir() else []


def test_conversion_is_cached_by_file_identity(hf_dir, tmp_path, monkeypatch):
  monkeypatch.setenv("QWENVL_JAX_CACHE", str(tmp_path / "cache"))
  siblings = sorted(p.name for p in hf_dir.parent.iterdir())
  first = api._convert_hf_cached(hf_dir, None)
  assert first == api.converted_cache_dir(hf_dir) and first.parent == tmp_path / "cache" / "converted"
  assert (first / "model_config.json").is_file()
  assert sorted(p.name for p in hf_dir.parent.iterdir()) == siblings  # nothing written next to it
  stamp = (first / "model_config.json").stat().st_mtime_ns
  assert api._convert_hf_cached(hf_dir, None) == first  # reused, not rewritten
  assert (first / "model_config.json").stat().st_mtime_ns == stamp

  cfg = hf_dir / "config.json"  # the HF files change (same bytes, new mtime: a re-download)
  os.utime(cfg, ns=(cfg.stat().st_atime_ns, cfg.stat().st_mtime_ns + 10 ** 9))
  second = api._convert_hf_cached(hf_dir, None)
  assert second != first and _entries(tmp_path / "cache") == [second.name]  # stale entry removed


def test_cache_location_follows_xdg_and_is_documented(monkeypatch, tmp_path):
  monkeypatch.delenv("QWENVL_JAX_CACHE", raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert api.cache_root() == tmp_path / "xdg" / "qwenvl-jax"
  sub = next(a for a in build_parser()._actions if a.dest == "command").choices["chat"]
  text = " ".join(sub.format_help().split())
  assert "$XDG_CACHE_HOME/qwenvl-jax" in text and "QWENVL_JAX_CACHE" in text
