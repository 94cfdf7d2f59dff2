"""Tests of dr_jax.files: an interrupted write leaves the old file and no temp file behind."""

import os
import pathlib
import time

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


def test_remove_stale_temps_deletes_only_old_temp_files(tmp_path: pathlib.Path) -> None:
  old = time.time() - files.STALE_AFTER_S - 5
  stale = tmp_path / ".config.json.k3j2.tmp"
  fresh = tmp_path / ".metrics.jsonl.9zq.tmp"
  kept = [fresh, tmp_path / "config.json", tmp_path / "old.tmp", tmp_path / ".dir.tmp",
          tmp_path / ".link.tmp"]
  for path in (stale, fresh, kept[1], kept[2]):
    path.write_text("x")
  kept[3].mkdir()
  kept[4].symlink_to(kept[1])
  for path in (stale, kept[1], kept[2], kept[3]):
    os.utime(path, (old, old))
  os.utime(kept[4], (old, old), follow_symlinks=False)
  assert files.remove_stale_temps(tmp_path) == [stale]
  assert not stale.exists() and all(p.exists() or p.is_symlink() for p in kept)
  assert files.remove_stale_temps(tmp_path / "missing") == []
