"""Tests of dr_jax.report: the pure computations, and a report of a real tiny run."""

import csv
import json
import re

import flax.linen as nn
import jax
import numpy as np
import pytest

from dr_jax import build, cli, evaluate, models, predict, provenance, report, steps, train
from dr_jax.errors import UserError
from conftest import tiny_config

FIGURES = {"learning_curves", "time_to_accuracy", "confusion_matrix", "worst_errors",
           "conv1_filters", "digit", "feature_maps_Conv_0", "feature_maps_Conv_1",
           "feature_maps_Conv_2", "feature_maps_Conv_3"}


def png_size(path):
  """(width, height) from a PNG's IHDR chunk, after checking the signature."""
  head = path.read_bytes()[:24]
  assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
  return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def _cfg(**overrides):
  return tiny_config(**{"train.steps_per_call": 1}, **overrides)


@pytest.fixture(scope="module")
def reported(tmp_path_factory, data_dir):
  """A two-epoch run with a submission, and its report."""
  workdir = tmp_path_factory.mktemp("run")
  train.train_and_evaluate(_cfg(), workdir, data_dir)
  predict.predict(workdir, data_dir)
  return workdir, report.make_report(workdir, data_dir, digit=7)


@pytest.fixture(scope="module")
def classic():
  """The classic model (widths 8, 16) and its initialised variables."""
  model = models.create_model("classic", widths=(8, 16), dense=32)
  return model, models.init_variables(model, jax.random.key(0))


def _image(seed=0):
  return np.random.default_rng(seed).integers(0, 256, (28, 28, 1), dtype=np.uint8)


def test_every_figure_is_a_png_of_the_configured_size(reported):
  workdir, _ = reported
  pngs = {p.stem: p for p in (workdir / "report").glob("*.png")}
  assert set(pngs) == FIGURES
  for name, path in pngs.items():
    kind = "feature_maps" if name.startswith("feature_maps_") else name
    width, height = report.FIGSIZES[kind]
    assert png_size(path) == (round(width * report.DPI), round(height * report.DPI)), name


def test_index_links_every_png_and_gives_the_scores(reported, data_dir):
  workdir, index = reported
  text = index.read_text()
  links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
  assert sorted(links) == sorted(p.name for p in (workdir / "report").glob("*.png"))
  assert all((index.parent / link).is_file() for link in links)
  test = predict.score(workdir / "submission.csv", data_dir / "test_answers.csv")
  assert f"| test accuracy | {test:.4f} |" in text
  predictor = evaluate.load_predictor(workdir)
  assert f"| best epoch | {predictor.run.epoch} of 2 |" in text
  assert f"| best val accuracy | {predictor.run.best_val_accuracy:.4f} " in text


def _index_numbers(index):
  """(best epoch, epochs, best val accuracy, test accuracy) as index.md's table gives them."""
  text = index.read_text()
  epoch, epochs = re.search(r"^\| best epoch \| (\d+) of (\d+) \|$", text, re.M).groups()
  best = re.search(r"^\| best val accuracy \| (\d\.\d{4}) \|$", text, re.M).group(1)
  test = re.search(r"^\| test accuracy \| (\d\.\d{4}) \|$", text, re.M).group(1)
  return int(epoch), int(epochs), best, test


def _hand_test_accuracy(submission, answers):
  """The share of answers.csv's rows whose label submission.csv gives for the same ImageId."""
  read = lambda path: {row["ImageId"]: row["Label"] for row in csv.DictReader(path.open())}
  predicted, truth = read(submission), read(answers)
  return sum(predicted[i] == label for i, label in truth.items()) / len(truth)


def _best_record(workdir):
  """metrics.jsonl's best epoch: highest val accuracy, ties to the lower val loss, then earlier."""
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return min(records, key=lambda r: (-r["val_accuracy"], r["val_loss"], r["epoch"])), records


def test_index_numbers_are_those_of_the_files_on_disk(reported, data_dir):
  workdir, index = reported
  best, records = _best_record(workdir)
  epoch, epochs, best_accuracy, test = _index_numbers(index)
  assert (epoch, epochs) == (best["epoch"], records[-1]["epoch"]) and epochs == 2
  assert best_accuracy == f"{best['val_accuracy']:.4f}"
  hand = _hand_test_accuracy(workdir / "submission.csv", data_dir / "test_answers.csv")
  assert test == f"{hand:.4f}"


def test_index_gives_the_minutes_to_the_target_from_metrics_on_disk(reported):
  workdir, index = reported
  _, records = _best_record(workdir)
  line = re.search(r"^\| time to val accuracy 0\.9950 \| (.*) \|$", index.read_text(), re.M)
  reached = [r for r in records if r["val_accuracy"] >= 0.995]
  expected = (f"{reached[0]['elapsed_s'] / 60:.1f} min (epoch {reached[0]['epoch']})" if reached
              else "not reached in 2 epochs")
  assert line.group(1) == expected


def test_time_to_accuracy_figure_marks_where_the_target_was_met():
  records = [{"epoch": 1, "val_accuracy": 0.99, "elapsed_s": 60.0},
             {"epoch": 2, "val_accuracy": 0.996, "elapsed_s": 150.0}]
  fig = report.plot_time_to_accuracy(records, 0.995)
  ax = fig.axes[0]
  assert list(ax.lines[0].get_xdata()) == [1.0, 2.5]
  assert list(ax.lines[0].get_ydata()) == [0.99, 0.996]
  assert [line.get_label() for line in ax.lines[1:]] == ["target 0.9950",
                                                         "reached at 2.5 min (epoch 2)"]
  assert list(ax.lines[2].get_xdata()) == [2.5, 2.5]
  assert ax.get_xlabel() == "wall-clock minutes since the run started"
  not_met = report.plot_time_to_accuracy(records, 0.999).axes[0]
  assert [line.get_label() for line in not_met.lines[1:]] == ["target 0.9990"]


def test_index_names_the_best_epoch_not_the_last(tmp_path, data_dir, monkeypatch):
  # Scripted validation: epoch 3 ties epoch 2's accuracy at a lower loss; epoch 4 is worse.
  scores = iter([(0.5, 1.0), (0.7, 0.9), (0.7, 0.8), (0.6, 0.7)])

  def scripted(predictor, split, batch_size=1000):
    accuracy, loss = next(scores)
    return evaluate.Scores(np.array([loss]), np.array([accuracy]), None)

  with monkeypatch.context() as patch:
    patch.setattr(evaluate, "validation_scores", scripted)
    train.train_and_evaluate(_cfg(num_epochs=4), tmp_path, data_dir)
  predict.predict(tmp_path, data_dir)
  index = report.make_report(tmp_path, data_dir, digit=7)
  best, _ = _best_record(tmp_path)
  assert best["epoch"] == 3
  epoch, epochs, best_accuracy, test = _index_numbers(index)
  assert (epoch, epochs, best_accuracy) == (3, 4, "0.7000")
  hand = _hand_test_accuracy(tmp_path / "submission.csv", data_dir / "test_answers.csv")
  assert test == f"{hand:.4f}"


def test_a_final_fits_index_says_its_validation_is_not_held_out(reported, tmp_path, data_dir):
  assert "final fit" not in reported[1].read_text()
  train.train_and_evaluate(_cfg(**{"train.final_fit": True, "schedule.name": "onecycle"}),
                           tmp_path, data_dir)
  text = report.make_report(tmp_path, data_dir, digit=7).read_text()
  assert "the validation figures here are not held out" in text
  assert re.search(r"^\| best epoch \| 2 of 2 \|$", text, re.M)  # The last, whatever its score.


def test_tensorboard_gets_the_confusion_matrix_and_worst_errors_under_stable_tags(reported):
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

  workdir, _ = reported
  # report writes its own event file beside training's, in the same run directory.
  events = EventAccumulator(str(workdir / "tensorboard"), size_guidance={"images": 0}).Reload()
  assert {"report/confusion_matrix", "report/worst_errors"} <= set(events.Tags()["images"])
  (image,) = events.Images("report/worst_errors")
  size = report.FIGSIZES["worst_errors"]
  assert (image.width, image.height) == (size[0] * report.DPI, size[1] * report.DPI)
  assert not [tag for tag in events.Tags()["images"] if tag.startswith("report/error_")]


def test_confusion_counts_of_the_run_cover_the_validation_split(reported, data_dir):
  workdir, _ = reported
  split = build.load_split(provenance.read_config(workdir), data_dir)
  predictor = evaluate.load_predictor(workdir)
  predicted = predictor.probabilities(split.val.images).argmax(axis=-1)
  counts = report.confusion_counts(split.val.labels, predicted, 10)
  assert counts.shape == (10, 10) and counts.sum() == len(split.val.labels) == 30
  assert np.trace(counts) / counts.sum() == pytest.approx(predictor.run.best_val_accuracy)


def test_confusion_counts_rows_are_true_columns_predicted():
  counts = report.confusion_counts(np.array([1, 1, 2, 3]), np.array([1, 2, 2, 0]), 10)
  expected = np.zeros((10, 10), int)
  expected[1, 1] = expected[1, 2] = expected[2, 2] = expected[3, 0] = 1
  np.testing.assert_array_equal(counts, expected)


def test_worst_errors_are_wrong_and_most_confident_first():
  probs = np.full((6, 10), 0.0)
  for row, (cls, p) in enumerate([(0, 0.9), (3, 0.6), (5, 0.95), (2, 0.7), (4, 0.6), (1, 0.8)]):
    probs[row] = (1 - p) / 9
    probs[row, cls] = p
  labels = np.array([0, 1, 2, 3, 9, 1])  # Rows 0 and 5 are right.
  np.testing.assert_array_equal(report.worst_errors(labels, probs, k=10), [2, 3, 1, 4])
  np.testing.assert_array_equal(report.worst_errors(labels, probs, k=2), [2, 3])
  assert len(report.worst_errors(np.array([0]), probs[:1], k=5)) == 0


W0, W1 = (28, 28, 8), (14, 14, 16)


@pytest.mark.parametrize("name,kwargs,shapes", [
    ("classic", {"widths": (8, 16)}, {"Conv_0": W0, "Conv_1": W0, "Conv_2": W1, "Conv_3": W1}),
    ("classic", {"widths": (8, 16), "batch_norm": True},
     {"Conv_0": W0, "Conv_1": W0, "Conv_2": W1, "Conv_3": W1}),
    ("strided", {"widths": (8, 16, 32)}, {
        "Conv_0": (26, 26, 8), "Conv_1": (24, 24, 8), "Conv_2": (12, 12, 8),
        "Conv_3": (10, 10, 16), "Conv_4": (8, 8, 16), "Conv_5": (4, 4, 16),
        "Conv_6": (1, 1, 32)}),
])
def test_feature_maps_shapes_for_every_conv_layer(name, kwargs, shapes):
  model = models.create_model(name, **kwargs)
  # Shapes only: eval_shape traces without compiling or running anything.
  variables = jax.eval_shape(lambda key: models.init_variables(model, key), jax.random.key(0))
  maps = jax.eval_shape(lambda v: report.feature_maps(model.apply, v, _image(),
                                                      steps.Preprocess()), variables)
  assert {k: v.shape for k, v in maps.items()} == shapes
  assert list(maps) == list(shapes)  # Call order, input layer first.


def test_feature_maps_is_pure_and_is_the_layer_output(classic):
  model, variables = classic
  before = jax.tree.map(np.array, variables)
  pre = steps.Preprocess(shift=10.0, scale=100.0)
  a = report.feature_maps(model.apply, variables, _image(), pre)
  b = report.feature_maps(model.apply, variables, _image(), pre)
  assert list(a) == list(b)
  for name in a:
    np.testing.assert_array_equal(a[name], b[name])
  assert set(variables) == {"params"}
  jax.tree.map(np.testing.assert_array_equal, variables, before)
  x = (_image().astype(np.float32)[None] - 10.0) / 100.0
  direct = nn.Conv(8, (5, 5), padding="SAME").apply({"params": variables["params"]["Conv_0"]}, x)
  np.testing.assert_allclose(a["Conv_0"], direct[0], rtol=1e-5, atol=1e-5)
  other = report.feature_maps(model.apply, variables, _image(seed=1), pre)
  assert not np.allclose(other["Conv_0"], a["Conv_0"])


def test_first_conv_kernel_is_the_input_layer(classic):
  _, variables = classic
  assert report.first_conv_kernel(variables["params"]).shape == (5, 5, 1, 8)
  # Colour input: the kernel that takes three channels, even when a later one does too, in
  # whatever order the parameters come.
  model = models.create_model("classic", widths=(3, 8), dense=16)
  rgb = dict(reversed(models.init_variables(model, jax.random.key(0), (16, 16, 3))["params"]
                      .items()))
  assert list(rgb)[-1] == "Conv_0"
  np.testing.assert_array_equal(report.first_conv_kernel(rgb, 3), rgb["Conv_0"]["kernel"])


def test_missing_digit_is_a_user_error():
  with pytest.raises(UserError, match="label 4"):
    report.first_with_label(np.array([0, 1, 2]), 4)
  assert report.first_with_label(np.array([3, 7, 7]), 7) == 1


@pytest.mark.parametrize("args", [["--workdir", "{run}"], ["{run}"]])
def test_cli_report_takes_the_run_as_workdir_or_positional(tmp_path, capsys, args):
  assert cli.main(["report", *[a.format(run=tmp_path) for a in args]]) == 2
  assert "metrics.jsonl not found" in capsys.readouterr().err


@pytest.mark.parametrize("args", [[], ["{run}", "--workdir", "{run}"]])
def test_cli_report_needs_the_run_once(tmp_path, capsys, args):
  assert cli.main(["report", *[a.format(run=tmp_path) for a in args]]) == 2
  assert "give the run directory once" in capsys.readouterr().err
