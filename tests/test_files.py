"""Tests of dr_jax.files: an interrupted write leaves the old file and no temp file behind."""

import pathlib

import pytest

from dr_jax import files


def test_interrupted_write_keeps_the_old_file(tmp_path: pathlib.Path) -> None:
  target = tmp_path / "train.csv"
  target.write_text("old\n")

  def lines_then_crash():
    yield "new,partial\n"
    raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    files.atomic_write_lines(target, lines_then_crash())
  assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["train.csv"]
  files.atomic_write_lines(target, iter(["a\n", "b\n"]))
  assert target.read_text() == "a\nb\n" and [p.name for p in tmp_path.iterdir()] == ["train.csv"]


def test_bytes_and_text_round_trip_and_are_readable_by_others(tmp_path: pathlib.Path) -> None:
  files.atomic_write_bytes(tmp_path / "a" / "b.bin", b"\x00\x01")
  files.atomic_write_text(tmp_path / "c.txt", "é\n")
  assert (tmp_path / "a" / "b.bin").read_bytes() == b"\x00\x01"
  assert (tmp_path / "c.txt").read_text(encoding="utf-8") == "é\n"
  assert (tmp_path / "c.txt").stat().st_mode & 0o777 == 0o644
