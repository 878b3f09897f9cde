"""`data pack` / `data synth` never destroy or half-write the user's files, and bad input is one line."""

import io
import json

import numpy as np
from PIL import Image

from qwenvl_jax.cli import main
from qwenvl_jax.data import sources
from tests.cli_subprocess import error_line, run_cli


def _raw_set(d, n=5, bad_line=None):
  """n raw records with PNG files; `bad_line` (1-based) is replaced by broken JSON."""
  (d / "img").mkdir(parents=True, exist_ok=True)
  lines = []
  for i in range(n):
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(buf, "PNG")
    (d / "img" / f"{i}.png").write_bytes(buf.getvalue())
    lines.append(json.dumps({"id": f"r{i}", "image": f"img/{i}.png", "caption": f"c{i}"}))
  if bad_line:
    lines[bad_line - 1] = '{"id": "broken", '
  (d / "data.jsonl").write_text("\n".join(lines) + "\n")
  return d / "data.jsonl"


def _errors(capsys) -> list[str]:
  """The error lines of the last command (progress bars aside); asserts no traceback."""
  err = capsys.readouterr().err
  assert "Traceback" not in err
  return [line for line in err.splitlines() if line.startswith("qwenvl-jax")]


def _listing(d):
  return sorted(p.name for p in d.iterdir())


def test_pack_out_equal_to_src_is_refused_and_src_kept(tmp_path):
  src = _raw_set(tmp_path)
  before = src.read_bytes()
  line = error_line(run_cli("data", "pack", "--src", src, "--out", src, "--overwrite"))
  assert "is the source itself" in line and str(src) in line
  assert src.read_bytes() == before
  assert _listing(tmp_path) == ["data.jsonl", "img"]


def test_pack_existing_out_needs_overwrite(tmp_path, capsys):
  src = _raw_set(tmp_path)
  out = tmp_path / "packed.array_record"
  out.write_bytes(b"the user's earlier file")
  assert main(["data", "pack", "--src", str(src), "--out", str(out)]) == 2
  err = _errors(capsys)
  assert len(err) == 1 and "already exists" in err[0] and "--overwrite" in err[0]
  assert out.read_bytes() == b"the user's earlier file"
  assert main(["data", "pack", "--src", str(src), "--out", str(out), "--overwrite"]) == 0
  assert [r["id"] for r in sources.ArrayRecordSource(out)] == [f"r{i}" for i in range(5)]


def test_malformed_later_line_leaves_no_partial_file(tmp_path, capsys):
  src = _raw_set(tmp_path, n=6, bad_line=5)
  out = tmp_path / "out" / "packed.array_record"
  assert main(["data", "pack", "--src", str(src), "--out", str(out)]) == 2
  err = _errors(capsys)
  assert len(err) == 1 and f"{src}:5: invalid JSON" in err[0]
  assert _listing(out.parent) == []  # neither the output nor its temporary file
  # An earlier good file under that name survives a failed --overwrite untouched.
  out.write_bytes(b"old")
  assert main(["data", "pack", "--src", str(src), "--out", str(out), "--overwrite"]) == 2
  assert out.read_bytes() == b"old" and _listing(out.parent) == ["packed.array_record"]


def test_non_utf8_line_is_named(tmp_path, capsys):
  src = _raw_set(tmp_path, n=3)
  data = src.read_bytes().split(b"\n")
  data[1] = b'{"id": "r1", "image": "img/1.png", "caption": "\xff\xfe"}'
  src.write_bytes(b"\n".join(data))
  assert main(["data", "pack", "--src", str(src), "--out", str(tmp_path / "o.array_record")]) == 2
  err = _errors(capsys)
  assert len(err) == 1 and f"{src}:2: not UTF-8" in err[0]


def test_pack_out_under_a_file(tmp_path, capsys):
  src = _raw_set(tmp_path)
  assert main(["data", "pack", "--src", str(src), "--out", str(src / "x.array_record")]) == 2
  err = _errors(capsys)
  assert len(err) == 1 and "inside the source" in err[0]
  blocker = tmp_path / "plain_file"
  blocker.write_text("x")
  assert main(["data", "pack", "--src", str(src), "--out", str(blocker / "x.array_record")]) == 2
  err = _errors(capsys)
  assert len(err) == 1 and f"{blocker} is a file" in err[0]


def test_synth_bad_out_and_size_are_one_line(tmp_path, capsys):
  blocker = tmp_path / "plain_file"
  blocker.write_text("x")
  for out in (blocker, blocker / "sub"):
    assert main(["data", "synth", "--kind", "shapes", "--n", "2", "--out", str(out)]) == 2
    err = _errors(capsys)
    assert len(err) == 1 and f"{blocker} is a file" in err[0], err
  for size in ("100000", "8"):
    assert main(["data", "synth", "--kind", "shapes", "--n", "2", "--size", size,
                 "--out", str(tmp_path / "s")]) == 2
    err = _errors(capsys)
    assert len(err) == 1 and "between 32 and 2048" in err[0], err
  assert blocker.read_text() == "x" and not (tmp_path / "s").exists()


def test_pack_disk_full_keeps_the_old_output(tmp_path, capsys, monkeypatch):
  import errno

  src = _raw_set(tmp_path / "set")
  out = tmp_path / "out" / "packed.array_record"
  out.parent.mkdir()
  out.write_bytes(b"old")
  (out.parent / ".packed.array_record.partial-1234abcd.array_record").write_bytes(b"killed run")
  real, calls = sources.encode_record, []

  def full(rec):
    calls.append(rec["id"])
    if len(calls) == 3:
      raise OSError(errno.ENOSPC, "No space left on device")
    return real(rec)

  monkeypatch.setattr(sources, "encode_record", full)
  assert main(["data", "pack", "--src", str(src), "--out", str(out), "--overwrite"]) == 2
  assert "No space left on device" in _errors(capsys)[0]
  assert out.read_bytes() == b"old" and _listing(out.parent) == ["packed.array_record"]
