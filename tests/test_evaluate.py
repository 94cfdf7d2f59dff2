"""Tests of dr_jax.evaluate (and predict.blend on it) against hand-written logits and answers."""

import dataclasses
import math
import pathlib

import numpy as np
import pytest

from dr_jax import build, config, data, evaluate, predict, provenance, steps


def mixed(given):
  """Probabilities over 10 classes: `given` ({class: p}), the rest shared equally."""
  probs = np.full(10, (1 - sum(given.values())) / (10 - len(given)))
  probs[list(given)] = list(given.values())
  return probs


def row(top, p):
  """Probabilities over 10 classes: `p` on `top`, the rest shared equally."""
  return mixed({top: p})


def numbered(n):
  """`n` blank images whose pixel (0, 0) holds the image's index: stand-ins key on it."""
  images = np.zeros((n, 28, 28, 1), np.uint8)
  images[:, 0, 0, 0] = np.arange(n)
  return images


@dataclasses.dataclass(frozen=True)
class TablePredictor:
  """A stand-in predictor: member m's probabilities for image i are `tables[m][i]`."""

  tables: tuple

  @property
  def members(self):
    return len(self.tables)

  def member_logits(self, images, batch_size=1000):
    ids = images[:, 0, 0, 0]
    return np.log(np.stack([[table[i] for i in ids] for table in self.tables]))

  def member(self, index):
    return TablePredictor((self.tables[index],))


def test_cross_entropy_of_one_row_is_minus_log_its_softmax():
  logits = np.array([[0.0, math.log(3)]])  # Softmax (1/4, 3/4).
  assert evaluate.cross_entropy(logits, np.array([1])) == pytest.approx(-math.log(3 / 4))
  assert evaluate.cross_entropy(logits, np.array([0])) == pytest.approx(math.log(4))


def test_cross_entropy_is_the_mean_over_images_per_member_and_does_not_overflow():
  logits = np.array([[[0.0, math.log(3), 0.0], [0.0, 0.0, 0.0]],  # (1/5, 3/5, 1/5), uniform.
                     [[math.log(2), 0.0, math.log(2)], [1000.0, 1000.0, 1000.0]]])
  labels = np.array([[1, 2], [0, 0]])
  # Member 0: (ln 5/3 + ln 3) / 2 = ln 5 / 2; member 1: (ln 5/2 + ln 3) / 2 = ln 7.5 / 2.
  np.testing.assert_allclose(evaluate.cross_entropy(logits, labels),
                             [math.log(5) / 2, math.log(7.5) / 2], rtol=1e-12)


# Two members' probabilities for images 0..5, whose labels are 1..6. Member 0 is wrong on
# images 2, 4, 5, member 1 on image 1 and on image 3, where it gives the label only 0.01.
LABELS = np.array([1, 2, 3, 4, 5, 6])
MEMBER_0 = [row(1, 0.64), row(2, 0.91), row(0, 0.64), row(4, 0.55), row(0, 0.64), row(0, 0.64)]
MEMBER_1 = [row(1, 0.91), row(0, 0.64), row(3, 0.91), mixed({0: 0.45, 4: 0.01}), row(5, 0.91),
            row(6, 0.91)]
LOSS_0 = (-math.log(0.64) - math.log(0.91) - math.log(0.04) - math.log(0.55)) / 4  # Rows 0..3.


def _split(val_idx):
  """A hand-made split of the six numbered images with the given validation rows."""
  val_idx = np.array(val_idx)
  train_idx = np.array([[r for r in range(6) if r not in rows] for rows in val_idx])
  return build.Split(numbered(6), LABELS, tuple(range(10)), train_idx, val_idx, 0.0, 255.0,
                     pathlib.Path("train.csv"), "digest")


def test_validation_scores_of_members_sharing_a_split_and_of_their_ensemble():
  scores = evaluate.validation_scores(TablePredictor((MEMBER_0, MEMBER_1)),
                                      _split([[0, 1, 2, 3], [0, 1, 2, 3]]))
  np.testing.assert_allclose(scores.accuracy, [0.75, 0.5])
  np.testing.assert_allclose(scores.loss, [
      LOSS_0, (-2 * math.log(0.91) - math.log(0.04) - math.log(0.01)) / 4], rtol=1e-6)
  # The members' probabilities averaged, each disagreement goes to the label: images 1 and 2
  # (.91 + .04) / 2 against (.64 + .01) / 2; image 3 (.55 + .01) / 2 against (.05 + .45) / 2
  # (a geometric mean, as of log-probabilities, would pick class 0 there).
  assert scores.ensemble_accuracy == 1.0


def test_validation_scores_of_members_with_their_own_splits_have_no_ensemble():
  scores = evaluate.validation_scores(TablePredictor((MEMBER_0, MEMBER_1)),
                                      _split([[0, 1, 2, 3], [2, 3, 4, 5]]))
  # Member 1 on its own rows 2..5 is wrong once (on member 0's rows it would be wrong twice).
  np.testing.assert_allclose(scores.accuracy, [0.75, 0.75])
  np.testing.assert_allclose(scores.loss, [
      LOSS_0, (-3 * math.log(0.91) - math.log(0.01)) / 4], rtol=1e-6)
  assert scores.ensemble_accuracy is None


def test_validation_scores_of_one_member_have_no_ensemble():
  scores = evaluate.validation_scores(TablePredictor((MEMBER_1,)), _split([[2, 3, 4, 5]]))
  np.testing.assert_allclose(scores.accuracy, [0.75])
  np.testing.assert_allclose(scores.loss, [(-3 * math.log(0.91) - math.log(0.01)) / 4],
                             rtol=1e-6)
  assert scores.ensemble_accuracy is None


def _scripted_predictor(monkeypatch, calls):
  """A real 3-member Predictor whose `member_logits` returns `calls` in turn."""
  remaining = list(calls)
  monkeypatch.setattr(evaluate.Predictor, "member_logits",
                      lambda self, images, batch_size=1000: remaining.pop(0))
  return evaluate.Predictor(None, {}, steps.Preprocess(), 3)


def _tops(*per_image):
  """Logits `(members, images, 10)` whose top classes are `per_image[i][m]`."""
  return 3.0 * np.eye(10)[np.array(per_image).T]


def test_probabilities_average_the_members_softmax(monkeypatch):
  logits = np.log([[row(2, 0.28), row(4, 0.55)], [row(2, 0.28), row(9, 0.55)],
                   [row(7, 0.91), row(1, 0.55)]])
  probs = _scripted_predictor(monkeypatch, [logits]).probabilities(numbered(2), tta=1)
  expected = np.empty((2, 10))
  expected[0] = 0.17 / 3  # Image 0 off the tops: .08 + .08 + .01;
  expected[0, 2], expected[0, 7] = 0.57 / 3, 1.07 / 3  # .28 + .28 + .01 and .08 + .08 + .91.
  expected[1] = 0.05  # Image 1: .05 from every member off the three tops,
  expected[1, [4, 9, 1]] = 0.65 / 3  # and .55 + .05 + .05 on each top.
  np.testing.assert_allclose(probs, expected, rtol=1e-5)


def test_vote_counts_each_member_and_transform_once(monkeypatch):
  calls = [_tops([2, 2, 7], [4, 9, 1]), _tops([2, 7, 7], [4, 4, 1]), _tops([2, 2, 2], [4, 9, 9])]
  predictor = _scripted_predictor(monkeypatch, calls[:1])
  expected = np.zeros((2, 10))
  expected[0, [2, 7]] = [2 / 3, 1 / 3]
  expected[1, [4, 9, 1]] = 1 / 3
  np.testing.assert_allclose(predictor.probabilities(numbered(2), tta=1, vote=True), expected)
  # Three transforms, three members: nine votes per image.
  predictor = _scripted_predictor(monkeypatch, calls)
  expected = np.zeros((2, 10))
  expected[0, [2, 7]] = [6 / 9, 3 / 9]
  expected[1, [4, 9, 1]] = [4 / 9, 3 / 9, 2 / 9]
  np.testing.assert_allclose(predictor.probabilities(numbered(2), tta=3, vote=True), expected)


@dataclasses.dataclass(frozen=True)
class ProbabilityPredictor:
  """A stand-in for a run in `blend`: fixed probabilities per numbered image."""

  members: int
  table: tuple
  calls: list = dataclasses.field(default_factory=list)

  def probabilities(self, images, tta=None, vote=False):
    self.calls.append((tta, vote))
    return np.stack([self.table[i] for i in images[:, 0, 0, 0]])


def two_way(a, p, b):
  """Probabilities `p` on class `a` and the rest on `b`."""
  probs = np.zeros(10)
  probs[a], probs[b] = p, 1 - p
  return probs


def test_blend_weights_each_run_by_its_members(monkeypatch, tmp_path):
  # One member is sure, three are not: per run the labels would be 1, 5, 3; per member 2, 5, 7
  # (image 1: 0.8 + 3 * 0.3 = 1.7 for class 1 against 0.2 + 3 * 0.7 = 2.3 for class 2).
  runs = {"one": ProbabilityPredictor(1, (two_way(1, 0.8, 2), two_way(5, 0.95, 6),
                                          two_way(7, 0.1, 3))),
          "three": ProbabilityPredictor(3, (two_way(1, 0.3, 2), two_way(5, 0.4, 6),
                                            two_way(7, 0.65, 3)))}
  monkeypatch.setattr(evaluate, "load_predictor", lambda workdir: runs[workdir.name])
  monkeypatch.setattr(provenance, "read_config", lambda workdir: config.get_base_config())
  monkeypatch.setattr(build, "load_test", lambda cfg, data_dir: data.Digits(numbered(3), None))
  out, predictors = predict.blend([tmp_path / "one", tmp_path / "three"], tmp_path,
                                  tmp_path / "blend.csv", tta=3)
  assert out.read_text() == "ImageId,Label\n1,2\n2,5\n3,7\n"
  assert predictors[0] is runs["one"] and predictors[1] is runs["three"]
  assert runs["one"].calls == runs["three"].calls == [(3, False)]
