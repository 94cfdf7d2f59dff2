"""Best checkpoint → vectorized predictions → `submission.csv`; validation per TTA; scoring."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Sequence

import numpy as np
import pandas as pd

from dr_jax import augment, build, distributed, evaluate, provenance
from dr_jax.evaluate import Predictor
from dr_jax.errors import UserError
from dr_jax.files import atomic_write_text


def submission_text(labels: np.ndarray) -> str:
  """Kaggle's format: `ImageId,Label` with 1-based ImageIds, one row per test image."""
  rows = "".join(f"{i},{int(label)}\n" for i, label in enumerate(labels, start=1))
  return "ImageId,Label\n" + rows


def predict(workdir: pathlib.Path, data_dir: pathlib.Path, out: pathlib.Path | None = None,
            tta: int | None = None, vote: bool = False) -> tuple[pathlib.Path, Predictor]:
  """Predicts test.csv with the best checkpoint and writes the submission atomically.

  `tta=None` uses the run's predict.tta. The submission goes to WORKDIR/submission.csv unless
  `out` is given.
  """
  out = pathlib.Path(out) if out else pathlib.Path(workdir) / "submission.csv"
  out, (predictor,) = blend([workdir], data_dir, out, tta, vote)
  return out, predictor


def _check_out(out: pathlib.Path, workdirs: Sequence[pathlib.Path],
               data_dir: pathlib.Path) -> None:
  """Refuses a submission path that is one of the command's inputs (before any work)."""
  inputs = [pathlib.Path(data_dir) / name for name in
            ("train.csv", "test.csv", "train.csv.gz", "test.csv.gz", "sample_submission.csv")]
  target = out.resolve()
  if any(target == p.resolve() for p in inputs if p.exists()):
    raise UserError(f"--out {out} is one of the input files; write the submission elsewhere "
                    "(default: WORKDIR/submission.csv)")
  for workdir in workdirs:
    for kept in ("checkpoints", "config.json", "provenance.json", "metrics.jsonl"):
      place = (pathlib.Path(workdir) / kept).resolve()
      if target == place or place in target.parents:
        raise UserError(f"--out {out} is inside {workdir}'s {kept}, which predict reads; write "
                        "the submission elsewhere (default: WORKDIR/submission.csv)")


def blend(workdirs: Sequence[pathlib.Path], data_dir: pathlib.Path, out: pathlib.Path,
          tta: int | None = None, vote: bool = False) -> tuple[pathlib.Path, list[Predictor]]:
  """Predicts test.csv with several runs' best checkpoints, each member weighted alike.

  Runs of different architectures or configs blend too, which one vmapped program cannot
  hold. `tta=None` uses each run's predict.tta.
  """
  _check_out(pathlib.Path(out), workdirs, data_dir)
  total, predictors = None, []
  for workdir in workdirs:
    predictor = evaluate.load_predictor(workdir)
    cfg = provenance.read_config(workdir)
    test = build.load_test(cfg, data_dir)
    probs = predictor.members * predictor.probabilities(test.images, tta=tta, vote=vote)
    if total is not None and probs.shape != total.shape:
      raise UserError(f"{workdir}: its data settings keep {len(probs)} test images, the runs "
                      f"before it {len(total)}; blend runs with the same data.nan_policy")
    total = probs if total is None else total + probs
    predictors.append(predictor)
  if distributed.is_primary():  # Every process holds all the labels; one writes them.
    assert total is not None, "blend needs at least one run"
    atomic_write_text(out, submission_text(total.argmax(axis=-1)))
  return pathlib.Path(out), predictors


@dataclasses.dataclass(frozen=True)
class Validation:
  """Validation errors of a run's members (and ensemble) for several test-time-transform counts."""

  ttas: tuple[int, ...]
  member_errors: np.ndarray  # (len(ttas), members): each on its own validation split.
  ensemble_errors: np.ndarray | None  # (len(ttas),) when all members share one split.
  n_val: int  # Images in each member's validation split.

  def table(self) -> str:
    """A Markdown table: one row per TTA count."""
    members = self.member_errors.shape[1]
    head = ["tta", *(f"member {m}" for m in range(members)), "member mean accuracy"]
    if self.ensemble_errors is not None:
      head.append("ensemble accuracy")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, tta in enumerate(self.ttas):
      errors = self.member_errors[i]
      row = [str(tta), *(str(int(e)) for e in errors), f"{1 - errors.mean() / self.n_val:.5f}"]
      if self.ensemble_errors is not None:
        row.append(f"{1 - self.ensemble_errors[i] / self.n_val:.5f} "
                   f"({int(self.ensemble_errors[i])} wrong)")
      lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def validate(workdir: pathlib.Path, data_dir: pathlib.Path,
             ttas: tuple[int, ...] = (1, 3, 5, 7, 9)) -> Validation:
  """Errors of each member of the best checkpoint on its own validation split, per TTA count.

  The split is rebuilt from the run's config and train.csv, so `data_dir` must hold the
  train.csv the run was trained on (checked against provenance.json). This is how to choose
  predict.tta without the test answers.
  """
  for tta in ttas:
    augment.check_tta(tta, f"--tta {tta}")
  predictor = evaluate.load_predictor(workdir)
  cfg, split = build.load_run_split(workdir, data_dir)
  member_errors = np.zeros((len(ttas), predictor.members), np.int64)
  shared = predictor.members > 1 and not cfg.ensemble.own_split
  ensemble_errors = np.zeros(len(ttas), np.int64) if shared else None
  for m in range(predictor.members):
    member = predictor.member(m)
    images, labels = split.images[split.val_idx[m]], split.labels[split.val_idx[m]]
    for i, tta in enumerate(ttas):
      wrong = member.probabilities(images, tta=tta).argmax(-1) != labels
      member_errors[i, m] = wrong.sum()
  if ensemble_errors is not None:  # `shared`
    for i, tta in enumerate(ttas):
      wrong = predictor.probabilities(split.val.images, tta=tta).argmax(-1) != split.val.labels
      ensemble_errors[i] = wrong.sum()
  return Validation(tuple(ttas), member_errors, ensemble_errors, split.val_idx.shape[1])


def read_labels(path: pathlib.Path, role: str) -> pd.Series:
  """Reads an `ImageId,Label` file into a Series indexed by ImageId, validated."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise UserError(f"{role} file {path} not found")
  try:
    # As text: a cell is judged as the file writes it (`4.0` and `3.5` are not ImageIds).
    frame = pd.read_csv(path, encoding="utf-8-sig", dtype=str, keep_default_na=False)
  except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
    raise UserError(f"{path}: not a readable CSV ({str(e).strip().splitlines()[-1]})") from None
  if list(frame.columns) != ["ImageId", "Label"]:
    names = list(map(str, frame.columns))
    # A test.csv passed by mistake has 784 names: show where it goes wrong, not all of them.
    header = ",".join(names) if len(names) <= 4 else \
        f"{','.join(names[:3])},… ({len(names)} columns)"
    raise UserError(f"{path}: header is {header}; expected the 2 columns ImageId,Label")
  if frame.empty:
    raise UserError(f"{path}: has a header but no rows; expected one ImageId,Label row per "
                    "test image")
  for column in ("ImageId", "Label"):
    cells = frame[column].str.strip()
    bad = np.flatnonzero(~cells.str.fullmatch(r"[+-]?\d+").to_numpy(bool))
    if len(bad):
      row = int(bad[0])
      raise UserError(f"{path}: line {row + 2}: {column} must be an integer, got "
                      f"{frame[column].iloc[row]!r}")
    frame[column] = cells.astype(np.int64)
  dupes = frame["ImageId"][frame["ImageId"].duplicated()]
  if len(dupes):
    raise UserError(f"{path}: ImageId {int(dupes.iloc[0])} appears more than once "
                    f"({len(dupes)} duplicate row(s)); each ImageId must appear once")
  return frame.set_index("ImageId")["Label"]


def score(submission: pathlib.Path, answers: pathlib.Path) -> float:
  """Accuracy of a submission against an answers file, like Kaggle's leaderboard."""
  predicted = read_labels(submission, "submission")
  truth = read_labels(answers, "answers")
  missing = truth.index.difference(predicted.index)
  extra = predicted.index.difference(truth.index)
  if len(missing) or len(extra):
    parts = []
    if len(missing):
      parts.append(f"{len(missing)} ImageId(s) missing (first {int(missing[0])})")
    if len(extra):
      parts.append(f"{len(extra)} unknown ImageId(s) (first {int(extra[0])})")
    raise UserError(f"{submission}: {'; '.join(parts)}; a submission needs exactly one row for "
                    f"each of the {len(truth)} ImageIds in {answers}")
  return float((predicted.loc[truth.index].to_numpy() == truth.to_numpy()).mean())
