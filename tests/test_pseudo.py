"""Tests of dr_jax.pseudo: a teacher's confident test predictions as extra training rows."""

import json
import pathlib
import re

import numpy as np
import pytest

from dr_jax import build, data, evaluate, pseudo, train
from dr_jax.errors import UserError
from conftest import PIXEL_HEADER, csv_text, tiny_config


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, data_dir) -> pathlib.Path:
  """A tiny trained run to label the module's test.csv (20 images)."""
  workdir = tmp_path_factory.mktemp("teacher") / "run"
  train.train_and_evaluate(tiny_config(num_epochs=2), workdir, data_dir)
  return workdir


def _student(teacher: pathlib.Path, threshold: float, **overrides):
  """A tiny config that learns from `teacher`'s test labels at `threshold`."""
  return tiny_config(**{"pseudo.teacher": str(teacher), "pseudo.threshold": threshold},
                     **overrides)


def _train(cfg, workdir, data_dir):
  """Trains as the CLI does: the caller resolves the pseudo-labels first."""
  return train.train_and_evaluate(cfg, workdir, data_dir, pseudo.for_config(cfg, data_dir))


def test_confident_keeps_rows_whose_top_class_reaches_the_threshold():
  probs = np.array([[0.98, 0.02], [0.5, 0.5], [0.01, 0.99], [0.3, 0.7]])
  np.testing.assert_array_equal(pseudo.confident(probs, 0.98), [True, False, True, False])
  np.testing.assert_array_equal(pseudo.confident(probs, 0.5), [True, True, True, True])


def test_teacher_labels_are_its_confident_predictions_and_repeat_exactly(teacher, data_dir):
  threshold = 0.6
  labels = pseudo.teacher_labels(_student(teacher, threshold), data_dir)
  test = data.load_csv(data_dir / "test.csv", with_labels=False)
  probs = evaluate.load_predictor(teacher).probabilities(test.images)
  keep = probs.max(axis=1) >= threshold
  assert labels.test_rows == 20 and len(labels.labels) == keep.sum() > 0
  np.testing.assert_array_equal(labels.images, test.images[keep])
  np.testing.assert_array_equal(labels.labels, probs.argmax(axis=1)[keep])
  # The teacher's record on its own validation split (30 images) at the same confidence.
  _, split = build.load_run_split(teacher, data_dir)
  val_probs = evaluate.load_predictor(teacher).probabilities(split.val.images)
  val_keep = val_probs.max(axis=1) >= threshold
  assert (labels.val_kept, labels.val_total) == (val_keep.sum(), 30)
  assert labels.val_right == (val_probs.argmax(axis=1) == split.val.labels)[val_keep].sum()
  assert labels.test_digest == data.digest(test)
  again = pseudo.teacher_labels(_student(teacher, threshold), data_dir)
  np.testing.assert_array_equal(again.labels, labels.labels)
  line = labels.describe()
  assert f"{keep.sum()} of 20 test images at p >= 0.6" in line and "right" in line


def _row(top, p):
  """Probabilities over 10 classes: `p` on `top`, the rest shared equally."""
  probs = np.full(10, (1 - p) / 9)
  probs[top] = p
  return probs


# A stand-in teacher's probabilities, keyed on an image's pixel (0, 0): test image i holds
# 100 + i, a training image its label. At p >= 0.8 it keeps test images 0, 2 (p exactly 0.8)
# and 4, and is confident on validation classes 0..3, wrong on class 3.
TEACHER = {100: _row(4, 0.9), 101: _row(2, 0.5), 102: _row(7, 0.8), 103: _row(1, 0.79),
           104: _row(0, 0.99), 105: _row(3, 0.6),
           0: _row(0, 0.95), 1: _row(1, 0.95), 2: _row(2, 0.95), 3: _row(8, 0.9),
           **{label: _row(label, 0.5) for label in range(4, 10)}}


class _StandInTeacher:
  """Answers `probabilities` from TEACHER."""

  def probabilities(self, images, tta=None, vote=False):
    return np.stack([TEACHER[int(key)] for key in images[:, 0, 0, 0]])


def _marked(keys):
  """Blank flattened images whose pixel (0, 0) holds `keys`."""
  images = np.zeros((len(keys), 784), int)
  images[:, 0] = keys
  return images


def test_teacher_labels_of_a_teacher_whose_predictions_are_known(tmp_path, monkeypatch):
  # 40 training images, 4 per class; val_fraction 0.25 leaves exactly 1 per class to validate.
  data_dir = tmp_path / "data"
  data_dir.mkdir()
  labels = np.arange(40) % 10
  (data_dir / "train.csv").write_text(
      csv_text("label," + PIXEL_HEADER, np.column_stack([labels, _marked(labels)])))
  (data_dir / "test.csv").write_text(csv_text(PIXEL_HEADER, _marked(np.arange(100, 106))))
  teacher = tmp_path / "teacher"
  teacher.mkdir()
  (teacher / "config.json").write_text(tiny_config(**{"data.val_fraction": 0.25}).to_json())
  monkeypatch.setattr(evaluate, "load_predictor", lambda workdir: _StandInTeacher())
  result = pseudo.teacher_labels(_student(teacher, 0.8), data_dir)
  assert result.images.shape == (3, 28, 28, 1)
  np.testing.assert_array_equal(result.images[:, 0, 0, 0], [100, 102, 104])
  assert not result.images.reshape(3, -1)[:, 1:].any()
  np.testing.assert_array_equal(result.labels, [4, 7, 0])
  assert result.test_rows == 6
  assert (result.val_right, result.val_kept, result.val_total) == (3, 4, 10)
  assert result.describe() == (
      f"pseudo-labels from {teacher}: 3 of 6 test images at p >= 0.8 (on its own validation "
      "images at that confidence, 4 of 10, the teacher is right 75.00%)")
  record = result.record()
  assert (record["rows"], record["test_rows"], record["teacher_val_kept"]) == (3, 6, 4)
  assert record["teacher_val_accuracy_kept"] == 0.75


@pytest.mark.slow
def test_training_with_a_teacher_grows_only_the_training_rows(teacher, data_dir, tmp_path,
                                                               capsys):
  cfg = _student(teacher, 0.6, num_epochs=1)
  expected = pseudo.teacher_labels(cfg, data_dir)
  train.train_and_evaluate(cfg, tmp_path / "student", data_dir, pseudo.for_config(cfg, data_dir))
  assert f"{270 + len(expected.labels)} train / 30 val images" in capsys.readouterr().err
  record = json.loads((tmp_path / "student" / "provenance.json").read_text())[-1]
  assert record["pseudo_labels"] == expected.record()
  assert record["pseudo_labels"]["teacher"] == str(teacher.resolve())


@pytest.mark.parametrize("stage,message", [
    ("missing", "not a dr_jax run directory"),  # A wrong path.
    ("configured", "no best checkpoint"),  # Stopped before its first epoch ended.
])
def test_a_teacher_that_was_never_trained_is_refused_before_any_work(teacher, data_dir, tmp_path,
                                                                      stage, message):
  untrained = tmp_path / "untrained"
  if stage == "configured":
    untrained.mkdir()
    (untrained / "config.json").write_bytes((teacher / "config.json").read_bytes())
  expected = f"^pseudo.teacher={re.escape(str(untrained))}: .*{message}.*train first"
  with pytest.raises(UserError, match=expected):
    _train(_student(untrained, 0.99), tmp_path / "student", data_dir)
  assert not (tmp_path / "student").exists()


def test_train_refuses_a_teacher_config_without_its_pseudo_labels(teacher, data_dir, tmp_path):
  with pytest.raises(UserError, match="pseudo-labels were not given"):
    train.train_and_evaluate(_student(teacher, 0.6), tmp_path / "student", data_dir)
  with pytest.raises(UserError, match="pseudo-labels were given"):
    train.train_and_evaluate(tiny_config(), tmp_path / "student", data_dir,
                             pseudo.teacher_labels(_student(teacher, 0.6), data_dir))
  assert not (tmp_path / "student").exists()


@pytest.mark.slow
def test_resuming_with_another_threshold_is_refused_and_changes_nothing(teacher, data_dir,
                                                                        tmp_path):
  student = tmp_path / "student"
  _train(_student(teacher, 0.6, num_epochs=1), student, data_dir)
  before = {p: p.read_bytes() for p in student.rglob("*") if p.is_file()}
  with pytest.raises(UserError, match="pseudo-labelled rows from .* this config gives"):
    _train(_student(teacher, 0.3, num_epochs=2), student, data_dir)
  assert {p: p.read_bytes() for p in student.rglob("*") if p.is_file()} == before
