"""Tests of dr_jax.predict: vectorized member/TTA probabilities, submission format, scoring."""

import dataclasses
import gzip
import json

import jax
import ml_collections
import numpy as np
import pandas as pd
import pytest
import scipy.stats
from hypothesis import given, strategies as st

from dr_jax import augment, build, config, data, evaluate, optim, predict, steps, train
from dr_jax.errors import UserError
from conftest import record_predictor_calls, tiny_config


def _predictor(members=1):
  cfg = config.get_base_config()
  cfg.model.kwargs.widths = (8, 16)
  cfg.model.kwargs.dense = 32
  cfg.ensemble.size = members
  state = train.init_state(cfg, optim.make_optimizer(cfg, 1), jax.random.key(0))
  return evaluate.Predictor(build.model(cfg).apply, steps.variables(state),
                            build.preprocess(cfg, 0.0, 255.0, train=False), members)


IMAGES = np.random.default_rng(0).integers(0, 256, (13, 28, 28, 1), dtype=np.uint8)


def test_member_logits_shapes_and_batching_do_not_matter():
  p = _predictor(members=3)
  logits = p.member_logits(IMAGES, batch_size=5)
  assert logits.shape == (3, 13, 10) and np.isfinite(logits).all()
  np.testing.assert_allclose(p.member_logits(IMAGES, batch_size=13), logits, rtol=1e-5,
                             atol=1e-5)
  assert not np.allclose(logits[0], logits[1])


def test_probabilities_average_member_softmax():
  p = _predictor(members=3)
  probs = p.probabilities(IMAGES)
  assert probs.shape == (13, 10)
  np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
  expected = np.asarray(jax.nn.softmax(p.member_logits(IMAGES))).mean(axis=0)
  np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)


def test_vote_counts_member_top_classes():
  p = _predictor(members=3)
  votes = p.probabilities(IMAGES, vote=True)
  top = p.member_logits(IMAGES).argmax(-1)
  for i in range(len(IMAGES)):
    np.testing.assert_allclose(votes[i], np.bincount(top[:, i], minlength=10) / 3)


def test_tta_of_one_is_the_plain_prediction_and_more_views_change_it():
  p = _predictor()
  plain = np.asarray(jax.nn.softmax(p.member_logits(IMAGES)[0]))
  np.testing.assert_allclose(p.probabilities(IMAGES, tta=1), plain, rtol=1e-5, atol=1e-6)
  assert not np.allclose(p.probabilities(IMAGES, tta=5), plain)


def test_the_runs_tta_is_the_default_and_an_argument_overrides_it():
  p = dataclasses.replace(_predictor(), tta=5)
  np.testing.assert_array_equal(p.probabilities(IMAGES), p.probabilities(IMAGES, tta=5))
  plain = dataclasses.replace(p, tta=1).probabilities(IMAGES)
  np.testing.assert_array_equal(p.probabilities(IMAGES, tta=1), plain)


def test_member_is_that_members_slice_of_the_ensemble():
  p = _predictor(members=3)
  np.testing.assert_allclose(p.member(1).member_logits(IMAGES), p.member_logits(IMAGES)[1:2],
                             rtol=1e-5, atol=1e-5)


def _view_logits(p, count):
  """Each member's logits on each of the first `count` TTA views, warped one image at a time."""
  warp = jax.vmap(augment.warp, (0, None))
  return [p.member_logits(np.asarray(warp(IMAGES.astype(np.float32), m)))
          for m in augment.tta_matrices(count)]


@pytest.mark.parametrize("tta", range(2, 10))
def test_tta_averages_the_softmax_of_the_first_n_views(tta):
  p = _predictor(members=2)
  views = _view_logits(p, tta)
  expected = sum(np.asarray(jax.nn.softmax(v)).mean(axis=0) for v in views) / tta
  np.testing.assert_allclose(p.probabilities(IMAGES, tta=tta), expected, rtol=1e-4, atol=1e-6)


def test_vote_over_views_gives_each_member_and_view_one_vote():
  p = _predictor(members=3)
  top = np.concatenate([v.argmax(-1) for v in _view_logits(p, 3)])  # (9, n): 3 views x 3.
  votes = p.probabilities(IMAGES, tta=3, vote=True)
  for i in range(len(IMAGES)):
    np.testing.assert_allclose(votes[i], np.bincount(top[:, i], minlength=10) / 9)


@pytest.mark.parametrize("tta", [0, 10])
def test_tta_out_of_range_is_a_user_error(tta):
  with pytest.raises(UserError, match="--tta"):
    _predictor().probabilities(IMAGES, tta=tta)


def test_submission_text_is_kaggles_format():
  text = predict.submission_text(np.array([3, 0, 9]))
  assert text == "ImageId,Label\n1,3\n2,0\n3,9\n"


def _write(path, rows, header="ImageId,Label"):
  path.write_text(header + "\n" + "".join(f"{a},{b}\n" for a, b in rows))
  return path


def test_score_matches_by_image_id_not_row_order(tmp_path):
  answers = _write(tmp_path / "answers.csv", [(1, 3), (2, 4), (3, 5), (4, 6)])
  sub = _write(tmp_path / "sub.csv", [(4, 6), (3, 0), (2, 4), (1, 3)])
  assert predict.score(sub, answers) == 0.75


def test_compare_scores_each_submission_then_pairs_each_with_the_first(tmp_path):
  answers = _write(tmp_path / "answers.csv", [(1, 3), (2, 4), (3, 5), (4, 6), (5, 7)])
  a = _write(tmp_path / "a.csv", [(1, 0), (2, 0), (3, 5), (4, 6), (5, 7)])  # Misses 1, 2.
  b = _write(tmp_path / "b.csv", [(5, 7), (4, 6), (3, 0), (2, 0), (1, 3)])  # Misses 2, 3.
  assert predict.compare([a, b, a], answers) == "\n".join([
      "| submission | accuracy | wrong |", "|---|---|---|",
      f"| {a} | 0.60000 | 2 |", f"| {b} | 0.60000 | 2 |", f"| {a} | 0.60000 | 2 |", "",
      "| submission | wrong in the first only | wrong in this one only | wrong in both | "
      "sign test p |", "|---|---|---|---|---|",
      f"| {b} | 1 | 1 | 1 | 1.000 |", f"| {a} | 0 | 0 | 2 | 1.000 |"])
  with pytest.raises(UserError, match="missing"):
    predict.compare([a, _write(tmp_path / "short.csv", [(1, 3)])], answers)


def test_score_by_source_splits_the_answers_by_mnists_set(tmp_path):
  answers = _write(tmp_path / "answers.csv", [(1, 3), (2, 4), (3, 5), (4, 6)])
  sub = _write(tmp_path / "sub.csv", [(1, 3), (2, 0), (3, 5), (4, 0)])  # Misses 2 and 4.
  from_test = np.array([True, True, True, False])
  assert predict.score_by_source([sub], answers, np.array([3, 4, 5, 6]), from_test) == "\n".join([
      "| submission | all (4) | MNIST's test set (3) | MNIST's training set (1) |",
      "|---|---|---|---|",
      f"| {sub} | 0.50000 (2 wrong) | 0.66667 (1 wrong) | 0.00000 (1 wrong) |"])
  for labels in (np.array([3, 4, 5, 7]), np.array([3, 4, 5])):  # Not these answers.
    with pytest.raises(UserError, match="not the embedded data's answers.*--source embedded"):
      predict.score_by_source([sub], answers, labels, from_test[:len(labels)])


@pytest.mark.parametrize("rows,fragment", [
    ([(1, 3), (2, 4)], "missing"), ([(1, 3), (2, 4), (3, 5), (9, 1)], "unknown"),
    ([(1, 3), (1, 3), (2, 4), (3, 5)], "more than once")])
def test_score_rejects_bad_ids(tmp_path, rows, fragment):
  answers = _write(tmp_path / "answers.csv", [(1, 3), (2, 4), (3, 5)])
  with pytest.raises(UserError, match=fragment):
    predict.score(_write(tmp_path / "sub.csv", rows), answers)


def test_score_rejects_wrong_header_and_missing_file(tmp_path):
  answers = _write(tmp_path / "answers.csv", [(1, 3)])
  with pytest.raises(UserError, match="ImageId,Label"):
    predict.score(_write(tmp_path / "sub.csv", [(1, 3)], header="Id,Label"), answers)
  with pytest.raises(UserError, match="not found"):
    predict.score(tmp_path / "nope.csv", answers)


@pytest.mark.parametrize("text, message", [
    ("ImageId,Label\n1,3\n2,x\n3,5\n", "line 3: Label must be an integer, got 'x'"),
    ("ImageId,Label\n1,3\n2,4\nthree,5\n", "line 4: ImageId must be an integer, got 'three'"),
    ("", "not a readable CSV (No columns to parse from file)"),
    ("ImageId,Label\n1,3\n2,4,7\n3,5\n",
     "not a readable CSV (Error tokenizing data. C error: Expected 2 fields in line 3, saw 3)"),
])
def test_score_rejects_a_submission_it_cannot_read(tmp_path, text, message):
  answers = _write(tmp_path / "answers.csv", [(1, 3), (2, 4), (3, 5)])
  sub = tmp_path / "sub.csv"
  sub.write_text(text)
  with pytest.raises(UserError) as info:
    predict.score(sub, answers)
  assert str(info.value) == f"{sub}: {message}"


def test_score_rejects_binary_files_and_directories(tmp_path):
  answers = _write(tmp_path / "answers.csv", [(1, 3)])
  garbage = tmp_path / "garbage.csv"
  garbage.write_bytes(bytes(range(256)))
  with pytest.raises(UserError) as info:
    predict.score(garbage, answers)
  assert str(info.value) == (f"{garbage}: not a readable CSV ('utf-8' codec can't decode byte "
                             "0x80 in position 128: invalid start byte)")
  with pytest.raises(UserError) as info:
    predict.score(answers, tmp_path)
  assert str(info.value) == f"answers file {tmp_path} not found"


@pytest.mark.slow
def test_predict_writes_atomically_and_round_trips(tmp_path, kaggle_dir):
  data_dir = kaggle_dir(n_train=200, n_test=30)
  cfg = config.get_base_config()
  for key, value in {"num_epochs": 1, "batch_size": 32, "data.val_fraction": 0.1,
                     "train.steps_per_call": 2}.items():
    cfg = config.apply_overrides(cfg, [f"{key}={value}"])
  cfg.model.kwargs.widths = (8, 16)
  cfg.model.kwargs.dense = 32
  workdir = tmp_path / "run"
  train.train_and_evaluate(cfg, workdir, data_dir)
  out, predictor = predict.predict(workdir, data_dir)
  frame = pd.read_csv(out)
  assert list(frame.columns) == ["ImageId", "Label"] and len(frame) == 30
  assert frame["ImageId"].tolist() == list(range(1, 31))
  assert not list(workdir.glob(".submission.csv.*"))
  again, _ = predict.predict(workdir, data_dir, tmp_path / "again.csv")
  assert again.read_text() == out.read_text()
  assert predictor.members == 1 and predictor.run.epoch == 1


@pytest.mark.slow
def test_blend_weights_every_member_alike_across_runs(tmp_path, kaggle_dir):
  data_dir = kaggle_dir(n_train=300, n_test=40)
  one, two = tmp_path / "one", tmp_path / "two"
  train.train_and_evaluate(tiny_config(num_epochs=1), one, data_dir)
  train.train_and_evaluate(tiny_config(num_epochs=1, seed=1, **{"ensemble.size": 2}), two,
                           data_dir)
  out, predictors = predict.blend([one, two], data_dir, tmp_path / "blend.csv", tta=3)
  assert [p.members for p in predictors] == [1, 2]
  images = data.load_csv(data_dir / "test.csv", with_labels=False).images
  by_hand = sum(p.members * p.probabilities(images, tta=3) for p in predictors)
  blended = pd.read_csv(out)["Label"].to_numpy()
  np.testing.assert_array_equal(blended, by_hand.argmax(-1))
  # A run blended with itself is that run's prediction.
  alone, _ = predict.predict(two, data_dir, tmp_path / "alone.csv")
  twice, _ = predict.blend([two, two], data_dir, tmp_path / "twice.csv")
  assert twice.read_text() == alone.read_text()


def test_validation_table_word_for_word():
  """Errors per member, their mean accuracy and the ensemble's, computed by hand."""
  shared = predict.Validation(ttas=(1, 3), member_errors=np.array([[3, 5], [2, 4]]),
                              ensemble_errors=np.array([2, 1]), n_val=100)
  assert shared.table() == (
      "| tta | member 0 | member 1 | member mean accuracy | ensemble accuracy |\n"
      "|---|---|---|---|---|\n"
      "| 1 | 3 | 5 | 0.96000 | 0.98000 (2 wrong) |\n"
      "| 3 | 2 | 4 | 0.97000 | 0.99000 (1 wrong) |")
  own_splits = predict.Validation(ttas=(5,), member_errors=np.array([[7, 1, 4]]),
                                  ensemble_errors=None, n_val=50)
  assert own_splits.table() == ("| tta | member 0 | member 1 | member 2 | member mean accuracy |\n"
                                "|---|---|---|---|---|\n"
                                "| 5 | 7 | 1 | 4 | 0.92000 |")
  blend = predict.Validation(ttas=(1,), member_errors=np.array([[6, 2]]),
                             ensemble_errors=np.array([3]), n_val=50,
                             columns=("runs/a", "runs/b"), ensemble_name="blend")
  assert blend.table() == ("| tta | runs/a | runs/b | member mean accuracy | blend accuracy |\n"
                           "|---|---|---|---|---|\n"
                           "| 1 | 6 | 2 | 0.92000 | 0.94000 (3 wrong) |")


@pytest.mark.parametrize("own_split", [True, False])
def test_validate_counts_each_members_errors_as_training_measured_them(tmp_path, kaggle_dir,
                                                                      own_split, monkeypatch):
  data_dir = kaggle_dir(n_train=300, n_test=10)
  cfg = tiny_config(**{"ensemble.size": 2, "ensemble.own_split": own_split})
  workdir = tmp_path / "run"
  train.train_and_evaluate(cfg, workdir, data_dir)
  views = record_predictor_calls(monkeypatch, "tta")
  result = predict.validate(workdir, data_dir, (1, 3))
  # Each member at each count, then (sharing a split) the ensemble: on 30 images of a tiny run
  # the counts may tie, so the views asked for are checked as well as the counts.
  assert views == [1, 3, 1, 3] + ([] if own_split else [1, 3])
  monkeypatch.undo()
  assert result.ttas == (1, 3) and result.n_val == 30
  assert result.member_errors.shape == (2, 2) and result.member_errors.dtype == np.int64
  # The trainer's best validation accuracy per member is the tta-1 row, counted again here.
  records = map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
  best = np.max([r["val_accuracy_members"] for r in records], axis=0)
  np.testing.assert_allclose(1 - result.member_errors[0] / 30, best, atol=1e-6)
  assert (result.ensemble_errors is None) == own_split
  if not own_split:
    val = build.load_split(cfg, data_dir).val
    probs = evaluate.load_predictor(workdir).probabilities(val.images, tta=3)
    assert result.ensemble_errors[1] == (probs.argmax(-1) != val.labels).sum()
    assert result.ensemble_errors.dtype == np.int64  # Counts of images, not rates.
  table = result.table().splitlines()
  assert table[0].startswith("| tta | member 0 | member 1 |") and len(table) == 4
  # Pairing views needs one set of images for the run: none when each member has its own.
  assert (result.run_wrong is None) == own_split
  if not own_split:
    assert result.run_wrong.shape == (2, 1, 30)
    np.testing.assert_array_equal(result.run_wrong[:, 0].sum(-1), result.ensemble_errors)
    wrong_1, wrong_3 = result.run_wrong[:, 0]
    assert result.tta_paired_table().splitlines()[2] == (
        f"| {workdir} | tta 3 | {(wrong_1 & ~wrong_3).sum()} | {(wrong_3 & ~wrong_1).sum()} | "
        f"{(wrong_1 & wrong_3).sum()} | "
        f"{predict.sign_test_p((wrong_1 & ~wrong_3).sum(), (wrong_3 & ~wrong_1).sum()):.3f} |")


@pytest.mark.slow
def test_validate_refuses_a_train_csv_the_run_was_not_trained_on(tmp_path, kaggle_dir):
  data_dir = kaggle_dir(n_train=300, n_test=10)
  workdir = tmp_path / "run"
  train.train_and_evaluate(tiny_config(num_epochs=1), workdir, data_dir)
  other = kaggle_dir(n_train=300, n_test=10, seed=1)
  with pytest.raises(UserError, match="holds other digits than the train.csv"):
    predict.validate(workdir, other, (1,))
  # The same digits saved differently (gzip'd here) are the same data.
  same = tmp_path / "gz"
  same.mkdir()
  (same / "train.csv.gz").write_bytes(gzip.compress((data_dir / "train.csv").read_bytes()))
  assert predict.validate(workdir, same, (1,)).n_val == 30



def test_a_blend_of_two_architectures_is_validated_on_the_split_they_share(tmp_path, kaggle_dir):
  data_dir = kaggle_dir(n_train=300, n_test=10)
  classic = tiny_config(num_epochs=1)
  residual = tiny_config(**{"num_epochs": 1, "model.name": "residual", "ensemble.size": 2,
                            "schedule.name": "cosine"})
  residual.model.kwargs = ml_collections.ConfigDict({"widths": (4, 8), "blocks": 1})
  runs = {"classic": classic, "residual": residual,
          "other_split": tiny_config(num_epochs=1, seed=1),
          "own_split": tiny_config(**{"num_epochs": 1, "ensemble.size": 2,
                                      "ensemble.own_split": True}),
          "final_fit": tiny_config(**{"num_epochs": 1, "train.final_fit": True,
                                      "schedule.name": "cosine"})}
  for name, cfg in runs.items():
    train.train_and_evaluate(cfg, tmp_path / name, data_dir)
  result = predict.validate_blend([tmp_path / "classic", tmp_path / "residual"], data_dir, (1, 3))
  val = build.load_split(classic, data_dir).val
  assert result.n_val == len(val.labels) == 30 and result.member_errors.shape == (2, 3)
  for i, tta in enumerate((1, 3)):
    a = evaluate.load_predictor(tmp_path / "classic").probabilities(val.images, tta=tta)
    b = evaluate.load_predictor(tmp_path / "residual").probabilities(val.images, tta=tta)
    assert result.member_errors[i, 0] == (a.argmax(-1) != val.labels).sum()
    # One classic member and two residual ones, each weighted alike (as predict.blend does).
    assert result.ensemble_errors[i] == ((a + 2 * b).argmax(-1) != val.labels).sum()
  head = result.table().splitlines()[0]
  assert head == (f"| tta | {tmp_path / 'classic'} | {tmp_path / 'residual'} member 0 | "
                  f"{tmp_path / 'residual'} member 1 | member mean accuracy | blend accuracy |")
  # The paired comparison: the residual run (its two members blended) against the classic one.
  paired = result.paired_table().splitlines()
  assert len(paired) == 2 + 2 and result.runs == (str(tmp_path / "classic"),
                                                  str(tmp_path / "residual"))
  for i, tta in enumerate((1, 3)):
    a = evaluate.load_predictor(tmp_path / "classic").probabilities(val.images, tta=tta)
    b = evaluate.load_predictor(tmp_path / "residual").probabilities(val.images, tta=tta)
    wrong_a, wrong_b = a.argmax(-1) != val.labels, b.argmax(-1) != val.labels
    only_a, only_b = int((wrong_a & ~wrong_b).sum()), int((wrong_b & ~wrong_a).sum())
    assert paired[2 + i] == (f"| {tta} | {tmp_path / 'residual'} | {only_a} | {only_b} | "
                             f"{int((wrong_a & wrong_b).sum())} | "
                             f"{predict.sign_test_p(only_a, only_b):.3f} |")
  with pytest.raises(UserError) as info:
    predict.validate_blend([tmp_path / "classic", tmp_path / "other_split"], data_dir, (1,))
  assert str(info.value) == (
      f"{tmp_path / 'other_split'}: its validation images are not those of "
      f"{tmp_path / 'classic'}; validate a blend of runs with the same seed, "
      "data.val_fraction, data.subset and labels")
  with pytest.raises(UserError) as info:
    predict.validate_blend([tmp_path / "classic", tmp_path / "own_split"], data_dir, (1,))
  assert str(info.value) == (
      f"{tmp_path / 'own_split'}: each member has its own validation split "
      "(ensemble.own_split); a blend is validated on one split its runs share")
  # What a sweep records: the misses of the run as a whole, which own splits do not allow.
  key, missed = predict.validation_misses(tmp_path / "residual", data_dir)
  assert key == predict.validation_misses(tmp_path / "classic", data_dir)[0]
  assert key != predict.validation_misses(tmp_path / "other_split", data_dir)[0]
  residual_wrong = result.run_wrong[0, 1]  # tta 1, the residual run's two members blended.
  assert missed == sorted(build.load_split(classic, data_dir).val_idx[0][residual_wrong].tolist())
  with pytest.raises(UserError, match="own validation split .* no held-out rows"):
    predict.validation_misses(tmp_path / "own_split", data_dir)
  for validate in (lambda: predict.validate(tmp_path / "final_fit", data_dir, (1,)),
                   lambda: predict.validate_blend([tmp_path / "classic", tmp_path / "final_fit"],
                                                  data_dir, (1,))):
    with pytest.raises(UserError) as info:
      validate()
    assert str(info.value) == (
        f"{tmp_path / 'final_fit'}: a final fit (train.final_fit) trained on its validation "
        "images, so they validate nothing; validate the run its recipe was chosen on")

def test_sign_test_golden_values():
  assert predict.sign_test_p(0, 0) == predict.sign_test_p(4, 4) == 1.0
  assert predict.sign_test_p(0, 5) == 2 / 32
  assert predict.sign_test_p(9, 1) == 2 * (1 + 10) / 1024
  assert predict.sign_test_p(3, 10) == pytest.approx(2 * 378 / 8192)  # 1 + 13 + 78 + 286.


@given(st.integers(0, 60), st.integers(0, 60))
def test_sign_test_is_symmetric_and_matches_scipys_binomial_test(a, b):
  p = predict.sign_test_p(a, b)
  assert p == predict.sign_test_p(b, a) and 0 < p <= 1
  if a + b:
    assert p == pytest.approx(scipy.stats.binomtest(a, a + b, 0.5).pvalue, rel=1e-9)
  if a < b:  # One more image moved from the larger side to the smaller: less evidence.
    assert predict.sign_test_p(a + 1, b - 1) >= p


def test_validate_rejects_a_bad_tta_before_any_work(tmp_path):
  with pytest.raises(UserError, match="--tta 12"):
    predict.validate(tmp_path / "no-such-run", tmp_path, (1, 12))


@pytest.mark.parametrize("header, shown", [
    ("Id,Label,x", "Id,Label,x"), ("a,b,c,d", "a,b,c,d"), ("a,b,c,d,e", "a,b,c,… (5 columns)")])
def test_a_wrong_header_is_shown_whole_up_to_four_columns(tmp_path, header, shown):
  sub = tmp_path / "sub.csv"
  sub.write_text(header + "\n" + ",".join("1" * len(header.split(","))) + "\n")
  with pytest.raises(UserError) as info:
    predict.read_labels(sub, "submission")
  assert str(info.value) == (f"{sub}: header is {shown}; expected the 2 columns an id and a "
                             "label, e.g. ImageId,Label")
  with pytest.raises(UserError) as info:
    predict.read_labels(sub, "submission", ("ImageId", "Label"))
  assert str(info.value) == f"{sub}: header is {shown}; expected the 2 columns ImageId,Label"


@pytest.mark.parametrize("text, message", [
    ("ImageId,Label\n", "has a header but no rows; expected one ImageId,Label row per test image"),
    ("ImageId,Label\n1,3\n2,NA\n", "line 3: Label must be an integer, got 'NA'"),
    ("ImageId,Label\n1,3\n2,\n", "line 3: Label must be an integer, got ''"),
    ("ImageId,Label\n1,3\n2,4\n2,4\n1,5\n",
     "ImageId 2 appears more than once (2 duplicate row(s)); each ImageId must appear once")])
def test_read_labels_messages_word_for_word(tmp_path, text, message):
  sub = tmp_path / "sub.csv"
  sub.write_text(text)
  with pytest.raises(UserError) as info:
    predict.read_labels(sub, "submission")
  assert str(info.value) == f"{sub}: {message}"


def test_score_names_missing_and_unknown_ids_and_each_files_role(tmp_path):
  answers = _write(tmp_path / "answers.csv", [(1, 3), (2, 4), (3, 5)])
  sub = _write(tmp_path / "sub.csv", [(1, 3), (9, 1)])
  with pytest.raises(UserError) as info:
    predict.score(sub, answers)
  assert str(info.value) == (
      f"{sub}: 2 ImageId(s) missing (first 2); 1 unknown ImageId(s) (first 9); a submission needs "
      f"exactly one row for each of the 3 ImageIds in {answers}")
  with pytest.raises(UserError) as info:
    predict.score(tmp_path / "none.csv", answers)
  assert str(info.value) == f"submission file {tmp_path / 'none.csv'} not found"


@pytest.mark.parametrize("name", ["train.csv", "test.csv", "train.csv.gz", "test.csv.gz",
                                  "sample_submission.csv"])
def test_blend_refuses_every_data_file_as_out_before_any_work(tmp_path, name):
  data_dir = tmp_path / "data"
  data_dir.mkdir()
  (data_dir / name).write_bytes(b"kept")
  with pytest.raises(UserError) as info:  # The run does not even exist: no work was started.
    predict.blend([tmp_path / "no-run"], data_dir, data_dir / name)
  assert str(info.value) == (f"--out {data_dir / name} is one of the input files; write the "
                             "submission elsewhere (default: WORKDIR/submission.csv)")
  assert (data_dir / name).read_bytes() == b"kept"


@pytest.mark.parametrize("kept, out", [
    ("checkpoints", "checkpoints/best/s.csv"), ("config.json", "config.json"),
    ("provenance.json", "provenance.json"), ("metrics.jsonl", "metrics.jsonl")])
def test_blend_refuses_out_inside_a_runs_files(tmp_path, kept, out):
  run = tmp_path / "run"
  with pytest.raises(UserError) as info:
    predict.blend([run], tmp_path, run / out)
  assert str(info.value) == (f"--out {run / out} is inside {run}'s {kept}, which predict reads; "
                             "write the submission elsewhere (default: WORKDIR/submission.csv)")


# Submission formats of the family.

def _test_digits(n, ids=None):
  return data.Digits(np.zeros((n, 28, 28, 1), np.uint8), None,
                     None if ids is None else np.asarray(ids, np.int64))


def test_without_a_sample_the_submission_is_image_id_label_from_one(tmp_path):
  layout = predict.submission_format(tmp_path, _test_digits(3))
  assert layout.header == ("ImageId", "Label")
  np.testing.assert_array_equal(layout.ids, [1, 2, 3])
  # test.csv's own ids win over counting.
  np.testing.assert_array_equal(predict.submission_format(tmp_path, _test_digits(3, [9, 4, 0])).ids,
                                [9, 4, 0])


def test_a_sample_submission_gives_its_header_and_ids(tmp_path):
  (tmp_path / "sample_submission.csv").write_text("id,label\n0,5\n1,5\n2,5\n")
  layout = predict.submission_format(tmp_path, _test_digits(3))
  assert layout.header == ("id", "label")
  np.testing.assert_array_equal(layout.ids, [0, 1, 2])
  with_ids = predict.submission_format(tmp_path, _test_digits(2, [2, 0]))
  assert with_ids.header == ("id", "label")  # The sample's header with test.csv's own ids too.
  np.testing.assert_array_equal(with_ids.ids, [2, 0])
  assert predict.submission_text(np.array([7, 3]), np.array([2, 0]), ("id", "label")) == \
      "id,label\n2,7\n0,3\n"


def test_a_submission_never_drops_rows_when_ids_and_labels_disagree_in_length():
  with pytest.raises(ValueError):
    predict.submission_text(np.array([7, 3, 1]), np.array([1, 2]))
  with pytest.raises(ValueError):
    predict.submission_text(np.array([7]), np.array([1, 2]))


def test_read_labels_with_a_required_header_takes_only_that_header(tmp_path):
  path = tmp_path / "sub.csv"
  path.write_text("ImageId,Label\n1,7\n2,3\n")
  labels = predict.read_labels(path, "submission", ("ImageId", "Label"))
  assert labels.to_dict() == {1: 7, 2: 3} and (labels.index.name, labels.name) == ("ImageId",
                                                                                    "Label")
  path.write_text("id,label\n1,7\n2,3\n")
  with pytest.raises(UserError) as info:
    predict.read_labels(path, "submission", ("ImageId", "Label"))
  assert str(info.value) == f"{path}: header is id,label; expected the 2 columns ImageId,Label"
  assert predict.read_labels(path, "submission").to_dict() == {1: 7, 2: 3}  # Any, unasked.


def test_a_sample_submission_that_is_not_a_file_is_named(tmp_path):
  (tmp_path / "sample_submission.csv").mkdir()
  with pytest.raises(UserError) as info:
    predict.submission_format(tmp_path, _test_digits(2))
  assert str(info.value) == f"sample submission file {tmp_path / 'sample_submission.csv'} not found"


def test_a_sample_that_does_not_fit_test_csv_is_refused(tmp_path):
  sample = tmp_path / "sample_submission.csv"
  sample.write_text("id,label\n0,5\n1,5\n2,5\n")
  with pytest.raises(UserError) as info:
    predict.submission_format(tmp_path, _test_digits(4))
  assert str(info.value) == (
      f"{sample}: has 3 rows and test.csv 4 images (after data.nan_policy), and test.csv has no "
      "id column to match them by; the two must come from the same competition")
  with pytest.raises(UserError) as info:
    predict.submission_format(tmp_path, _test_digits(2, [1, 8]))
  assert str(info.value) == (f"{sample}: lacks 1 of test.csv's ids (first 8); the two must come "
                             "from the same competition")
  sample.write_text("id,label\n0,5\n0,5\n")
  with pytest.raises(UserError, match="id 0 appears more than once"):
    predict.submission_format(tmp_path, _test_digits(2))


def test_score_reads_any_id_label_header_both_files_share(tmp_path):
  answers, sub = tmp_path / "answers.csv", tmp_path / "sub.csv"
  answers.write_text("id,label\n0,3\n1,24\n2,0\n5,7\n")
  sub.write_text("id,label\n5,7\n2,0\n0,3\n1,23\n")
  assert predict.score(sub, answers) == 0.75
  sub.write_text("ImageId,Label\n5,7\n2,0\n0,3\n1,23\n")
  with pytest.raises(UserError) as info:
    predict.score(sub, answers)
  assert str(info.value) == (f"{sub}: header is ImageId,Label; expected the 2 columns id,label "
                             f"like {answers}")
  sub.write_text("id,label\n5,7\n2,0\n0,3\n")
  with pytest.raises(UserError) as info:
    predict.score(sub, answers)
  assert str(info.value) == (f"{sub}: 1 id(s) missing (first 1); a submission needs exactly one "
                             f"row for each of the 4 ids in {answers}")


def test_predict_averages_probabilities_with_the_runs_tta_unless_told(tmp_path, monkeypatch):
  """predict() is blend() of one run: soft averaging (not votes) and the run's predict.tta."""
  calls = []
  monkeypatch.setattr(predict, "blend", lambda *args: calls.append(args) or (args[2], ["p"]))
  out, predictor = predict.predict(tmp_path / "run", tmp_path / "data")
  assert calls == [([tmp_path / "run"], tmp_path / "data", tmp_path / "run" / "submission.csv",
                    None, False)]
  assert (out, predictor) == (tmp_path / "run" / "submission.csv", "p")
  calls.clear()
  predict.predict(tmp_path / "run", tmp_path / "data", tmp_path / "s.csv", tta=3, vote=True)
  assert calls == [([tmp_path / "run"], tmp_path / "data", tmp_path / "s.csv", 3, True)]
