"""Every subcommand takes --debug; without it a known error is one line, with it the exception."""

import argparse

import pytest

from qwenvl_jax.cli import build_parser, main


def _leaves(parser, path=()):
  subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
  if not subs:
    yield path, parser
  for action in subs:
    for name, sub in action.choices.items():
      yield from _leaves(sub, path + (name,))


def test_every_subcommand_accepts_debug():
  leaves = dict(_leaves(build_parser()))
  assert ("eval",) in leaves and ("data", "pack") in leaves and ("tokenize",) in leaves
  missing = [" ".join(p) for p, sub in leaves.items()
             if not any("--debug" in a.option_strings for a in sub._actions)]
  assert missing == []


def test_debug_shows_the_exception_only_when_asked(tmp_path, capsys):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  argv = ["data", "synth", "--kind", "shapes", "--n", "1", "--out", str(blocker / "sub")]
  assert main(argv) == 2
  assert capsys.readouterr().err.strip() == (
      f"qwenvl-jax data: error: --out {blocker / 'sub'}: {blocker} is a file, not a folder")
  with pytest.raises(NotADirectoryError):
    main(argv + ["--debug"])
  with pytest.raises(NotADirectoryError):  # before the nested subcommand too
    main(["data", "--debug"] + argv[1:])
