"""dr_jax from Python (a notebook, a script): the CLI's commands as functions returning results.

Each takes what its command takes and fills the same defaults: the data directory of a run's
own training (then Kaggle's notebook input, then `data/`), a config by path or shipped name.
Errors are `dr_jax.errors.UserError` with the one-line message the CLI prints.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import sys
import time
from typing import Sequence

import ml_collections

from dr_jax import config as config_lib
from dr_jax.errors import UserError

PathLike = str | pathlib.Path
# Where a Kaggle notebook mounts the competition's files (read-only).
KAGGLE_INPUT = pathlib.Path("/kaggle/input/digit-recognizer")
LOCAL_DATA = pathlib.Path("data")


def _note(message: str) -> None:
  """A line on stderr saying which default a command chose."""
  print(f"dr-jax: {message}", file=sys.stderr, flush=True)


def default_data_dir() -> pathlib.Path:
  """`data/`, or a Kaggle notebook's competition input when `data/` has no train.csv."""
  if not (LOCAL_DATA / "train.csv").exists() and (KAGGLE_INPUT / "train.csv").is_file():
    _note(f"using the Kaggle input {KAGGLE_INPUT}")
    return KAGGLE_INPUT
  return LOCAL_DATA


def data_dir_of(workdir: PathLike, data_dir: PathLike | None) -> pathlib.Path:
  """`data_dir` if given, else the directory of the train.csv the run was trained on."""
  if data_dir is not None:
    return pathlib.Path(data_dir)
  from dr_jax import provenance

  recorded = provenance.train_data_dir(pathlib.Path(workdir))
  if recorded is not None and recorded.is_dir():
    _note(f"using the data {workdir} was trained on: {recorded} (--data-dir to change)")
    return recorded
  return default_data_dir()


def resolve_config(config: PathLike | ml_collections.ConfigDict,
                   overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """A config file (a path, or a shipped name such as "default") with `KEY=VALUE` overrides,
  checked."""
  cfg = config if isinstance(config, ml_collections.ConfigDict) else \
      config_lib.load_config(config)
  cfg = config_lib.apply_overrides(cfg, list(overrides))
  config_lib.check(cfg)
  return cfg


def fetch(data_dir: PathLike | None = None, source: str = "auto"):
  """Makes sure the data directory holds train.csv and test.csv (a `fetch.FetchResult`)."""
  from dr_jax import fetch as fetch_lib

  return fetch_lib.fetch(pathlib.Path(data_dir) if data_dir is not None else default_data_dir(),
                         source=source)


def default_workdir(config: PathLike | ml_collections.ConfigDict) -> pathlib.Path:
  """`runs/<config file's name>` (`runs/run` for a ConfigDict)."""
  name = "run" if isinstance(config, ml_collections.ConfigDict) else pathlib.Path(config).stem
  return pathlib.Path("runs") / name


def train(config: PathLike | ml_collections.ConfigDict, workdir: PathLike | None = None,
          data_dir: PathLike | None = None, overrides: Sequence[str] = ()) -> dict:
  """Trains (or resumes) a config; returns best epoch, best val accuracy, epochs and workdir."""
  from dr_jax import pseudo, train as train_lib, xla

  cfg = resolve_config(config, overrides)
  xla.use_compilation_cache()
  workdir = pathlib.Path(workdir) if workdir is not None else default_workdir(config)
  data = pathlib.Path(data_dir) if data_dir is not None else default_data_dir()
  return train_lib.train_and_evaluate(cfg, workdir, data, pseudo.for_config(cfg, data))


@dataclasses.dataclass(frozen=True)
class Submission:
  """A written submission and the runs' predictors that made it."""

  path: pathlib.Path
  predictors: list  # evaluate.Predictor, one per run (imported lazily: it imports jax).


def predict(workdir: PathLike | Sequence[PathLike], data_dir: PathLike | None = None,
            out: PathLike | None = None, tta: int | None = None,
            vote: bool = False) -> Submission:
  """Writes a submission from a run's best checkpoint (several runs: their blend, needs `out`;
  default WORKDIR/submission.csv)."""
  from dr_jax import predict as predict_lib, xla

  workdirs = [pathlib.Path(workdir)] if isinstance(workdir, (str, pathlib.Path)) else \
      [pathlib.Path(w) for w in workdir]
  if not workdirs:
    raise UserError("predict: give at least one run directory")
  if len(workdirs) > 1 and out is None:
    raise UserError("predict: blending several --workdir runs needs --out FILE for the result")
  xla.use_compilation_cache()
  target = pathlib.Path(out) if out is not None else workdirs[0] / "submission.csv"
  path, predictors = predict_lib.blend(workdirs, data_dir_of(workdirs[0], data_dir), target,
                                       tta=tta, vote=vote)
  return Submission(path, predictors)


def validate(workdir: PathLike | Sequence[PathLike], data_dir: PathLike | None = None,
             tta: Sequence[int] = (1, 3, 5, 7, 9)):
  """Validation errors of a run's best checkpoint per TTA count (a `predict.Validation`); of
  several runs' and their blend's, on the split they share, for a list of runs."""
  from dr_jax import predict as predict_lib, xla

  xla.use_compilation_cache()
  if isinstance(workdir, (str, os.PathLike)):
    return predict_lib.validate(pathlib.Path(workdir), data_dir_of(workdir, data_dir),
                                tuple(tta))
  runs = [pathlib.Path(w) for w in workdir]
  if len(runs) == 1:
    return predict_lib.validate(runs[0], data_dir_of(runs[0], data_dir), tuple(tta))
  return predict_lib.validate_blend(runs, data_dir_of(runs[0], data_dir), tuple(tta))


def score(submission: PathLike, answers: PathLike | None = None,
          data_dir: PathLike | None = None) -> float:
  """Accuracy of a submission against an answers file (default DATA_DIR/test_answers.csv)."""
  from dr_jax import predict as predict_lib

  return predict_lib.score(pathlib.Path(submission), _answers(answers, data_dir))


def compare(submissions: Sequence[PathLike], answers: PathLike | None = None,
            data_dir: PathLike | None = None) -> str:
  """Markdown tables: each submission's accuracy, then each later one against the first on the
  same answers (`score`'s answers file)."""
  from dr_jax import predict as predict_lib

  return predict_lib.compare([pathlib.Path(s) for s in submissions], _answers(answers, data_dir))


def score_by_source(submissions: Sequence[PathLike], answers: PathLike | None = None,
                    data_dir: PathLike | None = None) -> str:
  """A Markdown table: each submission's accuracy on the embedded data's answers, all of them and
  split by where MNIST had each image (its test set, its training set)."""
  from dr_jax import fetch, predict as predict_lib

  labels, from_mnist_test = fetch.embedded_test_sources()
  return predict_lib.score_by_source([pathlib.Path(s) for s in submissions],
                                     _answers(answers, data_dir), labels, from_mnist_test)


def _answers(answers: PathLike | None, data_dir: PathLike | None) -> pathlib.Path:
  """The answers file given, else DATA_DIR/test_answers.csv."""
  from dr_jax.fetch import ANSWERS_FILE

  if answers is not None:
    return pathlib.Path(answers)
  return (pathlib.Path(data_dir) if data_dir is not None else default_data_dir()) / ANSWERS_FILE


def report(workdir: PathLike, data_dir: PathLike | None = None,
           digit: int | None = None) -> pathlib.Path:
  """Figures of a trained run in WORKDIR/report/; returns the path of its index.md."""
  from dr_jax import report as report_lib, xla

  xla.use_compilation_cache()
  return report_lib.make_report(pathlib.Path(workdir), data_dir_of(workdir, data_dir), digit)


def submit(target: PathLike, message: str) -> str:
  """Submits a run's submission.csv (or a CSV) to the competition; returns what was sent."""
  from dr_jax import competition

  return competition.submit(pathlib.Path(target), message)


def run(config: PathLike | ml_collections.ConfigDict = "default",
        workdir: PathLike = "runs/default", data_dir: PathLike | None = None,
        overrides: Sequence[str] = ()) -> dict:
  """fetch → train → predict → score: the submission, the best checkpoint and its epoch and
  validation accuracy, the minutes taken, and the test accuracy where answers exist."""
  from dr_jax.fetch import ANSWERS_FILE

  start = time.time()
  data = fetch(data_dir).data_dir
  workdir = pathlib.Path(workdir)
  summary = train(config, workdir, data, overrides)
  submission = predict(workdir, data).path
  answers = data / ANSWERS_FILE
  return {"submission": submission, "checkpoint": workdir / "checkpoints" / "best",
          "best_epoch": summary["best_epoch"],
          "best_val_accuracy": summary["best_val_accuracy"], "final_fit": summary["final_fit"],
          "minutes": (time.time() - start) / 60,
          "accuracy": score(submission, answers) if answers.is_file() else None}
