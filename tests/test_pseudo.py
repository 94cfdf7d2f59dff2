"""Tests of dr_jax.pseudo: a teacher's confident test predictions as extra training rows."""

import json
import pathlib
import re

import numpy as np
import pytest

from dr_jax import build, data, evaluate, pseudo, train
from dr_jax.errors import UserError
from conftest import tiny_config


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
