"""Tests for dr_jax.data: CSV parsing and validation, the .npz cache, split, one-hot, scaling."""

import gc
import gzip
import io
import math
import pathlib
import re
import subprocess
import sys
import warnings

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from dr_jax import config, data
from dr_jax.errors import UserError

PIXELS = [f"pixel{i}" for i in range(784)]
TRAIN_COLUMNS = ["label"] + PIXELS


def make_rows(n, with_labels=True, seed=0):
  """`n` random Kaggle rows (label first when `with_labels`) as nested lists, ready to edit."""
  rng = np.random.default_rng(seed)
  pixels = rng.integers(0, 256, (n, 784))
  rows = np.column_stack([np.arange(n) % 10, pixels]) if with_labels else pixels
  return rows.tolist()


def write_csv(path, rows, columns=TRAIN_COLUMNS, newline="\n", bom=False):
  """Writes `columns` (no header line when None) and `rows` as a CSV (gzip'd when the name ends
  in .gz); returns the path."""
  lines = ([] if columns is None else [",".join(columns)]) + [",".join(map(str, row))
                                                              for row in rows]
  text = ("\ufeff" if bom else "") + newline.join(lines) + newline
  raw = text.encode("utf-8")
  path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
  return path


def user_error(path, *fragments, with_labels=True, **kwargs):
  """Asserts parse_csv raises a one-line UserError naming `path` and every fragment; returns it."""
  with pytest.raises(UserError) as info:
    data.parse_csv(path, with_labels, **kwargs)
  message = str(info.value)
  assert "\n" not in message
  assert str(path) in message
  # The fragments must come from the text itself, not from the test's directory name.
  text = message.replace(str(path), "")
  for fragment in fragments:
    assert re.search(fragment, text), (fragment, message)
  return message


def as_array(rows):
  """Nested integer rows → int64 array."""
  return np.asarray(rows, dtype=np.int64)


@pytest.mark.parametrize("loader", [data.parse_csv, data.load_csv])
def test_train_file_round_trips_every_pixel(tmp_path, loader):
  rows = make_rows(7)
  digits = loader(write_csv(tmp_path / "train.csv", rows), True)
  assert digits.images.shape == (7, 28, 28, 1) and digits.images.dtype == np.uint8
  assert digits.labels.dtype == np.int32
  np.testing.assert_array_equal(digits.labels, as_array(rows)[:, 0])
  np.testing.assert_array_equal(digits.images.reshape(7, -1), as_array(rows)[:, 1:])


@pytest.mark.parametrize("loader", [data.parse_csv, data.load_csv])
def test_test_file_has_images_and_no_labels(tmp_path, loader):
  rows = make_rows(4, with_labels=False)
  digits = loader(write_csv(tmp_path / "test.csv", rows, PIXELS), False)
  assert digits.labels is None
  assert digits.images.shape == (4, 28, 28, 1) and digits.images.dtype == np.uint8
  np.testing.assert_array_equal(digits.images.reshape(4, -1), as_array(rows))


@pytest.mark.parametrize("name,newline,bom", [
    ("train.csv", "\r\n", False), ("train.csv", "\n", True), ("train.csv.gz", "\n", False),
    ("train.csv.gz", "\r\n", True)])
def test_crlf_bom_and_gzip_are_accepted(tmp_path, name, newline, bom):
  rows = make_rows(5, seed=1)
  digits = data.load_csv(write_csv(tmp_path / name, rows, newline=newline, bom=bom), True)
  np.testing.assert_array_equal(digits.labels, as_array(rows)[:, 0])
  np.testing.assert_array_equal(digits.images.reshape(5, -1), as_array(rows)[:, 1:])


def test_digest_names_the_digits_not_the_file_format(tmp_path):
  rows = make_rows(5, seed=1)
  plain = data.load_csv(write_csv(tmp_path / "train.csv", rows), True)
  saved_otherwise = data.load_csv(write_csv(tmp_path / "other.csv.gz", rows, newline="\r\n",
                                            bom=True), True)
  assert data.digest(plain) == data.digest(saved_otherwise)
  assert len(data.digest(plain)) == 64
  rows[3][400] = (rows[3][400] + 1) % 256  # One pixel,
  assert data.digest(data.parse_csv(write_csv(tmp_path / "b.csv", rows), True)) != \
      data.digest(plain)
  rows[3][400] = (rows[3][400] - 1) % 256
  rows[2][0] = (rows[2][0] + 1) % 10  # or one label, changes it.
  assert data.digest(data.parse_csv(write_csv(tmp_path / "c.csv", rows), True)) != \
      data.digest(plain)


@pytest.mark.parametrize("with_labels", [True, False])
def test_shuffled_columns_are_reordered_by_name(tmp_path, with_labels):
  rows = as_array(make_rows(6, with_labels, seed=2))
  columns = np.array(TRAIN_COLUMNS if with_labels else PIXELS)
  order = np.random.default_rng(0).permutation(len(columns))
  path = write_csv(tmp_path / "data.csv", rows[:, order].tolist(), list(columns[order]))
  digits = data.parse_csv(path, with_labels)
  pixels = rows[:, 1:] if with_labels else rows
  np.testing.assert_array_equal(digits.images.reshape(6, -1), pixels)
  if with_labels:
    np.testing.assert_array_equal(digits.labels, rows[:, 0])


def test_missing_file(tmp_path):
  path = tmp_path / "nope" / "train.csv"
  user_error(path, "not found")
  with pytest.raises(UserError, match=re.escape(str(path))):
    data.load_csv(path, True)


def test_directory_instead_of_file(tmp_path):
  user_error(tmp_path, "directory")


def test_empty_file(tmp_path):
  path = tmp_path / "train.csv"
  path.write_bytes(b"")
  user_error(path, "empty")


@pytest.mark.parametrize("with_labels", [True, False])
def test_header_only(tmp_path, with_labels):
  path = write_csv(tmp_path / "train.csv", [], TRAIN_COLUMNS if with_labels else PIXELS)
  user_error(path, "no rows", with_labels=with_labels)


def test_missing_pixel_column(tmp_path):
  rows = [row[:-1] for row in make_rows(3)]
  path = write_csv(tmp_path / "train.csv", rows, TRAIN_COLUMNS[:-1])
  user_error(path, r"missing column\(s\) pixel783")


def test_extra_column(tmp_path):
  rows = [row + [0] for row in make_rows(3)]
  path = write_csv(tmp_path / "train.csv", rows, TRAIN_COLUMNS + ["extra"])
  user_error(path, r"unexpected column\(s\) extra")


def test_misspelled_column(tmp_path):
  columns = TRAIN_COLUMNS[:10] + ["pixl9"] + TRAIN_COLUMNS[11:]
  path = write_csv(tmp_path / "train.csv", make_rows(3), columns)
  user_error(path, "pixel9", "pixl9")


def test_duplicate_column(tmp_path):
  columns = ["pixel4" if c == "pixel5" else c for c in TRAIN_COLUMNS]
  path = write_csv(tmp_path / "train.csv", make_rows(3), columns)
  user_error(path, "duplicate", "pixel4")


# pandas' C tokenizer errors (pandas/_libs/src/parser/tokenizer.c), as str(ParserError) gives them.
@pytest.mark.parametrize("raw, ours", [
    ("Error tokenizing data. C error: Expected 785 fields in line 5, saw 786\n",
     "expected 785 fields in line 5, saw 786"),
    ("Error tokenizing data. C error: Buffer overflow caught - possible malformed input file.\n",
     "Buffer overflow caught - possible malformed input file"),
    ("Error tokenizing data. C error: EOF inside string starting at row 3",
     "EOF inside string starting at row 3")])
def test_parser_message_keeps_pandas_facts_without_its_prefix_and_period(raw, ours):
  assert data._parser_message(raw) == ours


def test_row_with_too_many_fields_names_its_line(tmp_path):
  rows = make_rows(5)
  rows[2].append(9)
  user_error(write_csv(tmp_path / "train.csv", rows), r"\bline 4\b", "786")


@pytest.mark.parametrize("n_rows", [1, 3])
def test_first_row_with_too_many_fields_names_its_line(tmp_path, n_rows):
  rows = make_rows(n_rows)
  rows[0].append(9)
  user_error(write_csv(tmp_path / "train.csv", rows), r"\bline 2\b", "786")


@pytest.mark.parametrize("name,newline,bom,bad_row", [
    ("train.csv", "\n", False, 3), ("train.csv", "\r\n", True, 0),
    ("train.csv.gz", "\r\n", False, 3)])
def test_row_with_too_few_fields_names_its_line_and_count(tmp_path, name, newline, bom, bad_row):
  rows = make_rows(5)
  rows[bad_row] = rows[bad_row][:700]
  path = write_csv(tmp_path / name, rows, newline=newline, bom=bom)
  user_error(path, rf"\bline {bad_row + 2}\b", r"\b700 fields\b", "785")


def test_row_with_too_few_fields_is_an_error_under_any_nan_policy(tmp_path):
  rows = make_rows(3)
  rows[1] = rows[1][:5]
  path = write_csv(tmp_path / "train.csv", rows)
  for policy in ("drop", "fill"):
    user_error(path, r"\bline 3\b", r"\b5 fields\b", nan_policy=policy)


def test_a_short_row_among_many_with_empty_cells_is_an_error_not_filled(tmp_path):
  """Its missing fields read as empty cells, as the 59 rows before it have: not filled."""
  rows = make_rows(70)
  for row in rows:
    row[10] = ""
  rows[59] = rows[59][:-3]
  path = write_csv(tmp_path / "train.csv", rows)
  for policy in ("drop", "fill"):
    user_error(path, r"^: line 61 \(data row 60\): has 782 fields, expected 785 like the header",
               nan_policy=policy)


@pytest.mark.parametrize("column", [0, 8])
def test_non_numeric_cell_names_column_line_and_value(tmp_path, column):
  rows = make_rows(4)
  rows[2][column] = "abc"
  name = TRAIN_COLUMNS[column]
  user_error(write_csv(tmp_path / "train.csv", rows), rf"\b{name}\b", r"\bline 4\b", "abc")


def test_a_late_non_numeric_cell_in_a_wide_block_is_our_error_without_a_pandas_warning(
    tmp_path):
  """pandas parses 2**20 // columns rows at a time (rounded down to a power of 2): 256 for
  32×32×3 images, fewer than a block of CHUNK_ROWS. With low_memory each of those guesses its
  own dtype and pandas warns of mixed types (DtypeWarning) before our one-line error."""
  columns = ["label"] + [f"pixel{i}" for i in range(32 * 32 * 3)]
  rows = [[i % 10] + [7] * (32 * 32 * 3) for i in range(400)]
  rows[300][6] = "x"
  path = write_csv(tmp_path / "train.csv", rows, columns)
  with warnings.catch_warnings():
    warnings.simplefilter("error", pd.errors.DtypeWarning)
    message = user_error(path, r"\bpixel5\b", r"\bline 302\b", "'x'", image_shape=(32, 32, 3))
  assert message.endswith("every cell must be an integer")


@pytest.mark.parametrize("header", [True, False])
def test_a_read_that_fails_in_a_block_closes_its_file(tmp_path, small_blocks, header):
  """An unclosed file is a ResourceWarning when it is collected (and a held handle meanwhile)."""
  rows = make_rows(12)
  rows[1][3] = "x"  # In the first of four blocks.
  path = write_csv(tmp_path / "train.csv", rows, TRAIN_COLUMNS if header else None)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
      data.parse_csv(path, True, header=header)
    except UserError:
      pass
    gc.collect()
  assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_empty_cells_name_column_and_lines(tmp_path):
  rows = make_rows(5)
  rows[1][6] = rows[3][6] = ""
  user_error(write_csv(tmp_path / "train.csv", rows), r"\bpixel5\b", r"\blines 3, 5\b")


def test_nan_text_cell_is_an_empty_cell(tmp_path):
  rows = make_rows(3)
  rows[2][1] = "NaN"
  user_error(write_csv(tmp_path / "train.csv", rows), r"\bpixel0\b", r"\bline 4\b")


def test_error_line_counts_blank_lines(tmp_path):
  rows = make_rows(3)
  rows[2][5] = 300
  path = tmp_path / "train.csv"
  lines = [",".join(TRAIN_COLUMNS)] + [",".join(map(str, row)) for row in rows]
  path.write_text("\n".join(lines[:2] + [""] + lines[2:]) + "\n")
  user_error(path, r"\bline 5\b")


def test_a_line_of_spaces_is_a_blank_line(tmp_path):
  """pandas reads its spaces as a text cell, so that block's label column is text: the rows
  around it are converted to numbers, not lost."""
  rows = make_rows(3)
  lines = [",".join(TRAIN_COLUMNS)] + [",".join(map(str, row)) for row in rows]
  path = tmp_path / "train.csv"
  path.write_text("\n".join(lines[:2] + ["   "] + lines[2:]) + "\n")
  digits = data.parse_csv(path, True)
  np.testing.assert_array_equal(digits.labels, as_array(rows)[:, 0])
  np.testing.assert_array_equal(digits.images.reshape(3, -1), as_array(rows)[:, 1:])
  rows[2][5] = 300
  lines[3] = ",".join(map(str, rows[2]))
  path.write_text("\n".join(lines[:2] + ["   "] + lines[2:]) + "\n")
  user_error(path, r"\bline 5\b", r"\bpixel4\b", r"\b300\b")


@pytest.mark.parametrize("value", [256, -1, 1000])
def test_pixel_out_of_range_names_column_line_value_and_range(tmp_path, value):
  rows = make_rows(4)
  rows[1][8] = value
  user_error(write_csv(tmp_path / "train.csv", rows), r"\bpixel7\b", r"\bline 3\b",
             rf"(?<![\d.]){value}\b", r"0\.\.255")


def test_label_out_of_range(tmp_path):
  rows = make_rows(3)
  rows[2][0] = -1
  user_error(write_csv(tmp_path / "train.csv", rows), r"\blabel\b", r"\bline 4\b", r"-1\b",
             r"non-negative")


@pytest.mark.parametrize("label", [10**12, -10**12])
def test_a_label_past_int32_is_our_error_without_a_numpy_warning(tmp_path, label):
  """Labels are clipped before their int32 cast: an unclipped one warns 'invalid value
  encountered in cast' before the range error."""
  rows = make_rows(3)
  rows[1][0] = label
  with warnings.catch_warnings():
    warnings.simplefilter("error", RuntimeWarning)
    user_error(write_csv(tmp_path / "train.csv", rows), r"\blabel\b", r"\bline 3\b",
               "non-negative int32 integers")


@pytest.mark.parametrize("column,value", [(0, "2.5"), (300, "17.25")])
def test_fractional_value(tmp_path, column, value):
  rows = make_rows(3)
  rows[1][column] = value
  user_error(write_csv(tmp_path / "train.csv", rows), rf"\b{TRAIN_COLUMNS[column]}\b",
             r"\bline 3\b", re.escape(value), "integer")


def test_test_file_with_label_column(tmp_path):
  path = write_csv(tmp_path / "test.csv", make_rows(3))
  user_error(path, "`label`", with_labels=False)


def test_train_file_without_label_column(tmp_path):
  path = write_csv(tmp_path / "train.csv", make_rows(3, with_labels=False), PIXELS)
  user_error(path, "`label`")


def test_invalid_nan_policy(tmp_path):
  path = write_csv(tmp_path / "train.csv", make_rows(2))
  with pytest.raises(UserError, match="nan_policy.*'skip'") as info:
    data.parse_csv(path, True, nan_policy="skip")
  assert "\n" not in str(info.value)


def test_nan_policy_drop_removes_exactly_rows_with_empty_cells(tmp_path):
  rows = make_rows(6)
  rows[1][3] = rows[4][0] = rows[4][700] = ""
  keep = [0, 2, 3, 5]
  expected = as_array([rows[i] for i in keep])
  digits = data.parse_csv(write_csv(tmp_path / "train.csv", rows), True, nan_policy="drop")
  np.testing.assert_array_equal(digits.labels, expected[:, 0])
  np.testing.assert_array_equal(digits.images.reshape(len(keep), -1), expected[:, 1:])


def test_nan_policy_drop_with_every_row_empty(tmp_path):
  rows = make_rows(3)
  for row in rows:
    row[10] = ""
  user_error(write_csv(tmp_path / "train.csv", rows), "drop", nan_policy="drop")


def test_nan_policy_fill_uses_fill_value(tmp_path):
  rows = make_rows(4)
  rows[1][3] = rows[2][5] = ""
  digits = data.parse_csv(write_csv(tmp_path / "train.csv", rows), True, nan_policy="fill",
                          fill_value=7)
  expected = as_array([[7 if cell == "" else cell for cell in row] for row in rows])
  np.testing.assert_array_equal(digits.labels, expected[:, 0])
  np.testing.assert_array_equal(digits.images.reshape(4, -1), expected[:, 1:])


def test_nan_policy_fill_never_fills_a_label(tmp_path):
  rows = make_rows(4)
  rows[2][0] = ""
  path = write_csv(tmp_path / "train.csv", rows)
  with pytest.raises(UserError) as e:
    data.parse_csv(path, True, nan_policy="fill", fill_value=7)
  assert str(e.value) == (f"{path}: line 4 (data row 3): the label is empty; data.nan_policy=fill "
                          "fills pixels only (a filled label or id would be wrong): fix the "
                          "row or use --config.data.nan_policy=drop")
  assert len(data.parse_csv(path, True, nan_policy="drop").labels) == 3


def _message(path, rows, **kwargs):
  """parse_csv's error for `rows` written to `path`, without the path."""
  write_csv(path, rows)
  with pytest.raises(UserError) as e:
    data.parse_csv(path, True, **kwargs)
  assert str(e.value).startswith(f"{path}: ")
  return str(e.value).removeprefix(f"{path}: ")


def test_error_messages_word_for_word(tmp_path):
  """The whole text of each kind of message: counts, plurals, lists cut after 3 columns and
  5 lines, and the fix."""
  fix = ("; fix the file, or set --config.data.nan_policy=drop (drop those rows) or =fill "
         "(use data.fill_value)")
  rows = make_rows(8)
  for i in range(6):
    rows[i][1] = ""  # pixel0: 6 cells, more than the 5 lines named.
  rows[2][2] = rows[3][2] = ""  # pixel1: 2 cells.
  rows[4][3] = ""  # pixel2: 1 cell.
  rows[5][4] = ""  # pixel3: a fourth column.
  assert _message(tmp_path / "a.csv", rows) == (
      "empty or NaN cells in pixel0 (6 cells: lines 2, 3, 4, 5, 6 and 1 more), pixel1 (2 cells: "
      "lines 4, 5), pixel2 (1 cell: line 6) and 1 more column(s)" + fix)
  rows = make_rows(8)
  for i in range(5):
    rows[i][1] = ""
  rows[6][2] = rows[6][3] = ""
  assert _message(tmp_path / "b.csv", rows) == (
      "empty or NaN cells in pixel0 (5 cells: lines 2, 3, 4, 5, 6), pixel1 (1 cell: line 8), "
      "pixel2 (1 cell: line 8)" + fix)
  rows = make_rows(4)
  rows[1][5] = 256
  assert _message(tmp_path / "c.csv", rows) == (
      "line 3 (data row 2): column pixel4 is 256, outside 0..255; pixels must lie in 0..255")
  rows[3][7] = -1
  assert _message(tmp_path / "d.csv", rows) == (
      "line 3 (data row 2): column pixel4 is 256, outside 0..255; pixels must lie in 0..255 "
      "(2 such cells in all)")
  rows = make_rows(4)
  rows[2].append(5)
  assert _message(tmp_path / "e.csv", rows) == (
      "expected 785 fields in line 4, saw 786; every row needs the same columns as the header")
  rows = make_rows(4)
  rows[2] = rows[2][:3]
  assert _message(tmp_path / "f.csv", rows) == (
      "line 4 (data row 3): has 3 fields, expected 785 like the header; fix or remove that row")
  rows = make_rows(4)
  rows[1][0] = 2.5
  assert _message(tmp_path / "g.csv", rows) == (
      "line 3 (data row 2): column label holds 2.5, not an integer; every cell must be an integer")
  rows = make_rows(4)
  rows[3][9] = "0x10"
  assert _message(tmp_path / "h.csv", rows) == (
      "line 5 (data row 4): column pixel8 holds '0x10', not a number; every cell must be an "
      "integer")


def test_header_and_file_messages_word_for_word(tmp_path):
  dupes = [f"pixel{i}" for i in (9, 3, 7, 1, 5, 2)]  # Six repeated names: five are listed.
  write_csv(tmp_path / "a.csv", [], TRAIN_COLUMNS + dupes)
  assert _error(tmp_path / "a.csv", True) == (
      "duplicate column(s) pixel1, pixel2, pixel3, pixel5, pixel7 in the header; each column name "
      "must appear once")
  write_csv(tmp_path / "b.csv", make_rows(2, False), PIXELS)
  assert _error(tmp_path / "b.csv", True) == (
      "no `label` column; a training file needs `label,pixel0,...` (is this a test file?)")
  write_csv(tmp_path / "c.csv", make_rows(2))
  assert _error(tmp_path / "c.csv", False) == (
      "has a `label` column; a test file holds only pixels and an optional id column (is this a "
      "training file? pass it as train.csv)")
  assert _error(tmp_path / "none.csv", True) == (
      f"file not found; run `dr-jax fetch --data-dir {tmp_path}` or pass --data-dir with Kaggle's "
      "train.csv/test.csv")


_SQUARE = (" (28×28 pixels; for images that are not square set "
           "--config.data.image_shape=HEIGHT,WIDTH,CHANNELS)")


def test_column_messages_word_for_word(tmp_path):
  """Missing and unexpected columns, each list cut after five, joined by '; '."""
  columns = TRAIN_COLUMNS[:-6] + [f"extra{i}" for i in range(6)]
  write_csv(tmp_path / "a.csv", [], columns)
  assert _error(tmp_path / "a.csv", True) == (
      "missing column(s) pixel778, pixel779, pixel780, pixel781, pixel782 and 1 more; unexpected "
      "column(s) extra0, extra1, extra2, extra3, extra4 and 1 more; expected the header "
      f"`label,pixel0,...,pixel783`{_SQUARE}")
  write_csv(tmp_path / "b.csv", [], PIXELS[:-5] + ["pixel5x", "x.1"])
  assert _error(tmp_path / "b.csv", False) == (
      "missing column(s) pixel779, pixel780, pixel781, pixel782, pixel783; unexpected column(s) "
      f"pixel5x, x.1; expected the header `pixel0,...,pixel783`{_SQUARE}")
  write_csv(tmp_path / "c.csv", [], TRAIN_COLUMNS + ["pixel5"])  # Read back as pixel5.1.
  assert _error(tmp_path / "c.csv", True).startswith("duplicate column(s) pixel5 in the header")
  # Exactly five of a kind: listed whole.
  write_csv(tmp_path / "d.csv", [], TRAIN_COLUMNS[:-5] + [f"extra{i}" for i in range(5)])
  assert _error(tmp_path / "d.csv", True) == (
      "missing column(s) pixel779, pixel780, pixel781, pixel782, pixel783; unexpected column(s) "
      f"extra0, extra1, extra2, extra3, extra4; expected the header `label,pixel0,...,pixel783`"
      f"{_SQUARE}")
  # A repeated name with a dot of its own: pandas reads the second as x.y.1.
  write_csv(tmp_path / "e.csv", [], TRAIN_COLUMNS + ["x.y", "x.y"])
  assert _error(tmp_path / "e.csv", True).startswith("duplicate column(s) x.y in the header")
  # No pixel column at all: the Kaggle 28×28 header is the one expected.
  write_csv(tmp_path / "f.csv", [[3]], ["label"])
  assert _error(tmp_path / "f.csv", True) == (
      "missing column(s) pixel0, pixel1, pixel2, pixel3, pixel4 and 779 more; expected the header "
      f"`label,pixel0,...,pixel783`{_SQUARE}")
  # The square comes from the highest pixel number, wherever the one below it lies.
  write_csv(tmp_path / "g.csv", [], PIXELS[:16] + ["pixel99"])
  assert _error(tmp_path / "g.csv", False).endswith(
      "expected the header `pixel0,...,pixel99` (10×10 pixels; for images that are not square set "
      "--config.data.image_shape=HEIGHT,WIDTH,CHANNELS)")


def _error(path, with_labels):
  """parse_csv's one-line error for `path`, without the path."""
  with pytest.raises(UserError) as e:
    data.parse_csv(path, with_labels)
  return str(e.value).removeprefix(f"{path}: ")


def test_memory_message_in_gib_and_the_limit_itself_is_allowed(tmp_path, monkeypatch):
  path = write_csv(tmp_path / "train.csv", make_rows(2))
  monkeypatch.setattr(data, "text_size", lambda p: 2 * 2**30)
  monkeypatch.setattr(data, "memory_available", lambda: 3 * 2**30)
  assert _error(path, True) == ("parsing it needs about 4.0 GiB of memory and 3.0 GiB is "
                                "available; free memory, or use a machine with more")
  # Exactly enough memory: parsing starts.
  monkeypatch.setattr(data, "memory_available", lambda: data.PEAK_PER_TEXT_BYTE * 2 * 2**30)

  def parsing(*args, **kwargs):
    raise AssertionError("past the check")

  monkeypatch.setattr(data, "_read_csv", parsing)
  with pytest.raises(AssertionError, match="past the check"):
    data.parse_csv(path, True)


def test_memory_available_reads_meminfo_then_sysconf(monkeypatch):
  meminfo = "MemTotal:       16384 kB\nMemFree:         1024 kB\nMemAvailable:    2048 kB\n"
  opened = []

  def fake_open(name, *args, **kwargs):
    opened.append(name)
    return io.StringIO(meminfo)

  monkeypatch.setattr(data, "open", fake_open, raising=False)
  assert data.memory_available() == 2048 * 1024 and opened == ["/proc/meminfo"]

  def no_proc(name, *args, **kwargs):
    raise FileNotFoundError(name)

  monkeypatch.setattr(data, "open", no_proc, raising=False)
  pages = {"SC_AVPHYS_PAGES": 10, "SC_PAGE_SIZE": 4096}
  monkeypatch.setattr(data.os, "sysconf", lambda name: pages[name])
  assert data.memory_available() == 40960

  def unknown(name):
    raise ValueError(name)

  monkeypatch.setattr(data.os, "sysconf", unknown)
  assert data.memory_available() is None


def test_fill_value_defaults_to_zero(tmp_path):
  rows = make_rows(3)
  rows[1][4] = ""
  path = write_csv(tmp_path / "train.csv", rows)
  for load in (data.parse_csv, data.load_csv):
    assert load(path, True, nan_policy="fill").images.reshape(3, -1)[1, 3] == 0


def test_digest_names_the_values_not_their_storage_dtype():
  images = np.arange(2 * 784).reshape(2, 28, 28, 1) % 256
  labels = np.array([3, 7])
  reference = data.digest(data.Digits(images.astype(np.uint8), labels.astype(np.int32)))
  assert data.digest(data.Digits(images.astype(np.int64), labels.astype(np.int64))) == reference
  assert data.digest(data.Digits(images.astype(np.uint8), None)) != reference
  ids = np.array([4, 9])
  with_ids = data.digest(data.Digits(images.astype(np.uint8), None, ids.astype(np.int64)))
  assert data.digest(data.Digits(images.astype(np.uint8), None, ids.astype(np.int32))) == with_ids


# Digests key the .npz cache and are recorded in each run's provenance: a change makes every
# cache stale and every recorded digest unmatched, so they are pinned.
def _digits(shape, labels=True, ids=False):
  images = (np.arange(3 * math.prod(shape)).reshape(3, *shape) * 7) % 256
  return data.Digits(images.astype(np.uint8), np.array([3, 1, 4], np.int32) if labels else None,
                     np.array([10, 20, 30]) if ids else None)


@pytest.mark.parametrize("digits, expected", [
    (_digits((28, 28, 1)),
     "6f171477d50fb9f335260c02687c51cb484b503b09e7cc9af55b7e5bff349632"),
    (_digits((28, 28, 1), labels=False, ids=True),
     "554a7dad18ea9325efda1b98dad07a45bc473ae8f570df1679b6fb4f44055ed7"),
    (_digits((14, 56, 1)),
     "5c288a5422da3d0cb0d5818cf6b7ed5adb62252e7a09b64d120efab5bd71ed36"),
    (_digits((28, 28, 1), labels=False),
     "f82ac268d43686841873ae191600a17e21fed6a87ac511e2e8c9c7324eab3f0e")])
def test_digest_golden_values(digits, expected):
  assert data.digest(digits) == expected


@pytest.mark.parametrize("with_labels", [True, False])
def test_a_row_of_empty_cells_is_a_row_with_empty_cells_not_a_blank_line(tmp_path, with_labels):
  rows = make_rows(4, with_labels)
  rows[2] = [""] * len(rows[2])
  path = write_csv(tmp_path / "train.csv", rows, TRAIN_COLUMNS if with_labels else PIXELS)
  user_error(path, r"\bline 4\b", "nan_policy", with_labels=with_labels)
  kept = as_array([rows[i] for i in (0, 1, 3)])
  dropped = data.parse_csv(path, with_labels, nan_policy="drop")
  np.testing.assert_array_equal(dropped.images.reshape(3, -1), kept[:, int(with_labels):])
  if with_labels:  # An empty label is never filled.
    user_error(path, r"\bline 4\b", "the label is empty", nan_policy="fill")
  else:
    filled = data.parse_csv(path, False, nan_policy="fill", fill_value=3)
    assert (filled.images[2] == 3).all() and len(filled.images) == 4


@pytest.mark.parametrize("token", ["True", "False", "true", "0x10", "1_000", "5 6"])
@pytest.mark.parametrize("whole_column", [True, False])
def test_a_non_decimal_token_is_an_error_not_a_number(tmp_path, token, whole_column):
  rows = make_rows(4)
  for i in (range(4) if whole_column else [2]):
    rows[i][6] = token
  line = 2 if whole_column else 4
  # pandas reads a column of true/false as booleans: the message shows True/False.
  user_error(write_csv(tmp_path / "train.csv", rows), rf"\bline {line}\b", r"\bpixel5\b",
             "(?i)" + re.escape(repr(token)), "not a number")


@pytest.fixture
def small_blocks(monkeypatch):
  """Parses 3 rows at a time, so a few rows span several of parse_csv's blocks."""
  monkeypatch.setattr(data, "CHUNK_ROWS", 3)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 12), block=st.integers(1, 13), blank=st.integers(0, 12))
def test_the_result_does_not_depend_on_the_block_size(tmp_path_factory, n, block, blank):
  rows = make_rows(n, seed=n)
  lines = [",".join(TRAIN_COLUMNS)] + [",".join(map(str, row)) for row in rows]
  lines.insert(1 + min(blank, n), "")  # A blank line somewhere, which is not a row.
  path = tmp_path_factory.mktemp("blocks") / "train.csv"
  path.write_text("\n".join(lines) + "\n")
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(data, "CHUNK_ROWS", block)
    digits = data.parse_csv(path, True)
  np.testing.assert_array_equal(digits.labels, as_array(rows)[:, 0])
  np.testing.assert_array_equal(digits.images.reshape(n, -1), as_array(rows)[:, 1:])


def test_errors_name_lines_in_later_blocks(tmp_path, small_blocks):
  rows = make_rows(10)
  rows[7][4] = ""
  user_error(write_csv(tmp_path / "a.csv", rows), r"pixel3 \(1 cell: line 9\)")
  rows = make_rows(10)
  rows[8].append(1)
  user_error(write_csv(tmp_path / "b.csv", rows), r"\bline 10\b", "786")
  rows = make_rows(10)
  rows[5] = rows[5][:3]
  user_error(write_csv(tmp_path / "c.csv", rows), r"\bline 7\b", r"\b3 fields\b")
  rows = make_rows(10)
  rows[4][2] = 2.5
  user_error(write_csv(tmp_path / "d.csv", rows), r"\bline 6\b", r"\bpixel1\b", "2.5")


def test_errors_count_cells_over_every_block(tmp_path, small_blocks):
  rows = make_rows(10)
  rows[1][9] = rows[4][9] = rows[8][9] = ""
  user_error(write_csv(tmp_path / "a.csv", rows), r"pixel8 \(3 cells: lines 3, 6, 10\)")
  rows = make_rows(10)
  rows[5][3] = rows[8][3] = rows[9][500] = 256
  rows[0][0] = 10  # A bad label: pixels are reported first.
  user_error(write_csv(tmp_path / "b.csv", rows), r"\bline 7\b", r"\bpixel2\b",
             r"\(3 such cells in all\)")
  rows = make_rows(10)
  for i in range(10):
    rows[i][3] = ""
  user_error(write_csv(tmp_path / "c.csv", rows), "nothing left", nan_policy="drop")


def test_a_file_that_would_not_fit_in_memory_is_refused_before_parsing(tmp_path, monkeypatch):
  path = write_csv(tmp_path / "train.csv", make_rows(3))
  gz = write_csv(tmp_path / "train.csv.gz", make_rows(3))
  assert data.text_size(gz) == len(gzip.decompress(gz.read_bytes())) == path.stat().st_size
  monkeypatch.setattr(data, "memory_available",
                      lambda: data.PEAK_PER_TEXT_BYTE * path.stat().st_size - 1)

  def parse(*args, **kwargs):
    raise AssertionError("parsed although the file cannot fit")

  monkeypatch.setattr(data, "_read_csv", parse)
  for p in (path, gz):
    user_error(p, r"needs about 0\.0 GiB of memory", "available", "free memory")
  monkeypatch.setattr(data, "memory_available", lambda: None)  # Unknown: no check.
  with pytest.raises(AssertionError, match="parsed although"):
    data.parse_csv(path, True)


def test_memory_available_reads_a_positive_number_of_bytes():
  available = data.memory_available()
  assert available is None or available > 2**20


def test_parsing_peaks_below_three_times_the_file_size(tmp_path):
  path = write_csv(tmp_path / "train.csv", make_rows(6000))
  # In a fresh process whose peak-RSS mark is reset before parsing (Linux's clear_refs): a
  # forked child starts with its parent's mark.
  code = ("import pathlib, re, sys; from dr_jax import data\n"
          "status = lambda key: int(re.search(key + r':\\s+(\\d+) kB',\n"
          "                                   pathlib.Path('/proc/self/status').read_text())[1])\n"
          "pathlib.Path('/proc/self/clear_refs').write_text('5')\n"
          "start = status('VmRSS')\n"
          "digits = data.parse_csv(pathlib.Path(sys.argv[1]), True)\n"
          "assert digits.images.shape == (6000, 28, 28, 1)\n"
          "print((status('VmHWM') - start) * 1024)\n")
  if not pathlib.Path("/proc/self/clear_refs").exists():
    pytest.skip("needs Linux's /proc/self/clear_refs to measure a peak")
  out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                       check=True).stdout
  peak = int(out)
  assert 0 < peak < 3 * path.stat().st_size, (peak, path.stat().st_size)


def cache_files(path):
  """The .npz cache files load_csv keeps beside `path`."""
  return sorted((path.parent / ".cache").glob(f"{path.name}.*.npz"))


def forbid_parsing(monkeypatch):
  """Makes any further parse_csv call fail the test."""

  def parse_csv(*args, **kwargs):
    raise AssertionError("parse_csv called although the cache should have answered")

  monkeypatch.setattr(data, "parse_csv", parse_csv)


@pytest.mark.parametrize("with_labels", [True, False])
def test_cache_answers_the_second_load(tmp_path, monkeypatch, with_labels):
  rows = make_rows(5, with_labels)
  path = write_csv(tmp_path / "train.csv", rows, TRAIN_COLUMNS if with_labels else PIXELS)
  first = data.load_csv(path, with_labels)
  assert len(cache_files(path)) == 1
  forbid_parsing(monkeypatch)
  second = data.load_csv(path, with_labels)
  np.testing.assert_array_equal(second.images, first.images)
  assert second.images.dtype == np.uint8 and second.images.shape == first.images.shape
  if with_labels:
    np.testing.assert_array_equal(second.labels, first.labels)
    assert second.labels.dtype == np.int32
  else:
    assert second.labels is None


def test_changed_bytes_invalidate_the_cache(tmp_path):
  rows = make_rows(3)
  path = write_csv(tmp_path / "train.csv", rows)
  data.load_csv(path, True)
  size = path.stat().st_size
  rows[1][0] = 9
  write_csv(path, rows)
  assert path.stat().st_size == size
  assert data.load_csv(path, True).labels[1] == 9
  assert len(cache_files(path)) == 2


def test_cache_key_includes_the_nan_handling(tmp_path):
  rows = make_rows(3)
  rows[0][1] = ""
  path = write_csv(tmp_path / "train.csv", rows)
  assert data.load_csv(path, True, nan_policy="fill", fill_value=0).images[0, 0, 0, 0] == 0
  assert data.load_csv(path, True, nan_policy="fill", fill_value=5).images[0, 0, 0, 0] == 5
  assert len(data.load_csv(path, True, nan_policy="drop").labels) == 2


@pytest.mark.parametrize("damage", [
    "garbage",
    "truncated", "empty"])
def test_corrupt_cache_is_rebuilt(tmp_path, monkeypatch, damage):
  rows = make_rows(4)
  path = write_csv(tmp_path / "train.csv", rows)
  data.load_csv(path, True)
  [cache] = cache_files(path)
  good = cache.read_bytes()
  cache.write_bytes({"garbage": b"not an npz file at all", "truncated": good[:len(good) // 2],
                     "empty": b""}[damage])
  digits = data.load_csv(path, True)
  np.testing.assert_array_equal(digits.labels, as_array(rows)[:, 0])
  np.testing.assert_array_equal(digits.images.reshape(4, -1), as_array(rows)[:, 1:])
  forbid_parsing(monkeypatch)
  np.testing.assert_array_equal(data.load_csv(path, True).images, digits.images)


def _rewrite_cache(cache, **arrays):
  """Replaces entries of an .npz cache, keeping the others."""
  with np.load(cache) as npz:
    entries = dict(npz) | arrays
  with open(cache, "wb") as f:
    np.savez(f, **entries)


_NOT_ONE_LABEL = "that are not one non-negative int32 per image"
_NOT_IMAGES = "not uint8 (n, height, width, channels)"
_DIGEST = "does not match the digest written with it"


@pytest.mark.parametrize("tamper,problem", [
    (lambda images, labels: {"images": images.astype(np.int16)},
     f"holds images int16(4, 28, 28, 1), {_NOT_IMAGES}"),
    (lambda images, labels: {"images": images.reshape(len(images), 784)},
     f"holds images uint8(4, 784), {_NOT_IMAGES}"),
    # The same bytes in another shape: the digest names the shape too.
    (lambda images, labels: {"images": images.reshape(len(images), 14, 56, 1)}, _DIGEST),
    (lambda images, labels: {"labels": labels.astype(np.int64)},
     f"holds labels int64(4,) {_NOT_ONE_LABEL}"),
    (lambda images, labels: {"labels": labels[:-1]}, f"holds labels int32(3,) {_NOT_ONE_LABEL}"),
    (lambda images, labels: {"labels": np.where(labels == labels.max(), 10, labels)}, _DIGEST),
    (lambda images, labels: {"labels": labels - 1}, f"holds labels int32(4,) {_NOT_ONE_LABEL}"),
    (lambda images, labels: {"images": 255 - images}, _DIGEST),
    (lambda images, labels: {"digest": np.array("0" * 64)}, _DIGEST)])
def test_a_cache_unlike_the_parse_is_rebuilt_with_a_note(tmp_path, capsys, tamper, problem):
  rows = make_rows(4)
  path = write_csv(tmp_path / "train.csv", rows)
  first = data.load_csv(path, True)
  [cache] = cache_files(path)
  _rewrite_cache(cache, **tamper(first.images, first.labels))
  capsys.readouterr()
  digits = data.load_csv(path, True)
  np.testing.assert_array_equal(digits.images, first.images)
  np.testing.assert_array_equal(digits.labels, first.labels)
  assert capsys.readouterr().err == f"note: {cache}: {problem}; rebuilding it from train.csv\n"
  assert data.load_csv(path, True).images.dtype == np.uint8 and capsys.readouterr().err == ""


@pytest.mark.parametrize("tamper,problem", [
    (lambda ids: ids.astype(np.int32), "holds ids int32(4,) that are not one int64 per image"),
    (lambda ids: ids[:-1], "holds ids int64(3,) that are not one int64 per image"),
    (lambda ids: ids + 1, _DIGEST)])
def test_a_cache_with_other_ids_is_rebuilt_with_a_note(tmp_path, capsys, tamper, problem):
  pixels = make_rows(4, with_labels=False)
  path = write_csv(tmp_path / "test.csv", [[i, *p] for i, p in zip([9, 3, 7, 5], pixels)],
                   ["id"] + PIXELS)
  first = data.load_csv(path, False)
  [cache] = cache_files(path)
  _rewrite_cache(cache, ids=tamper(first.ids))
  capsys.readouterr()
  np.testing.assert_array_equal(data.load_csv(path, False).ids, [9, 3, 7, 5])
  assert capsys.readouterr().err == f"note: {cache}: {problem}; rebuilding it from test.csv\n"


def test_a_cache_in_another_shape_than_the_configured_one_is_rebuilt(tmp_path, capsys):
  path = write_csv(tmp_path / "t.csv", make_rows(2, with_labels=False), PIXELS)
  first = data.load_csv(path, False, image_shape=(14, 56, 1))
  [cache] = cache_files(path)
  _rewrite_cache(cache, images=first.images.reshape(2, 28, 28, 1))
  capsys.readouterr()
  assert data.load_csv(path, False, image_shape=(14, 56, 1)).images.shape == (2, 14, 56, 1)
  assert capsys.readouterr().err == (
      f"note: {cache}: holds images uint8(2, 28, 28, 1), not uint8 (n, 14x56x1); rebuilding it "
      "from t.csv\n")
  # The rebuilt cache answers the next load, without a note.
  assert data.load_csv(path, False, image_shape=(14, 56, 1)).images.shape == (2, 14, 56, 1)
  assert capsys.readouterr().err == ""


def test_a_cache_without_a_digest_is_rebuilt(tmp_path, capsys):
  path = write_csv(tmp_path / "train.csv", make_rows(3))
  data.load_csv(path, True)
  [cache] = cache_files(path)
  with np.load(cache) as npz:
    entries = {k: npz[k] for k in npz.files if k != "digest"}
  with open(cache, "wb") as f:
    np.savez(f, **entries)
  data.load_csv(path, True)
  assert "cannot be read (KeyError)" in capsys.readouterr().err


def test_read_only_directory_still_loads(tmp_path, monkeypatch):
  rows = make_rows(3)
  path = write_csv(tmp_path / "train.csv", rows)
  real_mkdir = pathlib.Path.mkdir

  def refuse_inside(self, *args, **kwargs):
    if tmp_path in pathlib.Path(self).absolute().parents:
      raise PermissionError(13, "Permission denied", str(self))
    return real_mkdir(self, *args, **kwargs)

  # chmod stops other users; root ignores it, so the directory also refuses what the OS refuses
  # them: creating the cache folder inside it.
  monkeypatch.setattr(pathlib.Path, "mkdir", refuse_inside)
  tmp_path.chmod(0o555)
  try:
    digits = data.load_csv(path, True)
    np.testing.assert_array_equal(digits.labels, as_array(rows)[:, 0])
    assert not (tmp_path / ".cache").exists()
  finally:
    tmp_path.chmod(0o755)


def test_unwritable_cache_still_loads(tmp_path, monkeypatch):
  rows = make_rows(3)
  path = write_csv(tmp_path / "train.csv", rows)

  def refuse(*args):
    raise PermissionError("read-only file system")

  monkeypatch.setattr(data, "atomic_write_bytes", refuse)
  digits = data.load_csv(path, True)
  np.testing.assert_array_equal(digits.images.reshape(3, -1), as_array(rows)[:, 1:])
  assert cache_files(path) == []


@st.composite
def split_inputs(draw):
  """Labels with at least 2 images in each present class, and a val_fraction that can split them."""
  counts = draw(st.dictionaries(st.integers(0, 9), st.integers(2, 40), min_size=1))
  val_fraction = draw(st.floats(0.02, 0.6))
  labels = np.repeat(np.array(list(counts), dtype=np.int64), list(counts.values()))
  labels = np.random.default_rng(draw(st.integers(0, 2**16))).permutation(labels)
  n_val = int(np.ceil(val_fraction * len(labels)))
  assume(len(counts) <= n_val <= len(labels) - len(counts))
  return labels, val_fraction, draw(st.integers(0, 2**31 - 1))


@settings(max_examples=40, deadline=None)
@given(split_inputs())
def test_split_is_stratified_disjoint_and_complete(inputs):
  labels, val_fraction, seed = inputs
  ids = np.arange(len(labels))
  train, val = data.split(ids, labels, val_fraction, seed)
  assert len(train.images) + len(val.images) == len(labels)
  assert len(val.images) == int(np.ceil(val_fraction * len(labels)))
  assert set(train.images).isdisjoint(val.images)
  assert set(train.images) | set(val.images) == set(ids)
  np.testing.assert_array_equal(train.labels, labels[train.images])
  np.testing.assert_array_equal(val.labels, labels[val.images])
  counts = np.bincount(labels, minlength=10)
  val_counts = np.bincount(val.labels, minlength=10)
  target = counts * len(val.labels) / len(labels)
  assert np.all(np.abs(val_counts - target) <= 1), (val_counts, target)


def test_split_keeps_image_arrays_whole():
  images = np.random.default_rng(0).integers(0, 256, (40, 28, 28, 1)).astype(np.uint8)
  labels = np.arange(40) % 10
  train, val = data.split(images, labels, 0.25, seed=0)
  assert train.images.shape == (30, 28, 28, 1) and val.images.shape == (10, 28, 28, 1)
  assert train.images.dtype == np.uint8
  for part in (train, val):
    for image, label in zip(part.images, part.labels):
      [index] = np.flatnonzero((images == image).all(axis=(1, 2, 3)))
      assert labels[index] == label


def test_split_is_seeded():
  labels = np.arange(500) % 10
  ids = np.arange(500)
  a = data.split(ids, labels, 0.2, seed=1)[1].images
  b = data.split(ids, labels, 0.2, seed=1)[1].images
  c = data.split(ids, labels, 0.2, seed=2)[1].images
  np.testing.assert_array_equal(a, b)
  assert set(a) != set(c)


@pytest.mark.parametrize("val_fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_rejects_fraction_outside_open_interval(val_fraction):
  with pytest.raises(UserError, match=r"data.val_fraction=.* must lie in \(0, 1\)"):
    data.split(np.arange(40), np.arange(40) % 10, val_fraction, 0)


def test_split_rejects_a_class_with_one_image():
  labels = np.array([0] * 10 + [1] * 10 + [2])
  with pytest.raises(UserError, match="at least 2"):
    data.split(np.arange(len(labels)), labels, 0.3, 0)


def test_split_rejects_too_small_validation_set():
  labels = np.arange(40) % 10
  with pytest.raises(UserError):
    data.split(np.arange(40), labels, 0.1, 0)


def test_split_rejects_too_small_training_set():
  labels = np.arange(20) % 10  # 0.6 leaves 8 training images for 10 classes.
  with pytest.raises(UserError, match="cannot split 20 images into train/validation with "
                                      "val_fraction=0.6"):
    data.split(np.arange(20), labels, 0.6, 0)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 9), min_size=1, max_size=50))
def test_one_hot(labels):
  encoded = data.one_hot(np.array(labels), 10)
  assert encoded.shape == (len(labels), 10) and encoded.dtype == np.float32
  np.testing.assert_array_equal(encoded.sum(axis=1), 1.0)
  np.testing.assert_array_equal(encoded.argmax(axis=1), labels)
  assert set(np.unique(encoded)) <= {0.0, 1.0}


def extremes():
  """Images holding 0, 255 and random grey values."""
  images = np.random.default_rng(0).integers(0, 256, (8, 28, 28, 1)).astype(np.uint8)
  images[0, 0, 0, 0], images[0, 0, 1, 0] = 0, 255
  return images


@pytest.mark.parametrize("method,low,high", [("unit", 0.0, 1.0), ("centered", -1.0, 1.0)])
def test_fixed_normalizations_map_0_and_255(method, low, high):
  images = extremes()
  out = data.normalize(images, *data.normalization_stats(images, method))
  assert out.dtype == np.float32
  assert out[0, 0, 0, 0] == low and out[0, 0, 1, 0] == high
  assert out.min() == low and out.max() == high
  np.testing.assert_allclose(out, low + (high - low) * images / 255.0, rtol=1e-6, atol=1e-6)


def test_standardize_gives_zero_mean_unit_std():
  images = extremes() // 3
  out = data.normalize(images, *data.normalization_stats(images, "standardize"))
  assert abs(float(out.mean())) < 1e-5 and abs(float(out.std()) - 1.0) < 1e-5


def test_standardize_constant_images_does_not_divide_by_zero():
  images = np.full((2, 28, 28, 1), 9, np.uint8)
  assert data.normalization_stats(images, "standardize") == (9.0, 1.0)  # Scale 1, not 0.
  out = data.normalize(images, *data.normalization_stats(images, "standardize"))
  np.testing.assert_array_equal(out, 0.0)


def test_unknown_normalization():
  with pytest.raises(UserError, match="'minmax'"):
    data.normalization_stats(extremes(), "minmax")


@pytest.mark.parametrize("method", config.NORMALIZATIONS)
def test_normalize_jax_matches_numpy(method):
  images = extremes()
  shift, scale = data.normalization_stats(images, method)
  out = data.normalize(jnp.asarray(images), shift, scale)
  assert isinstance(out, jnp.ndarray) and out.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out), data.normalize(images, shift, scale), rtol=1e-6)


def test_find_csv_prefers_plain_then_gzip(tmp_path):
  assert data.find_csv(tmp_path, "train.csv") == tmp_path / "train.csv"
  (tmp_path / "train.csv.gz").write_bytes(b"")
  assert data.find_csv(tmp_path, "train.csv") == tmp_path / "train.csv.gz"
  (tmp_path / "train.csv").write_text("")
  assert data.find_csv(tmp_path, "train.csv") == tmp_path / "train.csv"


# Layouts of the MNIST-as-CSV family.

def _columns_from(first, count=784):
  return [f"pixel{first + i}" for i in range(count)]


def test_pixel_names_from_one_read_the_same_images_as_from_zero(tmp_path):
  rows = make_rows(5)
  zero = data.parse_csv(write_csv(tmp_path / "zero.csv", rows), True)
  one = data.parse_csv(write_csv(tmp_path / "one.csv", rows, ["label"] + _columns_from(1)), True)
  np.testing.assert_array_equal(one.images, zero.images)
  np.testing.assert_array_equal(one.labels, zero.labels)
  # In any column order, by name: pixel784 is the last pixel, pixel1 the first.
  order = np.random.default_rng(1).permutation(785)
  columns = np.array(["label"] + _columns_from(1))[order].tolist()
  shuffled = write_csv(tmp_path / "shuffled.csv", as_array(rows)[:, order].tolist(), columns)
  np.testing.assert_array_equal(data.parse_csv(shuffled, True).images, zero.images)


@pytest.mark.parametrize("pixels, shape", [(784, (28, 28, 1)), (1024, (32, 32, 1)),
                                           (16, (4, 4, 1))])
def test_a_square_pixel_count_gives_that_image(tmp_path, pixels, shape):
  rng = np.random.default_rng(0)
  values = rng.integers(0, 256, (3, pixels))
  rows = np.column_stack([[0, 1, 0], values]).tolist()
  digits = data.parse_csv(write_csv(tmp_path / "t.csv", rows, ["label"] + _columns_from(0, pixels)),
                          True)
  assert digits.images.shape == (3, *shape)
  np.testing.assert_array_equal(digits.images.reshape(3, -1), values)


def test_image_shape_lays_pixels_out_row_major_with_channels_last(tmp_path):
  values = np.arange(2 * 4 * 6 * 3).reshape(2, 72) % 256
  path = write_csv(tmp_path / "rgb.csv", values.tolist(), _columns_from(0, 72))
  digits = data.parse_csv(path, False, image_shape=(4, 6, 3))
  assert digits.images.shape == (2, 4, 6, 3)
  # pixel k is (row, column, channel) = divmod chain of k over (6 × 3, 3).
  assert digits.images[1, 2, 5, 1] == values[1, (2 * 6 + 5) * 3 + 1]
  message = user_error(path, with_labels=False, image_shape=(4, 4, 3))
  assert message.endswith("unexpected column(s) pixel48, pixel49, pixel50, pixel51, pixel52 and 19 "
                          "more; expected the header `pixel0,...,pixel47`")


def test_a_pixel_count_that_is_no_square_names_the_missing_columns(tmp_path):
  path = write_csv(tmp_path / "t.csv", [[1] * 1020], _columns_from(0, 1020))
  assert user_error(path, with_labels=False).endswith(
      "missing column(s) pixel1020, pixel1021, pixel1022, pixel1023; expected the header "
      "`pixel0,...,pixel1023` (32×32 pixels; for images that are not square set "
      "--config.data.image_shape=HEIGHT,WIDTH,CHANNELS)")
  # Told the layout, the same file reads.
  assert data.parse_csv(path, False, image_shape=(30, 34, 1)).images.shape == (1, 30, 34, 1)


@pytest.mark.parametrize("name", ["id", "ImageId", "ID", "imageid"])
def test_a_test_files_id_column_is_read_as_ids_in_any_position(tmp_path, monkeypatch, name):
  pixels = make_rows(4, with_labels=False)
  ids = [0, 7, 3, 100]
  rows = [[*p[:5], i, *p[5:]] for p, i in zip(pixels, ids)]
  path = write_csv(tmp_path / "test.csv", rows, PIXELS[:5] + [name] + PIXELS[5:])
  digits = data.load_csv(path, False)
  np.testing.assert_array_equal(digits.ids, ids)
  assert digits.ids.dtype == np.int64
  np.testing.assert_array_equal(digits.images.reshape(4, -1), pixels)
  assert data.parse_csv(write_csv(tmp_path / "plain.csv", pixels, PIXELS), False).ids is None
  forbid_parsing(monkeypatch)
  cached = data.load_csv(path, False)  # From the cache: the ids too.
  np.testing.assert_array_equal(cached.ids, ids)
  assert cached.ids.dtype == np.int64


def test_id_errors_name_the_lines(tmp_path):
  pixels = make_rows(4, with_labels=False)
  rows = [[i, *p] for i, p in zip([5, 6, 7, 6], pixels)]
  path = write_csv(tmp_path / "dup.csv", rows, ["id"] + PIXELS)
  assert user_error(path, with_labels=False).endswith(
      "id 6 is on lines 3 and 5; each test image needs its own id")
  # Four rows share an id among 300 shuffled ones: the first two are named (a stable sort;
  # numpy's default sort names lines 62 and 299 here).
  ids = np.random.default_rng(0).permutation(300) + 1000
  ids[[30, 60, 150, 297]] = 7
  four = write_csv(tmp_path / "dup4.csv", [[i, *p] for i, p in zip(
      ids.tolist(), make_rows(300, with_labels=False))], ["id"] + PIXELS)
  assert user_error(four, with_labels=False).endswith(
      "id 7 is on lines 32 and 62; each test image needs its own id")
  rows[3][0] = "x"
  assert user_error(write_csv(tmp_path / "word.csv", rows, ["id"] + PIXELS),
                    with_labels=False).endswith(
      "line 5 (data row 4): column id holds 'x', not a number; every cell must be an integer")
  rows[3][0] = ""
  empty = write_csv(tmp_path / "empty.csv", rows, ["id"] + PIXELS)
  assert user_error(empty, with_labels=False, nan_policy="fill").endswith(
      "line 5 (data row 4): the id (id) is empty; data.nan_policy=fill fills pixels only (a "
      "filled label or id would be wrong): fix the row or use --config.data.nan_policy=drop")
  np.testing.assert_array_equal(data.parse_csv(empty, False, nan_policy="drop").ids, [5, 6, 7])
  # A training file has no id column: there it is an unexpected column.
  train = write_csv(tmp_path / "train.csv", [[1, 0, *p] for p in pixels], ["label", "id"] + PIXELS)
  assert "unexpected column(s) id;" in user_error(train)


def test_a_file_without_header_reads_with_header_false(tmp_path):
  rows = make_rows(5)
  with_header = write_csv(tmp_path / "with.csv", rows)
  without = write_csv(tmp_path / "without.csv", rows, None)
  expected = data.parse_csv(with_header, True)
  digits = data.load_csv(without, True, header=False)
  np.testing.assert_array_equal(digits.images, expected.images)
  np.testing.assert_array_equal(digits.labels, expected.labels)
  assert user_error(without).endswith(
      "the first line holds numbers, not column names; for a file without a header pass "
      "--config.data.header=false")
  # Lines are the file's own: data row 3 is line 3 when there is no header.
  rows[2][7] = 300
  bad = write_csv(tmp_path / "bad.csv", rows, None)
  assert user_error(bad, header=False).endswith(
      "line 3 (data row 3): column pixel6 is 300, outside 0..255; pixels must lie in 0..255")
  test = write_csv(tmp_path / "test.csv", make_rows(3, with_labels=False), None)
  assert data.parse_csv(test, False, header=False).images.shape == (3, 28, 28, 1)
  # An empty cell and a short row are named by the file's own lines too.
  rows = make_rows(5)
  rows[3][5] = ""
  empty = write_csv(tmp_path / "empty.csv", rows, None)
  assert user_error(empty, header=False).endswith(
      "empty or NaN cells in pixel4 (1 cell: line 4); fix the file, or set "
      "--config.data.nan_policy=drop (drop those rows) or =fill (use data.fill_value)")
  rows = make_rows(5)
  rows[2] = rows[2][:-1]
  short = write_csv(tmp_path / "short.csv", rows, None)
  assert user_error(short, header=False).endswith(
      "line 3 (data row 3): has 784 fields, expected 785 like the first line; fix or remove "
      "that row")


def test_a_header_only_file_has_no_rows_whatever_the_nan_policy(tmp_path):
  header_only = write_csv(tmp_path / "train.csv", [])
  for policy in ("error", "drop", "fill"):
    assert user_error(header_only, nan_policy=policy).endswith(
        "has a header but no rows; expected one row per image")


def test_labels_are_any_non_negative_integers(tmp_path):
  rows = make_rows(4)
  for row, label in zip(rows, [0, 24, 1000, 3]):
    row[0] = label
  np.testing.assert_array_equal(data.parse_csv(write_csv(tmp_path / "t.csv", rows), True).labels,
                                [0, 24, 1000, 3])
  rows[1][0] = 2**31
  assert user_error(write_csv(tmp_path / "big.csv", rows)).endswith(
      "line 3 (data row 2): column label is 2.14748e+09, outside 0..2147483647; labels are "
      "non-negative int32 integers")


def test_the_cache_keeps_layouts_apart(tmp_path):
  path = write_csv(tmp_path / "t.csv", make_rows(2, with_labels=False), PIXELS)
  square = data.load_csv(path, False)
  wide = data.load_csv(path, False, image_shape=(14, 56, 1))
  assert square.images.shape[1:] == (28, 28, 1) and wide.images.shape[1:] == (14, 56, 1)
  assert data.load_csv(path, False).images.shape[1:] == (28, 28, 1)
  assert data.digest(square) != data.digest(wide)
  assert len(list((tmp_path / ".cache").glob("*.npz"))) == 2
  # Two explicit shapes: a cache each as well.
  assert data.load_csv(path, False, image_shape=(56, 14, 1)).images.shape[1:] == (56, 14, 1)
  assert len(list((tmp_path / ".cache").glob("*.npz"))) == 3
