"""Atomic file writes: readers see the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile
import time
from typing import IO, Any, Iterable, Iterator


STALE_AFTER_S = 600  # A temp file this old belongs to no write in progress: writes take seconds.


def remove_stale_temps(directory: pathlib.Path) -> list[pathlib.Path]:
  """Deletes temp files that killed writes left in `directory`; returns them."""
  removed = []
  cutoff = time.time() - STALE_AFTER_S
  for tmp in pathlib.Path(directory).glob(".*.tmp"):
    try:
      if tmp.is_file() and not tmp.is_symlink() and tmp.stat().st_mtime < cutoff:
        tmp.unlink()
        removed.append(tmp)
    except OSError:
      pass  # Gone already, or not ours to delete: either way nothing to clean.
  return removed


@contextlib.contextmanager
def atomic_writer(path: pathlib.Path, mode: str = "wb") -> Iterator[IO]:
  """Yields a temp file in `path`'s directory; renames it over `path` only if the block succeeds."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  # mkstemp creates 0600 files; results are meant to be shared like any other output.
  os.chmod(tmp, 0o644)
  try:
    text: dict[str, Any] = {"encoding": "utf-8", "newline": "\n"} if "b" not in mode else {}
    with os.fdopen(fd, mode, **text) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise


def atomic_write_bytes(path: pathlib.Path, data: bytes) -> None:
  """Writes `data` to `path` atomically."""
  with atomic_writer(path, "wb") as f:
    f.write(data)


def atomic_write_text(path: pathlib.Path, text: str) -> None:
  """`atomic_write_bytes` for UTF-8 text."""
  atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_lines(path: pathlib.Path, lines: Iterable[str]) -> None:
  """Streams text lines to `path` atomically (large CSVs never sit in memory whole)."""
  with atomic_writer(path, "w") as f:
    f.writelines(lines)
