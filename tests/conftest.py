"""Shared fixtures: a tiny learnable Kaggle-format dataset and runners for the `dr-jax` CLI.

Every test process (xdist workers and the CLI subprocesses tests start) shares one persistent
JAX compilation cache, <rootdir>/.pytest_cache/jax unless JAX_COMPILATION_CACHE_DIR names
another, kept across runs: a program compiled once is loaded from disk afterwards.
"""

from __future__ import annotations

import contextlib
import io
import os
import pathlib
import subprocess
import sys
from typing import Callable, Iterator

import numpy as np
import pytest

PIXEL_HEADER = ",".join(f"pixel{i}" for i in range(784))
# JAX's persistent-cache options as environment variables (read when jax is imported): every
# compiled program is cached, however quick its compile or small its executable.
JAX_CACHE_ENV = {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                 "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def pytest_configure(config: pytest.Config) -> None:
  """Points this process, and the subprocesses it starts, at the suite's compilation cache
  (JAX_COMPILATION_CACHE_DIR, when set, names another one)."""
  cache = pathlib.Path(os.environ.get("JAX_COMPILATION_CACHE_DIR")
                       or config.rootpath / ".pytest_cache" / "jax").absolute()
  cache.mkdir(parents=True, exist_ok=True)
  os.environ.update(JAX_CACHE_ENV, JAX_COMPILATION_CACHE_DIR=str(cache))
  if "jax" in sys.modules:  # Imported before this hook (by a plugin): set the options directly.
    import jax

    jax.config.update("jax_compilation_cache_dir", str(cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def synthetic_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """`n` noisy 28x28 uint8 images (flattened) whose class is where a bright 8x5 block sits."""
  rng = np.random.default_rng(seed)
  labels = np.arange(n) % 10
  rng.shuffle(labels)
  images = rng.integers(0, 60, (n, 28, 28), dtype=np.uint8)
  for image, label in zip(images, labels):
    row, col = divmod(int(label), 5)
    image[2 + 14 * row: 10 + 14 * row, 1 + 5 * col: 6 + 5 * col] = 255
  return images.reshape(n, 784), labels


def csv_text(header: str, rows: np.ndarray) -> str:
  """A CSV with `header` and one comma-joined line per row of integers."""
  return header + "\n" + "".join(",".join(map(str, row)) + "\n" for row in rows)


def write_kaggle_dir(path: pathlib.Path, n_train: int = 400, n_test: int = 100,
                     seed: int = 0) -> pathlib.Path:
  """Writes train.csv, test.csv, test_answers.csv and sample_submission.csv into `path`."""
  path.mkdir(parents=True, exist_ok=True)
  images, labels = synthetic_digits(n_train + n_test, seed)
  train = np.column_stack([labels[:n_train], images[:n_train]])
  (path / "train.csv").write_text(csv_text("label," + PIXEL_HEADER, train))
  (path / "test.csv").write_text(csv_text(PIXEL_HEADER, images[n_train:]))
  ids = np.arange(1, n_test + 1)
  (path / "test_answers.csv").write_text(
      csv_text("ImageId,Label", np.column_stack([ids, labels[n_train:]])))
  (path / "sample_submission.csv").write_text(
      csv_text("ImageId,Label", np.column_stack([ids, np.zeros(n_test, int)])))
  return path


def family_images(n: int, shape: tuple[int, int, int], classes: tuple[int, ...],
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
  """`n` noisy uint8 images `shape` (flattened row-major) whose label is where a bright block
  sits on a grid with one cell per class; labels cycle through `classes`."""
  rng = np.random.default_rng(seed)
  labels = np.array(classes)[np.arange(n) % len(classes)]
  rng.shuffle(labels)
  height, width, channels = shape
  cols = int(np.ceil(np.sqrt(len(classes))))
  cell_h, cell_w = height // cols, width // cols
  images = rng.integers(0, 60, (n, *shape), dtype=np.uint8)
  for image, label in zip(images, labels):
    row, col = divmod(classes.index(int(label)), cols)
    image[row * cell_h: (row + 1) * cell_h, col * cell_w: (col + 1) * cell_w] = 255
  return images.reshape(n, -1), labels


def write_family_dir(path: pathlib.Path, shape: tuple[int, int, int] = (28, 28, 1),
                     classes: tuple[int, ...] = tuple(range(10)), first_pixel: int = 0,
                     ids_from: int | None = None, header: bool = True, n_train: int = 400,
                     n_test: int = 60, seed: int = 0) -> pathlib.Path:
  """A dataset of the MNIST-as-CSV family: pixel names from `first_pixel`; with `ids_from`,
  test.csv has an `id` column counting from it and sample_submission.csv / test_answers.csv
  are `id,label` (else no sample and `ImageId,Label` answers from 1); `header=False` writes
  train.csv and test.csv without a header."""
  path.mkdir(parents=True, exist_ok=True)
  images, labels = family_images(n_train + n_test, shape, classes, seed)
  pixels = ",".join(f"pixel{first_pixel + i}" for i in range(images.shape[1]))
  train = np.column_stack([labels[:n_train], images[:n_train]])
  test = images[n_train:]
  ids = np.arange(1, n_test + 1) if ids_from is None else np.arange(ids_from, ids_from + n_test)
  test_header = pixels
  if ids_from is not None:
    test, test_header = np.column_stack([ids, test]), "id," + pixels
    (path / "sample_submission.csv").write_text(
        csv_text("id,label", np.column_stack([ids, np.zeros(n_test, int)])))
  for name, head, rows in (("train.csv", "label," + pixels, train),
                           ("test.csv", test_header, test)):
    text = csv_text(head, rows)
    (path / name).write_text(text if header else text.split("\n", 1)[1])
  answers = "id,label" if ids_from is not None else "ImageId,Label"
  (path / "test_answers.csv").write_text(
      csv_text(answers, np.column_stack([ids, labels[n_train:]])))
  return path


# Plain SGD without dropout or augmentation: a smooth update, so parameters after a few steps on
# several devices or processes differ from 1 device only by float summation order (RMSprop's
# g/sqrt(v) near v = 0 amplifies that noise into sign flips, which would hide a real difference).
SMOOTH = ["--config.optimizer.name=sgd", "--config.optimizer.lr=0.05",
          "--config.schedule.name=constant", "--config.augment.rotation=0",
          "--config.augment.zoom=0", "--config.augment.shift=0",
          "--config.model.kwargs.dropout_conv=0", "--config.model.kwargs.dropout_dense=0",
          "--config.model.kwargs.widths=(8, 16)", "--config.model.kwargs.dense=32",
          "--config.num_epochs=1", "--config.batch_size=32", "--config.data.subset=0",
          "--config.data.val_fraction=0.1"]


def tiny_config(**overrides):
  """A small, fast config (narrow classic CNN, 2 epochs) with dotted-key overrides."""
  from dr_jax import config

  cfg = config.get_base_config()
  cfg.num_epochs = 2
  cfg.batch_size = 32
  cfg.data.val_fraction = 0.1
  cfg.model.kwargs.widths = (8, 16)
  cfg.model.kwargs.dense = 32
  cfg.train.steps_per_call = 3
  cfg.train.eval_batch_size = 16
  return config.apply_overrides(cfg, [f"{k}={v}" for k, v in overrides.items()])


@pytest.fixture(scope="module")
def data_dir(kaggle_dir: Callable[..., pathlib.Path]) -> pathlib.Path:
  """A module's tiny learnable dataset: 300 training and 20 test images."""
  return kaggle_dir(n_train=300, n_test=20)


@pytest.fixture(scope="session")
def kaggle_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., pathlib.Path]:
  """Factory of fresh tiny Kaggle-format data dirs:
  `kaggle_dir(n_train=400, n_test=100, seed=0)`."""
  return lambda **kwargs: write_kaggle_dir(tmp_path_factory.mktemp("data"), **kwargs)


@pytest.fixture(scope="session")
def cli_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
  """Environment for CLI subprocesses: CPU only, a throwaway HOME and data cache (no
  credentials), and the suite's JAX compilation cache."""
  home = tmp_path_factory.mktemp("home")
  env = {k: v for k, v in os.environ.items()
         if not k.startswith("KAGGLE_") and k != "XDG_CACHE_HOME"}
  env.update(JAX_PLATFORMS="cpu", HOME=str(home), DR_JAX_CACHE=str(home / "cache"),
             PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2", **JAX_CACHE_ENV,
             JAX_COMPILATION_CACHE_DIR=os.environ["JAX_COMPILATION_CACHE_DIR"])
  return env


@contextlib.contextmanager
def cli_isolation(cli_env: dict[str, str]) -> Iterator[None]:
  """This process's environment as `cli_env` gives it to subprocesses, for in-process runs:
  the same throwaway HOME and data cache, no Kaggle credentials."""
  with pytest.MonkeyPatch.context() as mp:
    for key in [k for k in os.environ if k.startswith("KAGGLE_")] + ["XDG_CACHE_HOME"]:
      mp.delenv(key, raising=False)
    for key in ("HOME", "DR_JAX_CACHE"):
      mp.setenv(key, cli_env[key])
    yield


def call_main(args: tuple[str | os.PathLike, ...]) -> tuple[int, str, str]:
  """`dr_jax.cli.main(ARGS)` in this process; returns (returncode, stdout, stderr).

  main returns 2 after printing one line for a UserError; argparse's own errors exit 2."""
  from dr_jax import cli

  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
      code = cli.main([str(arg) for arg in args])
    except SystemExit as e:
      code = 0 if e.code is None else e.code if isinstance(e.code, int) else 1
  return code, out.getvalue(), err.getvalue()


def record_predictor_calls(monkeypatch: pytest.MonkeyPatch, keyword: str) -> list:
  """The `keyword` argument of every `evaluate.Predictor.probabilities` call from now on (the
  calls still run): checks that an option reaches the predictor where its effect may not show."""
  from dr_jax import evaluate

  seen: list = []
  real = evaluate.Predictor.probabilities
  monkeypatch.setattr(evaluate.Predictor, "probabilities",
                      lambda self, *a, **k: seen.append(k.get(keyword)) or real(self, *a, **k))
  return seen


@pytest.fixture
def cli_main(cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
             ) -> Callable[..., tuple[int, str, str]]:
  """Runs `dr-jax ARGS...` in this process (no interpreter start, and programs compiled
  by earlier tests are reused); returns (returncode, stdout, stderr) like `run_cli`."""

  def run(*args: str | os.PathLike, cwd: pathlib.Path | None = None) -> tuple[int, str, str]:
    if cwd is not None:
      monkeypatch.chdir(cwd)
    with cli_isolation(cli_env):
      return call_main(args)

  return run


@pytest.fixture(scope="session")
def run_cli(cli_env: dict[str, str]) -> Callable[..., tuple[int, str, str]]:
  """Runs `python -m dr_jax ARGS...` in a subprocess; returns (returncode, stdout, stderr)."""

  def run(*args: str | os.PathLike, cwd: pathlib.Path | None = None,
          timeout: float = 300) -> tuple[int, str, str]:
    proc = subprocess.run([sys.executable, "-m", "dr_jax", *map(str, args)], cwd=cwd,
                          env=cli_env, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr

  return run
