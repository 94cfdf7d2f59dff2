"""MNIST-as-CSV files → validated uint8 arrays, plus the pure transforms (split, one-hot, scaling).

The family's layout: an optional `label` column (training files), an optional id column (test
files: `id` or `ImageId`), and pixel columns `pixel0..pixelN-1` or `pixel1..pixelN` in any
column order, row-major over (height, width, channels).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import io
import math
import os
import pathlib
import re
import sys
import zipfile
from typing import Any, Iterable, Iterator

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from dr_jax import config
from dr_jax.errors import UserError
from dr_jax.files import atomic_write_bytes, remove_stale_temps

# The Digit Recognizer's, which a config describes before any data is read (build.image_shape).
NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28, 1)
# Labels are stored as int32.
LABEL_MAX = int(np.iinfo(np.int32).max)
# A test file's id column, matched in any case: Kaggle's `id` (Kannada-MNIST) and `ImageId`.
ID_COLUMNS = ("id", "imageid")
_PIXEL = re.compile(r"pixel(\d+)")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
# Bump when the parsed layout changes so stale caches are never read.
_CACHE_VERSION = 4
CHUNK_ROWS = 512  # Rows parsed at a time (see parse_csv).
# Peak memory of parse_csv per byte of CSV text, with margin (docs/performance.md#parsing-memory).
PEAK_PER_TEXT_BYTE = 2


@dataclasses.dataclass(frozen=True)
class Digits:
  """Images `(n, height, width, channels)` uint8, labels `(n,)` int32 (None for a test file)
  and a test file's id column `(n,)` int64 (None when it has none)."""

  images: np.ndarray
  labels: np.ndarray | None
  ids: np.ndarray | None = None


def _where(path: pathlib.Path, data_row: int, header: bool) -> str:
  """Names a data row the way an editor shows it: file line (a header is line 1)."""
  return f"{path}: line {data_row + 1 + header} (data row {data_row + 1})"


def _rows_text(rows: np.ndarray, header: bool, limit: int = 5) -> str:
  """Lists the first few file lines of data rows, with a count of the rest."""
  lines = ", ".join(str(int(r) + 1 + header) for r in rows[:limit])
  more = f" and {len(rows) - limit} more" if len(rows) > limit else ""
  return f"line{'s' if len(rows) > 1 else ''} {lines}{more}"


def _check_file(path: pathlib.Path) -> None:
  """The errors a path can have before any of it is read."""
  if not path.exists():
    raise UserError(f"{path}: file not found; run `dr-jax fetch --data-dir {path.parent}` "
                    "or pass --data-dir with Kaggle's train.csv/test.csv")
  if path.is_dir():
    raise UserError(f"{path}: is a directory, expected a CSV file")
  if path.stat().st_size == 0:
    raise UserError(f"{path}: file is empty; expected a header and one row per image")


def text_size(path: pathlib.Path) -> int:
  """Bytes of CSV text: the file's size, or the size gzip records for a .gz (modulo 4 GiB)."""
  if path.suffix != ".gz":
    return path.stat().st_size
  with open(path, "rb") as f:
    f.seek(-4, os.SEEK_END)
    return int.from_bytes(f.read(4), "little")


def memory_available() -> int | None:
  """Bytes the OS can hand out without swapping (Linux's MemAvailable), or None where unknown."""
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except (OSError, ValueError, IndexError):
    pass
  try:
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  except (ValueError, OSError, AttributeError):
    return None


def _check_memory(path: pathlib.Path) -> None:
  """Refuses, before parsing, a file whose parse would not fit in the memory now available."""
  try:
    need = PEAK_PER_TEXT_BYTE * text_size(path)
  except OSError:
    return  # A damaged .gz: reading it gives the real error.
  available = memory_available()
  if available is not None and need > available:
    raise UserError(f"{path}: parsing it needs about {need / 2**30:.1f} GiB of memory and "
                    f"{available / 2**30:.1f} GiB is available; free memory, or use a machine "
                    "with more")


@contextlib.contextmanager
def _pandas_errors(path: pathlib.Path) -> Iterator[None]:
  """Turns pandas' reading errors into one-line `UserError`s naming the file."""
  try:
    yield
  except pd.errors.ParserError as e:
    raise UserError(f"{path}: {_parser_message(str(e))}; every row needs the same columns "
                    "as the header") from None
  except pd.errors.EmptyDataError:
    raise UserError(f"{path}: no header found; expected `label,pixel0,...` (train) or "
                    "`pixel0,...` (test)") from None
  except (UnicodeDecodeError, OSError, EOFError) as e:
    reason = str(e).splitlines()[0] if str(e) else ""
    raise UserError(f"{path}: cannot be read as a CSV ({type(e).__name__}: {reason}); is it a "
                    "CSV or .csv.gz?") from None


def _read_csv(path: pathlib.Path, **kwargs: Any) -> Any:
  """pandas' reader with what every read here shares: plain or .gz, BOM and CRLF tolerated."""
  # utf-8-sig strips a BOM that Excel and Windows editors add. Blank lines are kept (then
  # dropped by the caller) so row numbers stay file line numbers.
  return pd.read_csv(path, encoding="utf-8-sig", compression="infer", skip_blank_lines=False,
                     low_memory=False, **kwargs)


def _parser_message(message: str) -> str:
  """Turns pandas' 'Expected N fields in line L, saw M' into the same facts in our words."""
  message = message.strip().splitlines()[-1]
  if message.startswith("Error tokenizing data. C error: "):
    message = message.removeprefix("Error tokenizing data. C error: ")
  return message.rstrip(".").replace("Expected", "expected")


@dataclasses.dataclass(frozen=True)
class _Layout:
  """The columns a file's values are read in (label, id, then pixels in order) and the image."""

  columns: list[str]
  with_labels: bool
  id_column: str | None
  shape: tuple[int, ...]

  @property
  def offset(self) -> int:
    """Where the pixel values start in a row of `columns`."""
    return int(self.with_labels) + int(self.id_column is not None)


def _check_columns(columns: list[str], path: pathlib.Path, with_labels: bool,
                   image_shape: tuple[int, ...] = ()) -> _Layout:
  """Checks the header; returns the layout to read (pixel names from 0 or 1, any order)."""
  columns = [str(c).strip() for c in columns]
  # pandas names a repeated header cell `0.1`: check for numbers first.
  if all(_NUMBER.fullmatch(c) for c in columns):
    raise UserError(f"{path}: the first line holds numbers, not column names; for a file "
                    "without a header pass --config.data.header=false")
  # pandas renames a repeated header `pixel5` to `pixel5.1`; report the original name.
  repeated = sorted({c.rsplit(".", 1)[0] for c in columns
                     if "." in c and c.rsplit(".", 1)[0] in columns})
  if repeated:
    raise UserError(f"{path}: duplicate column(s) {', '.join(repeated[:5])} in the header; "
                    "each column name must appear once")
  has_label = "label" in columns
  if with_labels and not has_label:
    raise UserError(f"{path}: no `label` column; a training file needs `label,pixel0,...` "
                    "(is this a test file?)")
  if not with_labels and has_label:
    raise UserError(f"{path}: has a `label` column; a test file holds only pixels and an "
                    "optional id column (is this a training file? pass it as train.csv)")
  numbers = sorted(int(m.group(1)) for c in columns if (m := _PIXEL.fullmatch(c)))
  first = 1 if numbers and numbers[0] == 1 else 0
  # Without image_shape, the smallest square holding the highest pixel number: a file that
  # lost its last columns is then told which ones.
  side = math.isqrt(numbers[-1] - first) + 1 if numbers else 28
  count = math.prod(image_shape) if image_shape else side * side
  pixels = [f"pixel{i}" for i in range(first, first + count)]
  id_column = None if with_labels else next(
      (c for c in columns if c.lower() in ID_COLUMNS), None)
  expected = (["label"] if with_labels else []) + ([id_column] if id_column else []) + pixels
  missing = [c for c in expected if c not in columns]
  extra = [c for c in columns if c not in expected]
  if missing or extra:
    parts = []
    if missing:
      parts.append(f"missing column(s) {', '.join(missing[:5])}"
                   + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    if extra:
      parts.append(f"unexpected column(s) {', '.join(extra[:5])}"
                   + (f" and {len(extra) - 5} more" if len(extra) > 5 else ""))
    lead = "".join(f"{c}," for c in expected[:len(expected) - len(pixels)])
    shape = "" if image_shape else (f" ({side}×{side} pixels; for images that are not square "
                                    "set --config.data.image_shape=HEIGHT,WIDTH,CHANNELS)")
    raise UserError(f"{path}: {'; '.join(parts)}; expected the header "
                    f"`{lead}{pixels[0]},...,{pixels[-1]}`{shape}")
  return _Layout(expected, with_labels, id_column, tuple(image_shape) or (side, side, 1))


class _Lines:
  """A CSV's data lines read forward on demand: the raw text of the few rows an error names."""

  def __init__(self, path: pathlib.Path, header: bool):
    opener: Any = gzip.open if path.suffix == ".gz" else open
    self._file = opener(path, "rt", encoding="utf-8-sig", newline="")
    self.header = header
    if header:
      next(self._file, None)
    self._row, self._text = -1, ""

  def __enter__(self) -> _Lines:
    return self

  def __exit__(self, *exc: object) -> None:
    self._file.close()

  def get(self, rows: Iterable[int]) -> dict[int, str]:
    """The text of each data row in `rows`, line ending included (callers count commas and
    test for blank lines); rows are read once, so ask in increasing order."""
    found = {}
    for row in sorted(set(int(r) for r in rows)):
      while self._row < row:
        self._text = next(self._file, "")
        self._row += 1
      found[row] = self._text
    return found


def _short_rows(lines: dict[int, str], n_columns: int) -> list[tuple[int, int]]:
  """(data_row, field_count) of the non-blank `lines` with another field count than the header."""
  counts = [(row, text.count(",") + 1) for row, text in lines.items() if text.strip()]
  return [(row, count) for row, count in counts if count != n_columns]


def _fields_error(path: pathlib.Path, data_row: int, count: int, expected: int,
                  header: bool) -> UserError:
  """The error for a row with another number of fields than the first (see _short_rows)."""
  return UserError(f"{_where(path, data_row, header)}: has {count} fields, expected {expected} "
                   f"like the {'header' if header else 'first line'}; fix or remove that row")


def _nan_report(frame: pd.DataFrame, path: pathlib.Path, header: bool) -> str:
  """Names the columns with empty/NaN cells and the lines they are on."""
  mask = frame.isna()
  by_column = mask.sum(axis=0)
  bad_columns = by_column[by_column > 0]
  parts = []
  for column, count in list(bad_columns.items())[:3]:
    rows = frame.index[mask[column].to_numpy()].to_numpy()
    lines = _rows_text(rows, header=header)
    parts.append(f"{column} ({count} cell{'s' if count > 1 else ''}: {lines})")
  more = f" and {len(bad_columns) - 3} more column(s)" if len(bad_columns) > 3 else ""
  return (f"{path}: empty or NaN cells in {', '.join(parts)}{more}; fix the file, or set "
          "--config.data.nan_policy=drop (drop those rows) or =fill (use data.fill_value)")


def _to_numbers(frame: pd.DataFrame, path: pathlib.Path, header: bool) -> pd.DataFrame:
  """Checks every non-empty cell is a decimal number (`True`, `0x10`, `abc` are errors)."""
  for column in frame.columns:
    cells = frame[column]
    if pd.api.types.is_numeric_dtype(cells) and not pd.api.types.is_bool_dtype(cells):
      continue
    # As text, so that a parsed True/False is a token like any other, not 1/0.
    numeric = pd.to_numeric(cells.astype(str).where(cells.notna()), errors="coerce")
    bad = np.flatnonzero(numeric.isna().to_numpy() & cells.notna().to_numpy())
    if len(bad):
      raise UserError(f"{_where(path, frame.index[bad[0]], header)}: column {column} holds "
                      f"{str(cells.iloc[bad[0]])!r}, not a number; every cell must be an integer")
    frame[column] = numeric
  return frame


def _check_integers(values: np.ndarray, path: pathlib.Path, columns: list[str],
                    rows: np.ndarray, header: bool) -> None:
  """Raises naming the first cell that holds a fraction."""
  fractional = np.flatnonzero((values != np.round(values)).any(axis=1))
  if len(fractional):
    row = fractional[0]
    col = int(np.flatnonzero(values[row] != np.round(values[row]))[0])
    raise UserError(f"{_where(path, int(rows[row]), header)}: column {columns[col]} holds "
                    f"{values[row, col]:g}, not an integer; every cell must be an integer")


@dataclasses.dataclass
class _OutOfRange:
  """Cells outside [low, high] over every block of rows: the first one, and how many in all."""

  low: int
  high: int
  what: str  # The rule, said after the value.
  first: tuple[int, str, float] | None = None  # (data row, column, value)
  count: int = 0

  def add(self, values: np.ndarray, columns: list[str], rows: np.ndarray) -> None:
    """Counts a block's cells outside the range; `rows` maps positions to data rows."""
    bad = np.argwhere((values < self.low) | (values > self.high))
    if len(bad) and self.first is None:
      row, col = bad[0]
      self.first = (int(rows[row]), columns[col], float(values[row, col]))
    self.count += len(bad)

  def check(self, path: pathlib.Path, header: bool) -> None:
    """Raises naming the first cell outside the range, if any."""
    if self.first is not None:
      row, column, value = self.first
      raise UserError(f"{_where(path, row, header)}: column {column} is {value:g}, outside "
                      f"{self.low}..{self.high}; {self.what}"
                      + (f" ({self.count} such cells in all)" if self.count > 1 else ""))


def _clean_block(frame: pd.DataFrame, path: pathlib.Path, lines: _Lines, nan_policy: str,
                 fill_value: int, nan_rows: list[pd.DataFrame]) -> pd.DataFrame:
  """One block of rows as numbers: blank lines dropped, empty cells handled by `nan_policy`.

  Under `nan_policy=error` the rows with empty cells are collected in `nan_rows` and the caller
  raises once every block is read, so the error names all of them.
  """
  if all(pd.api.types.is_integer_dtype(t) for t in set(frame.dtypes)):
    return frame  # The common block: no empty cell or blank line, nothing to convert.
  empty = frame.isna().all(axis=1).to_numpy()
  nan_index = frame.index[frame.isna().any(axis=1).to_numpy()].to_numpy()
  # Every row with an empty cell is looked at: pandas fills a row with too few fields with
  # empty cells, which nan_policy=fill would otherwise take for missing pixels.
  text = lines.get(np.union1d(frame.index[empty].to_numpy(), nan_index))
  short = _short_rows(text, frame.shape[1])
  if short:
    raise _fields_error(path, *short[0], frame.shape[1], lines.header)
  # A blank line is dropped (its index keeps the line numbers); a row of empty cells is a row.
  frame = frame[~frame.index.isin([row for row, line in text.items() if not line.strip()])]
  frame = _to_numbers(frame, path, lines.header)
  if not frame.isna().any(axis=None):
    return frame
  if nan_policy == "error":
    nan_rows.append(frame[frame.isna().any(axis=1).to_numpy()])
    return frame.dropna(axis=0)
  if nan_policy == "drop":
    return frame.dropna(axis=0)
  first = frame.columns[0]  # The label, or a test file's id, comes first (see _check_columns).
  if (first == "label" or first.lower() in ID_COLUMNS) and frame[first].isna().any():
    row = frame.index[frame[first].isna().to_numpy()][0]
    what = "label" if first == "label" else f"id ({first})"
    raise UserError(f"{_where(path, row, lines.header)}: the {what} is empty; "
                    "data.nan_policy=fill fills pixels only (a filled label or id would be "
                    "wrong): fix the row or use --config.data.nan_policy=drop")
  return frame.fillna(fill_value)


def _header(path: pathlib.Path, lines: _Lines, with_labels: bool, header: bool) -> list[str]:
  """The file's column names: its header, or for a header-less file `label` (when labelled)
  and pixel0.. by position."""
  if header:
    return list(_read_csv(path, nrows=0).columns)
  fields = lines.get([0])[0].count(",") + 1
  return ["label"] * with_labels + [f"pixel{i}" for i in range(fields - with_labels)]


def parse_csv(path: pathlib.Path, with_labels: bool, nan_policy: str = "error",
              fill_value: int = 0, image_shape: tuple[int, ...] = (),
              header: bool = True) -> Digits:
  """Reads and validates an MNIST-as-CSV file; every problem is a one-line `UserError`.

  `image_shape` `()` takes a square one-channel image from the pixel count. `header=False`
  reads a file without a header: the label (training files) first, then the pixels.

  Reads `CHUNK_ROWS` rows at a time: pandas keeps about 8 bytes per cell while it parses, so
  a whole-file read peaks near 4× the file's size; by blocks the peak stays near the output's
  (uint8, about a quarter of the text) plus one block.
  """
  config.check_value("data.nan_policy", nan_policy)
  path = pathlib.Path(path)
  _check_file(path)
  _check_memory(path)
  nan_rows: list[pd.DataFrame] = []
  seen = 0
  with _pandas_errors(path), _Lines(path, header) as lines:
    names = _header(path, lines, with_labels, header)
    layout = _check_columns(names, path, with_labels, tuple(image_shape))
    columns = layout.columns
    # pandas silently turns the first column into an index when the first data row has one
    # field more than the header; checking that one line is cheap.
    first = _short_rows(lines.get([0]), len(names))
    if first:
      raise _fields_error(path, *first[0], len(names), header)
    parts = _Parts(layout, with_labels)
    reader = _read_csv(path, chunksize=CHUNK_ROWS) if header else \
        _read_csv(path, chunksize=CHUNK_ROWS, names=names)  # names: no header row
    with reader:  # Its file is closed also when a block raises.
      for block in reader:
        if names != columns:
          block.columns = [str(c).strip() for c in block.columns]
          block = block[columns]
        seen += len(block)
        block = _clean_block(block, path, lines, nan_policy, fill_value, nan_rows)
        if len(block):
          values, rows = block.to_numpy(dtype=np.float64), block.index.to_numpy()
          _check_integers(values, path, columns, rows, header)
          parts.add(values, rows)
  if nan_rows:
    raise UserError(_nan_report(pd.concat(nan_rows), path, header))
  if not parts.images:
    if seen and nan_policy == "drop":
      raise UserError(f"{path}: every row has an empty cell; nothing left after nan_policy=drop")
    raise UserError(f"{path}: has a header but no rows; expected one row per image")
  return parts.digits(path, header)


@dataclasses.dataclass
class _Parts:
  """parse_csv's output block by block, with the range checks of every value it took."""

  layout: _Layout
  with_labels: bool
  images: list[np.ndarray] = dataclasses.field(default_factory=list)
  labels: list[np.ndarray] = dataclasses.field(default_factory=list)
  ids: list[np.ndarray] = dataclasses.field(default_factory=list)
  rows: list[np.ndarray] = dataclasses.field(default_factory=list)  # Data rows of the ids.
  pixels: _OutOfRange = dataclasses.field(
      default_factory=lambda: _OutOfRange(0, 255, "pixels must lie in 0..255"))
  label_range: _OutOfRange = dataclasses.field(
      default_factory=lambda: _OutOfRange(0, LABEL_MAX, "labels are non-negative int32 integers"))

  def add(self, values: np.ndarray, rows: np.ndarray) -> None:
    """One block's integer-valued cells (float64) and their data rows."""
    columns, offset = self.layout.columns, self.layout.offset
    self.pixels.add(values[:, offset:], columns[offset:], rows)
    self.images.append(values[:, offset:].astype(np.uint8))
    if self.with_labels:
      self.label_range.add(values[:, :1], columns[:1], rows)
      # Clipped: an out-of-range label is an error in `digits`, not an overflowing cast here.
      self.labels.append(np.clip(values[:, 0], 0, LABEL_MAX).astype(np.int32))
    if self.layout.id_column:
      self.ids.append(values[:, 0].astype(np.int64))
      self.rows.append(rows)

  def digits(self, path: pathlib.Path, header: bool) -> Digits:
    """The file's digits, once every value is in range and every id unique."""
    self.pixels.check(path, header)
    self.label_range.check(path, header)
    id_values = np.concatenate(self.ids) if self.ids else None
    if id_values is not None:
      _check_unique_ids(id_values, np.concatenate(self.rows), self.layout.id_column, path)
    return Digits(images=np.concatenate(self.images).reshape((-1, *self.layout.shape)),
                  labels=np.concatenate(self.labels) if self.with_labels else None,
                  ids=id_values)


def _check_unique_ids(ids: np.ndarray, rows: np.ndarray, column: str | None,
                      path: pathlib.Path) -> None:
  """Raises naming the first id that two rows share, and both lines."""
  order = np.argsort(ids, kind="stable")
  same = np.flatnonzero(ids[order][1:] == ids[order][:-1])
  if len(same):
    a, b = sorted((int(rows[order[same[0]]]), int(rows[order[same[0] + 1]])))
    raise UserError(f"{path}: {column} {int(ids[order[same[0]]])} is on lines {a + 2} and "
                    f"{b + 2}; each test image needs its own id")


def _file_hash(path: pathlib.Path) -> str:
  """Returns the sha256 of a file's bytes (the cache key)."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      digest.update(block)
  return digest.hexdigest()


def digest(digits: Digits) -> str:
  """sha256 of the parsed pixels, labels and ids: the same however the CSV was saved (CRLF,
  gzip). The image shape counts too, so one file read as 28×28 and as 14×56 differs."""
  h = hashlib.sha256(np.ascontiguousarray(digits.images, np.uint8).tobytes())
  if digits.images.shape[1:] != IMAGE_SHAPE:  # The Digit Recognizer's digests stay as they were.
    h.update(repr(digits.images.shape[1:]).encode())
  if digits.labels is not None:
    h.update(np.ascontiguousarray(digits.labels, np.int32).tobytes())
  if digits.ids is not None:
    h.update(b"ids" + np.ascontiguousarray(digits.ids, np.int64).tobytes())
  return h.hexdigest()


def find_csv(data_dir: pathlib.Path, name: str) -> pathlib.Path:
  """`data_dir/name`, or its gzip'd `name.gz` when only that exists."""
  path = pathlib.Path(data_dir) / name
  gz = path.with_name(path.name + ".gz")
  return gz if not path.exists() and gz.exists() else path


def load_csv(path: pathlib.Path, with_labels: bool, nan_policy: str = "error",
             fill_value: int = 0, image_shape: tuple[int, ...] = (),
             header: bool = True) -> Digits:
  """`parse_csv` with an `.npz` cache keyed by the file's hash, so a second load is near-instant."""
  path = pathlib.Path(path)
  if not path.is_file():
    return parse_csv(path, with_labels, nan_policy, fill_value, image_shape, header)
  shape = "x".join(map(str, image_shape)) or "square"
  key = (f"{_file_hash(path)[:20]}-{int(with_labels)}-{nan_policy}-{fill_value}-{shape}-"
         f"{'header' if header else 'noheader'}-v{_CACHE_VERSION}")
  cache = path.parent / ".cache" / f"{path.name}.{key}.npz"
  if cache.parent.is_dir():
    remove_stale_temps(cache.parent)
  if cache.exists():
    digits, problem = _read_cache(cache, with_labels, tuple(image_shape))
    if digits is not None:
      return digits
    print(f"note: {cache}: {problem}; rebuilding it from {path.name}", file=sys.stderr)
  digits = parse_csv(path, with_labels, nan_policy, fill_value, image_shape, header)
  buffer = io.BytesIO()
  # Any: numpy's stub would also let `**arrays` fill savez's keyword flags (a bool).
  arrays: dict[str, Any] = {"images": digits.images, "digest": np.array(digest(digits))}
  if digits.labels is not None:
    arrays["labels"] = digits.labels
  if digits.ids is not None:
    arrays["ids"] = digits.ids
  np.savez(buffer, **arrays)
  try:
    atomic_write_bytes(cache, buffer.getvalue())
  except OSError:
    pass  # A read-only data dir still works, just without the cache.
  return digits


def _read_cache(cache: pathlib.Path, with_labels: bool,
                image_shape: tuple[int, ...] = ()) -> tuple[Digits | None, str]:
  """The cached digits if they are what parse_csv returns (layout, ranges, the digest written
  with them); else None and what is wrong."""
  try:
    with np.load(cache, allow_pickle=False) as npz:
      images, recorded = npz["images"], str(npz["digest"])
      labels = npz["labels"] if with_labels else None
      ids = npz["ids"] if "ids" in npz.files else None
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
    return None, f"cannot be read ({type(e).__name__})"
  if images.dtype != np.uint8 or images.ndim != 4 or (
      image_shape and images.shape[1:] != image_shape):
    want = "x".join(map(str, image_shape)) if image_shape else "height, width, channels"
    return None, f"holds images {images.dtype}{images.shape}, not uint8 (n, {want})"
  if labels is not None and (labels.dtype != np.int32 or labels.shape != images.shape[:1]
                             or labels.min(initial=0) < 0):
    return None, (f"holds labels {labels.dtype}{labels.shape} that are not one non-negative "
                  "int32 per image")
  if ids is not None and (ids.dtype != np.int64 or ids.shape != images.shape[:1]):
    return None, f"holds ids {ids.dtype}{ids.shape} that are not one int64 per image"
  digits = Digits(images=images, labels=labels, ids=ids)
  if digest(digits) != recorded:
    return None, "does not match the digest written with it"
  return digits, ""


def split_indices(labels: np.ndarray, val_fraction: float,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Stratified train/validation row indices (scikit-learn), seeded; class proportions kept."""
  config.check_value("data.val_fraction", val_fraction)
  n_val = int(np.ceil(val_fraction * len(labels)))
  counts = np.unique(labels, return_counts=True)[1]
  present = len(counts)
  if n_val < present or len(labels) - n_val < present or (counts < 2).any():
    raise UserError(f"cannot split {len(labels)} images into train/validation with "
                    f"val_fraction={val_fraction}: each class needs at least 2 images and the "
                    f"validation set at least one per class ({present})")
  train_idx, val_idx = train_test_split(np.arange(len(labels)), test_size=n_val, stratify=labels,
                                        random_state=seed, shuffle=True)
  return train_idx, val_idx


def split(images: np.ndarray, labels: np.ndarray, val_fraction: float,
          seed: int) -> tuple[Digits, Digits]:
  """Stratified train/validation split of images and labels (see `split_indices`)."""
  train_idx, val_idx = split_indices(labels, val_fraction, seed)
  return Digits(images[train_idx], labels[train_idx]), Digits(images[val_idx], labels[val_idx])


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
  """Labels `(n,)` → float32 one-hot `(n, num_classes)`."""
  return np.eye(num_classes, dtype=np.float32)[np.asarray(labels)]


def normalization_stats(images: np.ndarray, method: str) -> tuple[float, float]:
  """Returns (shift, scale) so that `(pixels - shift) / scale` is the chosen normalisation."""
  if method == "unit":
    return 0.0, 255.0  # The seed post's MinMax: divide by the largest grey value.
  if method == "centered":
    return 127.5, 127.5
  if method == "standardize":
    pixels = np.asarray(images, dtype=np.float64)
    return float(pixels.mean()), float(pixels.std() or 1.0)
  config.check_value("data.normalization", method)
  raise AssertionError(f"config.NORMALIZATIONS has {method!r}, which this function lacks")


def normalize(images, shift: float, scale: float):
  """uint8 pixels → float32 `(pixels - shift) / scale`; works on numpy and jax arrays alike."""
  return (images.astype("float32") - shift) / scale
