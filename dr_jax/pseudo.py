"""Pseudo-labels: a trained teacher run's confident test.csv predictions as extra training rows.

The Kaggle semi-supervised trick: test.csv's images come without answers, but a good model
labels most of them with near certainty, and those images and labels are more training data.
Only test images join, only training rows grow; validation stays the labelled train.csv rows.
"""

from __future__ import annotations

import dataclasses
import pathlib

import ml_collections
import numpy as np

from dr_jax import build, data, evaluate
from dr_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class PseudoLabels:
  """Test images the teacher labels with probability ≥ threshold, and what that is worth."""

  teacher: pathlib.Path
  threshold: float
  images: np.ndarray
  labels: np.ndarray  # Label values (as train.csv writes them, not output positions).
  test_rows: int  # Images in test.csv (after the NaN policy).
  test_digest: str
  val_right: int  # The teacher's own validation images at that confidence: right,
  val_kept: int  # and how many there are;
  val_total: int  # of all its validation images.

  def describe(self) -> str:
    """One line for the log: how many rows join, and how often the teacher is right there."""
    line = (f"pseudo-labels from {self.teacher}: {len(self.labels):,} of {self.test_rows:,} "
            f"test images at p >= {self.threshold}")
    if not self.val_kept:
      return line
    return (f"{line} (on its own validation images at that confidence, {self.val_kept:,} of "
            f"{self.val_total:,}, the teacher is right {self.val_right / self.val_kept:.2%})")

  def record(self) -> dict:
    """What provenance.json keeps of them."""
    return {"teacher": str(self.teacher.resolve()), "threshold": self.threshold,
            "rows": len(self.labels), "test_rows": self.test_rows,
            "test_sha256": self.test_digest,
            "teacher_val_accuracy_kept": self.val_right / max(self.val_kept, 1),
            "teacher_val_kept": self.val_kept}


def confident(probabilities: np.ndarray, threshold: float) -> np.ndarray:
  """Rows whose top class has probability at least `threshold`."""
  return probabilities.max(axis=1) >= threshold


def for_config(cfg: ml_collections.ConfigDict, data_dir: pathlib.Path) -> PseudoLabels | None:
  """The pseudo-labels `cfg` trains with (None without pseudo.teacher): `train`'s argument."""
  return teacher_labels(cfg, data_dir) if cfg.pseudo.teacher else None


def teacher_labels(cfg: ml_collections.ConfigDict, data_dir: pathlib.Path) -> PseudoLabels:
  """Labels test.csv with the run `cfg.pseudo.teacher` (its best checkpoint and predict.tta)."""
  teacher, threshold = pathlib.Path(cfg.pseudo.teacher), cfg.pseudo.threshold
  try:
    predictor = evaluate.load_predictor(teacher)
  except UserError as e:  # Its message names the teacher's files; this says where they came from.
    raise UserError(f"pseudo.teacher={teacher}: {e}") from None
  test = build.load_test(cfg, data_dir)
  probs = predictor.probabilities(test.images)
  keep = confident(probs, threshold)
  # How trustworthy those labels are, measured where the answers are known and the teacher
  # never trained: its own validation split.
  _, split = build.load_run_split(teacher, data_dir)
  val = split.val
  assert val.labels is not None  # A split's rows are all labelled.
  val_probs = predictor.probabilities(val.images)
  val_keep = confident(val_probs, threshold)
  right = int((val_probs.argmax(axis=1) == val.labels)[val_keep].sum())
  labels = np.asarray(split.classes, np.int32)[probs.argmax(axis=1)[keep]]  # Label values.
  return PseudoLabels(teacher, threshold, test.images[keep], labels, len(test.images),
                      data.digest(test), right, int(val_keep.sum()), len(val.labels))
