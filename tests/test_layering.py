"""The package's import layering (docs/design.md, DESIGN.md): dependencies point one way.

Walks the AST of every module under qwenvl_jax/ (imports inside functions count too) and checks the
rules below; a failure names the importing file, line and the forbidden module.
"""

import ast
import pathlib

import pytest

PKG = pathlib.Path(__file__).resolve().parents[1] / "qwenvl_jax"

# (importing area, forbidden import prefixes, why)
FORBIDDEN = [
    ("model", ("qwenvl_jax.train", "qwenvl_jax.ckpt", "qwenvl_jax.data", "qwenvl_jax.cli", "qwenvl_jax.infer",
               "qwenvl_jax.evals", "qwenvl_jax.serve", "qwenvl_jax.perf"), "the model is the bottom layer"),
    ("text", ("qwenvl_jax.model",), "tokenisation does not depend on the model"),
    ("config", ("qwenvl_jax.model", "qwenvl_jax.sharding"), "config is below everything"),
    ("sharding", ("qwenvl_jax.model",), "sharding rules do not depend on the model"),
    ("configs", ("qwenvl_jax.train", "qwenvl_jax.model", "qwenvl_jax.ckpt", "qwenvl_jax.data"),
     "configs are values"),
    ("evals", ("qwenvl_jax.train",), "evaluation does not depend on training"),
    ("evals/metrics", ("qwenvl_jax.model", "qwenvl_jax.infer", "qwenvl_jax.text.tokenizer"),
     "metrics are pure functions of strings"),
    ("train", ("qwenvl_jax.perf",), "perf (AOT) builds on train, not the other way"),
]


def _area(path: pathlib.Path) -> str:
  rel = path.relative_to(PKG).with_suffix("")
  return "/".join(rel.parts)


def _imports(path: pathlib.Path):
  """(module name, line, at module level) for every import in the file; relative ones resolved."""
  tree = ast.parse(path.read_text(), str(path))
  package = ["qwenvl_jax", *path.relative_to(PKG).parent.parts]
  top_level = {id(n) for n in tree.body}
  # Statements directly under `if TYPE_CHECKING:` / `try:` at module level count as module level.
  for node in tree.body:
    if isinstance(node, (ast.If, ast.Try)):
      top_level |= {id(n) for n in ast.walk(node)}
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield alias.name, node.lineno, id(node) in top_level
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        base = package[: len(package) - node.level + 1]
        mod = ".".join(base + ([node.module] if node.module else []))
      else:
        mod = node.module or ""
      names = [f"{mod}.{a.name}" for a in node.names]
      for name in names:
        yield name, node.lineno, id(node) in top_level


def _files():
  return sorted(PKG.rglob("*.py"))


def _under(area: str, prefix: str) -> bool:
  return area == prefix or area.startswith(prefix + "/")


def _is(mod: str, prefix: str) -> bool:
  return mod == prefix or mod.startswith(prefix + ".")


def test_layering_rules():
  bad = []
  for path in _files():
    area = _area(path)
    for mod, line, _ in _imports(path):
      for where, forbidden, why in FORBIDDEN:
        if _under(area, where) and any(_is(mod, f) for f in forbidden):
          bad.append(f"{area}.py:{line} imports {mod} ({why})")
      if _is(mod, "qwenvl_jax.testing") and not _under(area, "testing"):
        bad.append(f"{area}.py:{line} imports {mod} (qwenvl_jax.testing is for tests and benchmarks)")
  assert not bad, "\n".join(bad)


def test_torch_only_in_testing_and_lazily_in_ckpt():
  bad = []
  for path in _files():
    area = _area(path)
    for mod, line, top in _imports(path):
      if not _is(mod, "torch"):
        continue
      if _under(area, "testing") or (_under(area, "ckpt") and not top):
        continue
      bad.append(f"{area}.py:{line} imports {mod}" + (" at module level" if top else ""))
  assert not bad, "\n".join(bad)


@pytest.mark.parametrize("source,expected", [
    ("from qwenvl_jax.train import step\n", "qwenvl_jax.train.step"),
    ("from ..train import loop\n", "qwenvl_jax.train.loop"),
    ("def f():\n  import qwenvl_jax.ckpt.convert\n", "qwenvl_jax.ckpt.convert"),
])
def test_the_checker_sees_imports(tmp_path, monkeypatch, source, expected):
  fake = tmp_path / "qwenvl_jax" / "model" / "x.py"
  fake.parent.mkdir(parents=True)
  fake.write_text(source)
  monkeypatch.setattr(__import__(__name__, fromlist=["PKG"]), "PKG", tmp_path / "qwenvl_jax")
  assert expected in [m for m, _, _ in _imports(fake)]
