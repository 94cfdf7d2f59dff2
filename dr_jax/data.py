"""Kaggle CSV → validated uint8 arrays, plus the pure transforms (split, one-hot, scaling)."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import pathlib
import zipfile
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from dr_jax import config
from dr_jax.errors import UserError
from dr_jax.files import atomic_write_bytes

NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28, 1)
NUM_PIXELS = 28 * 28
PIXEL_COLUMNS = tuple(f"pixel{i}" for i in range(NUM_PIXELS))
# Bump when the parsed layout changes so stale caches are never read.
_CACHE_VERSION = 2


@dataclasses.dataclass(frozen=True)
class Digits:
  """Images `(n, 28, 28, 1)` uint8 and labels `(n,)` int32 (None for a test file)."""

  images: np.ndarray
  labels: np.ndarray | None


def _where(path: pathlib.Path, data_row: int) -> str:
  """Names a data row the way an editor shows it: file line (header is line 1)."""
  return f"{path}: line {data_row + 2} (data row {data_row + 1})"


def _rows_text(rows: np.ndarray, limit: int = 5) -> str:
  """Lists the first few file lines of data rows, with a count of the rest."""
  lines = ", ".join(str(int(r) + 2) for r in rows[:limit])
  more = f" and {len(rows) - limit} more" if len(rows) > limit else ""
  return f"line{'s' if len(rows) > 1 else ''} {lines}{more}"


def _read_frame(path: pathlib.Path) -> pd.DataFrame:
  """Reads a CSV (plain or .gz, BOM and CRLF tolerated) into a DataFrame, no interpretation."""
  if not path.exists():
    raise UserError(f"{path}: file not found; run `dr-jax fetch --data-dir {path.parent}` "
                    "or pass --data-dir with Kaggle's train.csv/test.csv")
  if path.is_dir():
    raise UserError(f"{path}: is a directory, expected a CSV file")
  if path.stat().st_size == 0:
    raise UserError(f"{path}: file is empty; expected a header and one row per image")
  try:
    # utf-8-sig strips a BOM that Excel and Windows editors add. Blank lines are kept (then
    # dropped by the caller) so row numbers stay file line numbers.
    frame = pd.read_csv(path, encoding="utf-8-sig", compression="infer", low_memory=False,
                        skip_blank_lines=False)
  except pd.errors.ParserError as e:
    raise UserError(f"{path}: {_parser_message(str(e))}; every row needs the same columns "
                    "as the header") from None
  except pd.errors.EmptyDataError:
    raise UserError(f"{path}: no header found; expected `label,pixel0,...,pixel783` "
                    "(train) or `pixel0,...,pixel783` (test)") from None
  except (UnicodeDecodeError, OSError, EOFError) as e:
    reason = str(e).splitlines()[0] if str(e) else ""
    raise UserError(f"{path}: cannot be read as a CSV ({type(e).__name__}: {reason}); is it a "
                    "CSV or .csv.gz?") from None
  # pandas silently turns the first column into an index when the first data row has one
  # field more than the header; checking that one line is cheap.
  first = _field_counts(path, len(frame.columns), np.array([0])) if len(frame) else []
  if first:
    raise _fields_error(path, *first[0], len(frame.columns))
  return frame


def _parser_message(message: str) -> str:
  """Turns pandas' 'Expected N fields in line L, saw M' into the same facts in our words."""
  message = message.strip().splitlines()[-1]
  if message.startswith("Error tokenizing data. C error: "):
    message = message.removeprefix("Error tokenizing data. C error: ")
  return message.rstrip(".").replace("Expected", "expected")


def _check_columns(frame: pd.DataFrame, path: pathlib.Path, with_labels: bool) -> pd.DataFrame:
  """Checks the header and returns the frame with columns in Kaggle's order."""
  columns = [str(c).strip() for c in frame.columns]
  # pandas renames a repeated header `pixel5` to `pixel5.1`; report the original name.
  repeated = sorted({c.rsplit(".", 1)[0] for c in columns
                     if "." in c and c.rsplit(".", 1)[0] in columns})
  if repeated:
    raise UserError(f"{path}: duplicate column(s) {', '.join(repeated[:5])} in the header; "
                    "each column name must appear once")
  frame.columns = columns
  has_label = "label" in columns
  if with_labels and not has_label:
    raise UserError(f"{path}: no `label` column; a training file needs `label,pixel0,...,pixel783` "
                    "(is this a test file?)")
  if not with_labels and has_label:
    raise UserError(f"{path}: has a `label` column; a test file holds only pixel0..pixel783 "
                    "(is this a training file? pass it as train.csv)")
  expected = (["label"] if with_labels else []) + list(PIXEL_COLUMNS)
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
    raise UserError(f"{path}: {'; '.join(parts)}; expected the header "
                    f"`{'label,' if with_labels else ''}pixel0,...,pixel783`")
  # Shuffled columns are accepted: reorder to Kaggle's layout by name.
  return frame[expected]


def _field_counts(path: pathlib.Path, n_columns: int, rows: np.ndarray) -> list[tuple[int, int]]:
  """(data_row, field_count) of lines whose field count differs from the header's.

  Looks only at `rows` (a NaN report's rows, or the first row), not at the whole file.
  """
  wanted = set(int(r) for r in rows)
  found = []
  opener = gzip.open if path.suffix == ".gz" else open
  with opener(path, "rt", encoding="utf-8-sig", newline="") as f:
    next(f)
    for i, line in enumerate(f):
      if i in wanted:
        count = line.rstrip("\r\n").count(",") + 1
        if count != n_columns and line.strip():
          found.append((i, count))
      if i >= max(wanted):
        break
  return found


def _fields_error(path: pathlib.Path, data_row: int, count: int, expected: int) -> UserError:
  """The error for a row with another number of fields than the header (see _field_counts)."""
  return UserError(f"{_where(path, data_row)}: has {count} fields, expected {expected} like the "
                   "header; fix or remove that row")


def _nan_report(frame: pd.DataFrame, path: pathlib.Path) -> str:
  """Names the columns with empty/NaN cells and the lines they are on."""
  mask = frame.isna()
  by_column = mask.sum(axis=0)
  bad_columns = by_column[by_column > 0]
  parts = []
  for column, count in list(bad_columns.items())[:3]:
    rows = frame.index[mask[column].to_numpy()].to_numpy()
    parts.append(f"{column} ({count} cell{'s' if count > 1 else ''}: {_rows_text(rows)})")
  more = f" and {len(bad_columns) - 3} more column(s)" if len(bad_columns) > 3 else ""
  return (f"{path}: empty or NaN cells in {', '.join(parts)}{more}; fix the file, or set "
          "--config.data.nan_policy=drop (drop those rows) or =fill (use data.fill_value)")


def _to_integers(frame: pd.DataFrame, path: pathlib.Path, nan_policy: str,
                 fill_value: int) -> pd.DataFrame:
  """Checks every cell is an integer number, handling empty cells by `nan_policy`."""
  for column in frame.columns:
    if not pd.api.types.is_numeric_dtype(frame[column]):
      numeric = pd.to_numeric(frame[column], errors="coerce")
      bad = np.flatnonzero(numeric.isna().to_numpy() & frame[column].notna().to_numpy())
      if len(bad):
        value = frame[column].iloc[bad[0]]
        raise UserError(f"{_where(path, frame.index[bad[0]])}: column {column} holds {value!r}, "
                        "not a number; every cell must be an integer")
      frame[column] = numeric
  if frame.isna().any(axis=None):
    nan_rows = frame.index[frame.isna().any(axis=1).to_numpy()].to_numpy()
    short = _field_counts(path, frame.shape[1], nan_rows[:50])
    if short:
      raise _fields_error(path, *short[0], frame.shape[1])
    if nan_policy == "error":
      raise UserError(_nan_report(frame, path))
    if nan_policy == "drop":
      frame = frame.dropna(axis=0)
      if len(frame) == 0:
        raise UserError(f"{path}: every row has an empty cell; nothing left after nan_policy=drop")
    else:
      if "label" in frame.columns and frame["label"].isna().any():
        row = frame.index[frame["label"].isna().to_numpy()][0]
        raise UserError(f"{_where(path, row)}: the label is empty; data.nan_policy=fill fills "
                        "pixels only (a filled label would be a wrong answer): fix the row or use "
                        "--config.data.nan_policy=drop")
      frame = frame.fillna(fill_value)
  values = frame.to_numpy(dtype=np.float64)
  fractional = np.flatnonzero((values != np.round(values)).any(axis=1))
  if len(fractional):
    row = fractional[0]
    col = int(np.flatnonzero(values[row] != np.round(values[row]))[0])
    raise UserError(f"{_where(path, frame.index[row])}: column {frame.columns[col]} holds "
                    f"{values[row, col]:g}, not an integer; pixels are 0..255 and labels 0..9")
  return frame


def _check_range(values: np.ndarray, low: int, high: int, path: pathlib.Path,
                 columns: list[str], rows: np.ndarray, what: str) -> None:
  """Raises naming the first cell outside [low, high]; `rows` maps positions to data rows."""
  bad = np.argwhere((values < low) | (values > high))
  if len(bad):
    row, col = bad[0]
    raise UserError(f"{_where(path, int(rows[row]))}: column {columns[col]} is "
                    f"{values[row, col]:g}, outside {low}..{high}; {what} must lie in {low}..{high}"
                    + (f" ({len(bad)} such cells in all)" if len(bad) > 1 else ""))


def parse_csv(path: pathlib.Path, with_labels: bool, nan_policy: str = "error",
              fill_value: int = 0) -> Digits:
  """Reads and validates a Kaggle-format CSV; every problem is a one-line `UserError`."""
  config.check_value("data.nan_policy", nan_policy)
  frame = _check_columns(_read_frame(path), path, with_labels)
  frame = frame[~frame.isna().all(axis=1)]  # Blank lines; the index keeps their line numbers.
  if len(frame) == 0:
    raise UserError(f"{path}: has a header but no rows; expected one row per image")
  frame = _to_integers(frame, path, nan_policy, fill_value)
  values = frame.to_numpy(dtype=np.float64)
  columns = list(frame.columns)
  offset = 1 if with_labels else 0
  rows = frame.index.to_numpy()
  _check_range(values[:, offset:], 0, 255, path, columns[offset:], rows, "pixels")
  labels = None
  if with_labels:
    _check_range(values[:, :1], 0, NUM_CLASSES - 1, path, columns[:1], rows, "labels")
    labels = values[:, 0].astype(np.int32)
  images = values[:, offset:].astype(np.uint8).reshape((-1, *IMAGE_SHAPE))
  return Digits(images=images, labels=labels)


def _file_hash(path: pathlib.Path) -> str:
  """Returns the sha256 of a file's bytes (the cache key)."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      digest.update(block)
  return digest.hexdigest()


def digest(digits: Digits) -> str:
  """sha256 of the parsed pixels and labels: the same however the CSV was saved (CRLF, gzip)."""
  h = hashlib.sha256(np.ascontiguousarray(digits.images, np.uint8).tobytes())
  if digits.labels is not None:
    h.update(np.ascontiguousarray(digits.labels, np.int32).tobytes())
  return h.hexdigest()


def find_csv(data_dir: pathlib.Path, name: str) -> pathlib.Path:
  """`data_dir/name`, or its gzip'd `name.gz` when only that exists."""
  path = pathlib.Path(data_dir) / name
  gz = path.with_name(path.name + ".gz")
  return gz if not path.exists() and gz.exists() else path


def load_csv(path: pathlib.Path, with_labels: bool, nan_policy: str = "error",
             fill_value: int = 0) -> Digits:
  """`parse_csv` with an `.npz` cache keyed by the file's hash, so a second load is near-instant."""
  path = pathlib.Path(path)
  if not path.is_file():
    return parse_csv(path, with_labels, nan_policy, fill_value)
  key = f"{_file_hash(path)[:20]}-{int(with_labels)}-{nan_policy}-{fill_value}-v{_CACHE_VERSION}"
  cache = path.parent / ".cache" / f"{path.name}.{key}.npz"
  if cache.exists():
    try:
      with np.load(cache, allow_pickle=False) as npz:
        labels = npz["labels"] if with_labels else None
        return Digits(images=npz["images"], labels=labels)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
      pass  # A damaged cache is rebuilt from the CSV below.
  digits = parse_csv(path, with_labels, nan_policy, fill_value)
  buffer = io.BytesIO()
  # Any: numpy's stub would also let `**arrays` fill savez's keyword flags (a bool).
  arrays: dict[str, Any] = {"images": digits.images}
  if digits.labels is not None:
    arrays["labels"] = digits.labels
  np.savez(buffer, **arrays)
  try:
    atomic_write_bytes(cache, buffer.getvalue())
  except OSError:
    pass  # A read-only data dir still works, just without the cache.
  return digits


def split_indices(labels: np.ndarray, val_fraction: float,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Stratified train/validation row indices (scikit-learn), seeded; class proportions kept."""
  config.check_value("data.val_fraction", val_fraction)
  n_val = int(np.ceil(val_fraction * len(labels)))
  counts = np.bincount(labels, minlength=NUM_CLASSES)
  present = int((counts > 0).sum())
  if n_val < present or len(labels) - n_val < present or (counts[counts > 0] < 2).any():
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


def one_hot(labels: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
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
