"""Best checkpoint → vectorized predictions → `submission.csv`; validation per TTA; scoring."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import pathlib
from typing import Sequence

import ml_collections
import numpy as np
import pandas as pd

from dr_jax import augment, build, data, distributed, evaluate, provenance
from dr_jax.evaluate import Predictor
from dr_jax.errors import UserError
from dr_jax.files import atomic_write_text


# The Digit Recognizer's submission header, used when the data has no sample_submission.csv.
HEADER = ("ImageId", "Label")
SAMPLE = "sample_submission.csv"


@dataclasses.dataclass(frozen=True)
class SubmissionFormat:
  """A competition's submission: its two column names and the id of each test image."""

  header: tuple[str, str]
  ids: np.ndarray


def submission_format(data_dir: pathlib.Path, test: data.Digits) -> SubmissionFormat:
  """The header of DATA_DIR/sample_submission.csv (else `ImageId,Label`) and the ids of
  test.csv's id column (else the sample's ids in order, else 1, 2, …)."""
  sample_path = data.find_csv(data_dir, SAMPLE)
  n = len(test.images)
  if not sample_path.exists():
    return SubmissionFormat(HEADER, test.ids if test.ids is not None else np.arange(1, n + 1))
  sample = read_labels(sample_path, "sample submission")
  header = (str(sample.index.name), str(sample.name))
  if test.ids is None:
    if len(sample) != n:
      raise UserError(f"{sample_path}: has {len(sample)} rows and test.csv {n} images (after "
                      "data.nan_policy), and test.csv has no id column to match them by; "
                      "the two must come from the same competition")
    return SubmissionFormat(header, sample.index.to_numpy())
  unknown = np.setdiff1d(test.ids, sample.index.to_numpy())
  if len(unknown):
    raise UserError(f"{sample_path}: lacks {len(unknown)} of test.csv's ids (first "
                    f"{int(unknown[0])}); the two must come from the same competition")
  return SubmissionFormat(header, test.ids)


def submission_text(labels: np.ndarray, ids: np.ndarray | None = None,
                    header: tuple[str, str] = HEADER) -> str:
  """One `id,label` row per test image under `header`; ids default to 1, 2, … (Kaggle's
  Digit Recognizer)."""
  ids = np.arange(1, len(labels) + 1) if ids is None else ids
  rows = "".join(f"{int(i)},{int(label)}\n" for i, label in zip(ids, labels, strict=True))
  return ",".join(header) + "\n" + rows


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
  total, predictors, classes, layout = None, [], None, None
  for workdir in workdirs:
    predictor = evaluate.load_predictor(workdir)
    cfg = provenance.read_config(workdir)
    if classes is not None and build.classes(cfg) != classes:
      raise UserError(f"{workdir}: predicts the labels {build.classes(cfg)}, the runs before "
                      f"it {classes}; blend runs trained on the same labels")
    classes = build.classes(cfg)
    test = build.load_test(cfg, data_dir)
    layout = layout or submission_format(data_dir, test)  # Before the work, so errors come first.
    probs = predictor.members * predictor.probabilities(test.images, tta=tta, vote=vote)
    if total is not None and probs.shape != total.shape:
      raise UserError(f"{workdir}: its data settings keep {len(probs)} test images, the runs "
                      f"before it {len(total)}; blend runs with the same data.nan_policy")
    total = probs if total is None else total + probs
    predictors.append(predictor)
  if distributed.is_primary():  # Every process holds all the labels; one writes them.
    assert total is not None and classes is not None and layout is not None, \
        "blend needs at least one run"
    labels = np.asarray(classes)[total.argmax(axis=-1)]  # Outputs → the labels train.csv has.
    atomic_write_text(out, submission_text(labels, layout.ids, layout.header))
  return pathlib.Path(out), predictors


@dataclasses.dataclass(frozen=True)
class Validation:
  """Validation errors of a run's members (and ensemble) for several test-time-transform counts."""

  ttas: tuple[int, ...]
  member_errors: np.ndarray  # (len(ttas), members): each on its own validation split.
  ensemble_errors: np.ndarray | None  # (len(ttas),) when all members share one split.
  n_val: int  # Images in each member's validation split.
  columns: tuple[str, ...] = ()  # The members' headings; () = member 0, member 1, ...
  ensemble_name: str = "ensemble"
  runs: tuple[str, ...] = ()  # The runs, in order.
  # (len(ttas), len(runs), n_val): each run's misses, members blended; None when a run's
  # members validate on splits of their own.
  run_wrong: np.ndarray | None = None

  def table(self) -> str:
    """A Markdown table: one row per TTA count."""
    members = self.member_errors.shape[1]
    head = ["tta", *(self.columns or (f"member {m}" for m in range(members))),
            "member mean accuracy"]
    if self.ensemble_errors is not None:
      head.append(f"{self.ensemble_name} accuracy")
    rows = []
    for i, tta in enumerate(self.ttas):
      errors = self.member_errors[i]
      row = [str(tta), *(str(int(e)) for e in errors), f"{1 - errors.mean() / self.n_val:.5f}"]
      if self.ensemble_errors is not None:
        row.append(f"{1 - self.ensemble_errors[i] / self.n_val:.5f} "
                   f"({int(self.ensemble_errors[i])} wrong)")
      rows.append(row)
    return markdown_table(head, rows)

  def paired_table(self) -> str:
    """A Markdown table: each later run against the first, on the same images, per TTA count."""
    assert self.run_wrong is not None, "paired_table needs a blend's runs"
    return markdown_table(["tta", "run", *PAIRED_HEAD],
                          [[str(tta), *row] for i, tta in enumerate(self.ttas)
                           for row in paired_rows(self.runs, self.run_wrong[i])])

  def tta_paired_table(self) -> str:
    """A Markdown table: each later TTA count against the first, per run, on the same images."""
    assert self.run_wrong is not None, "tta_paired_table needs the runs' misses"
    names = [f"tta {tta}" for tta in self.ttas]
    return markdown_table(["run", "against", *PAIRED_HEAD],
                          [[run, *row] for r, run in enumerate(self.runs)
                           for row in paired_rows(names, self.run_wrong[:, r])])


def markdown_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  """A Markdown table of text cells."""
  return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
                    *("| " + " | ".join(row) + " |" for row in rows)])


PAIRED_HEAD = ("wrong in the first only", "wrong in this one only", "wrong in both", "sign test p")


def paired_rows(names: Sequence[str], wrong: np.ndarray) -> list[list[str]]:
  """Each later name against the first (`PAIRED_HEAD`'s cells after the name); `wrong` is a
  (len(names), images) mask of each one's errors on the same images."""
  rows = []
  for name, mask in zip(names[1:], wrong[1:]):
    only_first, only_this = int((wrong[0] & ~mask).sum()), int((mask & ~wrong[0]).sum())
    rows.append([name, str(only_first), str(only_this), str(int((wrong[0] & mask).sum())),
                 f"{sign_test_p(only_first, only_this):.3f}"])
  return rows


def sign_test_p(only_a: int, only_b: int) -> float:
  """Two-sided exact sign (McNemar) test: the chance of a split at least this uneven of the images
  one of two classifiers gets wrong and the other right, were both equally accurate."""
  n, k = only_a + only_b, min(only_a, only_b)
  return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)


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
  cfg, split = _validated_split(workdir, data_dir)
  n_val = split.val_idx.shape[1]
  member_wrong = np.zeros((len(ttas), predictor.members, n_val), bool)
  for m in range(predictor.members):
    member = predictor.member(m)
    images, labels = split.images[split.val_idx[m]], split.labels[split.val_idx[m]]
    for i, tta in enumerate(ttas):
      member_wrong[i, m] = member.probabilities(images, tta=tta).argmax(-1) != labels
  run_wrong = member_wrong if predictor.members == 1 else None  # (len(ttas), 1, n_val)
  ensemble_errors = None
  if predictor.members > 1 and not cfg.ensemble.own_split:  # The members share one split.
    run_wrong = np.stack([predictor.probabilities(split.val.images, tta=tta).argmax(-1)
                          != split.val.labels for tta in ttas])[:, None]
    ensemble_errors = run_wrong[:, 0].sum(-1, dtype=np.int64)
  return Validation(tuple(ttas), member_wrong.sum(-1, dtype=np.int64), ensemble_errors, n_val,
                    runs=(str(workdir),), run_wrong=run_wrong)


def validation_misses(workdir: pathlib.Path, data_dir: pathlib.Path) -> tuple[str, list[int]]:
  """A key naming a run's validation rows (equal for every run validated on the same rows of the
  same digits) and the rows its best checkpoint gets wrong, members blended, one view."""
  predictor = evaluate.load_predictor(workdir)
  cfg, split = _validated_split(workdir, data_dir)
  if predictor.members > 1 and cfg.ensemble.own_split:
    raise UserError(f"{workdir}: each member has its own validation split "
                    "(ensemble.own_split); the run as a whole has no held-out rows")
  rows = split.val_idx[0]
  wrong = predictor.probabilities(split.val.images, tta=1).argmax(-1) != split.val.labels
  key = hashlib.sha256(split.digest.encode() + np.sort(rows).astype(np.int64).tobytes())
  return key.hexdigest()[:16], sorted(int(r) for r in rows[wrong])


def _validated_split(workdir: pathlib.Path,
                     data_dir: pathlib.Path) -> tuple[ml_collections.ConfigDict, build.Split]:
  """A run's config and split, refused for a final fit: its validation images were trained on."""
  cfg, split = build.load_run_split(workdir, data_dir)
  if cfg.train.get("final_fit", False):
    raise UserError(f"{workdir}: a final fit (train.final_fit) trained on its validation images, "
                    "so they validate nothing; validate the run its recipe was chosen on")
  return cfg, split


def validate_blend(workdirs: Sequence[pathlib.Path], data_dir: pathlib.Path,
                   ttas: tuple[int, ...] = (1, 3, 5, 7, 9)) -> Validation:
  """Errors of every run's members and of their blend (`blend`'s weighting) per TTA count, on
  the validation split the runs share: how to choose a blend of runs, of mixed architectures
  too, without the test answers."""
  for tta in ttas:
    augment.check_tta(tta, f"--tta {tta}")
  first: tuple[pathlib.Path, build.Split, tuple[int, ...]] | None = None
  columns: list[str] = []
  errors: list[np.ndarray] = []  # One (len(ttas),) column per member.
  total: list[np.ndarray | float] = [0.0] * len(ttas)  # Summed member probabilities per TTA.
  run_wrong: list[np.ndarray] = []  # One (len(ttas), n_val) mask per run: its members blended.
  for workdir in workdirs:
    predictor = evaluate.load_predictor(workdir)
    cfg, split = _validated_split(workdir, data_dir)
    if predictor.members > 1 and cfg.ensemble.own_split:
      raise UserError(f"{workdir}: each member has its own validation split "
                      "(ensemble.own_split); a blend is validated on one split its runs share")
    if first is None:
      first = (workdir, split, build.classes(cfg))
    elif (build.classes(cfg) != first[2] or not np.array_equal(split.val_idx[0],
                                                               first[1].val_idx[0])):
      raise UserError(f"{workdir}: its validation images are not those of {first[0]}; "
                      "validate a blend of runs with the same seed, data.val_fraction, "
                      "data.subset and labels")
    run_total: list[np.ndarray | float] = [0.0] * len(ttas)
    for m in range(predictor.members):
      member, column = predictor.member(m), np.zeros(len(ttas), np.int64)
      for i, tta in enumerate(ttas):
        probs = member.probabilities(split.val.images, tta=tta)
        column[i] = (probs.argmax(-1) != split.val.labels).sum()
        run_total[i] = run_total[i] + probs
      errors.append(column)
      columns.append(f"{workdir}" + (f" member {m}" if predictor.members > 1 else ""))
    total = [t + r for t, r in zip(total, run_total)]
    run_wrong.append(np.stack([np.asarray(r).argmax(-1) != split.val.labels for r in run_total]))
  assert first is not None, "validate_blend needs at least one run"
  labels = first[1].labels[first[1].val_idx[0]]
  blended = np.array([(np.asarray(t).argmax(-1) != labels).sum() for t in total], np.int64)
  return Validation(tuple(ttas), np.stack(errors, axis=1), blended, len(labels), tuple(columns),
                    "blend", tuple(str(w) for w in workdirs), np.stack(run_wrong, axis=1))


def read_labels(path: pathlib.Path, role: str,
                header: tuple[str, str] | None = None) -> pd.Series:
  """Reads a two-column `id,label` CSV (`header`'s names when given) into a Series of labels
  indexed by id, named after its columns, validated."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise UserError(f"{role} file {path} not found")
  try:
    # As text: a cell is judged as the file writes it (`4.0` and `3.5` are not ids).
    frame = pd.read_csv(path, encoding="utf-8-sig", dtype=str, keep_default_na=False)
  except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
    raise UserError(f"{path}: not a readable CSV ({str(e).strip().splitlines()[-1]})") from None
  names = [str(c).strip() for c in frame.columns]
  if len(names) != 2 or (header is not None and tuple(names) != header):
    # A test.csv passed by mistake has 784 names: show where it goes wrong, not all of them.
    shown = ",".join(names) if len(names) <= 4 else \
        f"{','.join(names[:3])},… ({len(names)} columns)"
    expected = ",".join(header) if header else "an id and a label, e.g. ImageId,Label"
    raise UserError(f"{path}: header is {shown}; expected the 2 columns {expected}")
  frame.columns = names
  id_column, label_column = names
  if frame.empty:
    raise UserError(f"{path}: has a header but no rows; expected one {id_column},{label_column} "
                    "row per test image")
  for column in names:
    cells = frame[column].str.strip()
    bad = np.flatnonzero(~cells.str.fullmatch(r"[+-]?\d+").to_numpy(bool))
    if len(bad):
      row = int(bad[0])
      raise UserError(f"{path}: line {row + 2}: {column} must be an integer, got "
                      f"{frame[column].iloc[row]!r}")
    frame[column] = cells.astype(np.int64)
  dupes = frame[id_column][frame[id_column].duplicated()]
  if len(dupes):
    raise UserError(f"{path}: {id_column} {int(dupes.iloc[0])} appears more than once "
                    f"({len(dupes)} duplicate row(s)); each {id_column} must appear once")
  return frame.set_index(id_column)[label_column]


def score(submission: pathlib.Path, answers: pathlib.Path) -> float:
  """Accuracy of a submission against an answers file with the same header, like Kaggle's
  leaderboard."""
  return float(correct(submission, answers).mean())


def compare(submissions: Sequence[pathlib.Path], answers: pathlib.Path) -> str:
  """Markdown tables: each submission's accuracy, then each later one against the first on the
  same answers."""
  truth = read_labels(answers, "answers")  # Read once for every submission.
  right = np.stack([correct(s, answers, truth) for s in submissions])
  names = [str(s) for s in submissions]
  scores = markdown_table(["submission", "accuracy", "wrong"],
                          [[name, f"{r.mean():.5f}", str(int((~r).sum()))]
                           for name, r in zip(names, right)])
  return scores + "\n\n" + markdown_table(["submission", *PAIRED_HEAD], paired_rows(names, ~right))


def score_by_source(submissions: Sequence[pathlib.Path], answers: pathlib.Path,
                    labels: np.ndarray, from_mnist_test: np.ndarray) -> str:
  """Markdown: each submission's accuracy on all the embedded data's answers, on those from
  MNIST's test set and on those from its training set (`fetch.embedded_test_sources`)."""
  truth = read_labels(answers, "answers")
  if not (np.array_equal(truth.index, np.arange(1, len(labels) + 1))
          and np.array_equal(truth.to_numpy(), labels)):
    raise UserError(f"{answers}: not the embedded data's answers, whose sources are known; "
                    "--by-source scores the files `dr-jax fetch --source embedded` writes")
  parts = {"all": np.ones_like(from_mnist_test), "MNIST's test set": from_mnist_test,
           "MNIST's training set": ~from_mnist_test}
  rows = []
  for submission in submissions:
    right = correct(submission, answers, truth)
    rows.append([str(submission), *(f"{right[m].mean():.5f} ({int((~right[m]).sum())} wrong)"
                                    for m in parts.values())])
  return markdown_table(["submission", *(f"{name} ({m.sum():,})" for name, m in parts.items())],
                        rows)


def correct(submission: pathlib.Path, answers: pathlib.Path,
            truth: pd.Series | None = None) -> np.ndarray:
  """Which answers a submission gets right, in the answers file's order (its header checked);
  `truth`: the answers file already read."""
  predicted = read_labels(submission, "submission")
  if truth is None:
    truth = read_labels(answers, "answers")
  header = (str(truth.index.name), str(truth.name))
  if (str(predicted.index.name), str(predicted.name)) != header:
    raise UserError(f"{submission}: header is {predicted.index.name},{predicted.name}; expected "
                    f"the 2 columns {','.join(header)} like {answers}")
  id_column = header[0]
  missing = truth.index.difference(predicted.index)
  extra = predicted.index.difference(truth.index)
  if len(missing) or len(extra):
    parts = []
    if len(missing):
      parts.append(f"{len(missing)} {id_column}(s) missing (first {int(missing[0])})")
    if len(extra):
      parts.append(f"{len(extra)} unknown {id_column}(s) (first {int(extra[0])})")
    raise UserError(f"{submission}: {'; '.join(parts)}; a submission needs exactly one row for "
                    f"each of the {len(truth)} {id_column}s in {answers}")
  return predicted.loc[truth.index].to_numpy() == truth.to_numpy()
