"""metrics.py: TensorBoard (scalars, hyperparameters, examples) and metrics.jsonl, read back."""

from __future__ import annotations

import json
import pathlib
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
from tensorboard.compat.proto import event_pb2
from tensorboard.plugins.hparams import plugin_data_pb2

from conftest import tiny_config
from dr_jax import metrics
from dr_jax.errors import UserError


def _values(workdir: pathlib.Path) -> list[tuple[int, event_pb2.Summary.Value]]:
  """Every (step, summary value) in the run's event files, in the order written."""
  return [(event.step, value)
          for path in sorted((workdir / "tensorboard").glob("events.*"))
          for event in map(event_pb2.Event.FromString, RawEventFileLoader(str(path)).Load())
          for value in event.summary.value]


def _hparams(workdir: pathlib.Path) -> list[plugin_data_pb2.HParamsPluginData]:
  """The HPARAMS plugin's records, in the order written."""
  return [plugin_data_pb2.HParamsPluginData.FromString(v.metadata.plugin_data.content)
          for _, v in _values(workdir) if v.metadata.plugin_data.plugin_name == "hparams"]


def _written(workdir: pathlib.Path, tags: set[str]) -> list[tuple[int, event_pb2.Summary.Value]]:
  """The values once all of `tags` reach the file: tensorboardX's thread writes them within the
  writer's flush_secs (2 s), with no way to wait for it."""
  for _ in range(400):
    values = _values(workdir)
    if tags <= {v.tag for _, v in values}:
      return values
    time.sleep(0.05)
  raise AssertionError(f"{tags - {v.tag for _, v in _values(workdir)}} never written")


def _record(epoch: int, accuracy: float) -> dict:
  return {"epoch": epoch, "train_loss": 1.0 / epoch, "val_loss": 1.5 / epoch,
          "train_accuracy": accuracy - 0.01, "val_accuracy": accuracy, "lr": 1e-3}


def test_hyperparameters_config_and_examples_are_in_the_run_from_its_start(tmp_path):
  cfg = tiny_config()
  examples = np.linspace(0, 1, 5 * 28 * 28, dtype=np.float32).reshape(5, 28, 28, 1)
  writer = metrics.MetricsWriter(tmp_path, cfg, 0, examples)
  # Before any epoch or close, in the run's own event file (no sub-run directory).
  values = _written(tmp_path, {"_hparams_/experiment", "_hparams_/session_start_info",
                               "config/text_summary", metrics.EXAMPLES_TAG})
  assert [p for p in (tmp_path / "tensorboard").iterdir() if p.is_dir()] == []
  (image,) = [v.image for _, v in values if v.tag == metrics.EXAMPLES_TAG]
  assert (image.height, image.width) == (28, 8 * 29 - 1)  # 5 images: one row of 8 cells.
  experiment, start = _hparams(tmp_path)
  assert [m.name.tag for m in experiment.experiment.metric_infos] == list(metrics.HPARAM_METRICS)
  hparams = start.session_start_info.hparams
  assert hparams["optimizer.lr"].number_value == pytest.approx(cfg.optimizer.lr)
  assert hparams["model.name"].string_value == cfg.model.name
  assert hparams["model.kwargs.widths"].string_value == "(8, 16)"
  writer.write_epoch(_record(1, 0.5))
  writer.write_epoch(_record(2, 0.75))
  writer.close(0.75)
  values = _values(tmp_path)
  scalars = {(v.tag, step): v.simple_value for step, v in values if v.HasField("simple_value")}
  assert scalars[("accuracy/val", 1)] == 0.5 and scalars[("accuracy/val", 2)] == 0.75
  assert scalars[("hparam/best_val_accuracy", 2)] == 0.75
  # Every HPARAMS metric is a scalar of this same run, so the tab links the run's curves.
  assert set(metrics.HPARAM_METRICS) <= {tag for tag, _ in scalars}
  assert [r.WhichOneof("data") for r in _hparams(tmp_path)] == [
      "experiment", "session_start_info", "session_end_info"]
  assert [json.loads(line)["epoch"] for line in
          (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_a_resumed_writer_starts_no_second_session_and_shows_no_examples(tmp_path):
  cfg = tiny_config()
  writer = metrics.MetricsWriter(tmp_path, cfg, 0, np.zeros((2, 28, 28, 1), np.float32))
  writer.write_epoch(_record(1, 0.5))
  writer.close(0.5)
  writer = metrics.MetricsWriter(tmp_path, cfg, 1, np.ones((2, 28, 28, 1), np.float32))
  writer.write_epoch(_record(2, 0.6))
  writer.close(0.6)
  assert [r.WhichOneof("data") for r in _hparams(tmp_path)] == [
      "experiment", "session_start_info", "session_end_info", "session_end_info"]
  values = _values(tmp_path)
  assert len([v for _, v in values if v.tag == metrics.EXAMPLES_TAG]) == 1
  assert [(step, round(v.simple_value, 6)) for step, v in values
          if v.tag == "hparam/best_val_accuracy"] == [(1, 0.5), (2, 0.6)]


def test_image_grid_places_each_image_in_its_cell():
  images = np.zeros((10, 3, 2, 1), np.float32)
  for i in range(10):
    images[i, i % 3, i % 2, 0] = 1.0
  grid = metrics.image_grid(images, columns=4)
  assert grid.shape == (3 * 4 - 1, 4 * 3 - 1) and grid.dtype == np.uint8
  for i in range(10):
    r, c = divmod(i, 4)
    cell = grid[r * 4: r * 4 + 3, c * 3: c * 3 + 2]
    expected = np.zeros((3, 2), np.uint8)
    expected[i % 3, i % 2] = 255
    np.testing.assert_array_equal(cell, expected)
  assert grid[3].max() == 0 and grid[:, 2].max() == 0  # The gaps.
  assert grid[8:, 6:].max() == 0  # Cells 10 and 11 do not exist: blank.


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 20), st.integers(1, 6), st.integers(-2, 3))
def test_image_grid_holds_every_pixel_clipped_to_0_255(n, columns, offset):
  rng = np.random.default_rng(n)
  images = (rng.random((n, 4, 5, 1)) * 3 + offset).astype(np.float32)
  grid = metrics.image_grid(images, columns)
  rows = -(-n // columns)
  assert grid.shape == (rows * 5 - 1, columns * 6 - 1)
  cells = [grid[r * 5: r * 5 + 4, c * 6: c * 6 + 5] for r in range(rows) for c in range(columns)]
  expected = np.rint(np.clip(images[..., 0], 0, 1) * 255).astype(np.uint8)
  np.testing.assert_array_equal(np.stack(cells[:n]), expected)


def test_a_torn_last_line_is_dropped_on_resume_and_read(tmp_path):
  cfg = tiny_config()
  (tmp_path / "metrics.jsonl").write_text(json.dumps(_record(1, 0.5)) + "\n" +
                                          json.dumps(_record(2, 0.6))[:25])
  assert [r["epoch"] for r in metrics.read_metrics(tmp_path)] == [1]
  writer = metrics.MetricsWriter(tmp_path, cfg, 1)  # Resuming after epoch 1's checkpoint.
  writer.write_epoch(_record(2, 0.7))
  writer.close(0.7)
  assert [(r["epoch"], r["val_accuracy"]) for r in metrics.read_metrics(tmp_path)] == [
      (1, 0.5), (2, 0.7)]


def test_a_damaged_line_before_the_last_is_a_one_line_error(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text("{not json\n" + json.dumps(_record(2, 0.6)) + "\n")
  with pytest.raises(UserError, match=f"^{path}: line 1 is not JSON"):
    metrics.read_metrics(tmp_path)
  assert path.read_text().startswith("{not json")


def test_time_to_accuracy_is_the_first_epoch_at_or_over_the_target_and_its_minutes():
  records = [{"epoch": e, "val_accuracy": a, "elapsed_s": s, "epoch_time_s": 1.0}
             for e, a, s in ((1, 0.98, 90.0), (2, 0.995, 150.0), (3, 0.993, 210.0),
                             (4, 0.997, 270.0))]
  assert metrics.elapsed_minutes(records) == [1.5, 2.5, 3.5, 4.5]
  assert metrics.time_to_accuracy(records, 0.995) == (2, 2.5)  # Reached exactly counts.
  assert metrics.time_to_accuracy(records, 0.996) == (4, 4.5)  # Not the epoch after a dip.
  assert metrics.time_to_accuracy(records, 0.98) == (1, 1.5)
  assert metrics.time_to_accuracy(records, 0.998) is None


def test_an_ensemble_is_judged_by_its_own_accuracy_not_its_members_mean():
  records = [{"epoch": 1, "val_accuracy": 0.990, "val_accuracy_ensemble": 0.996,
              "elapsed_s": 60.0},
             {"epoch": 2, "val_accuracy": 0.996, "val_accuracy_ensemble": 0.994,
              "elapsed_s": 120.0}]
  assert metrics.val_accuracy(records[0]) == 0.996
  assert metrics.time_to_accuracy(records, 0.995) == (1, 1.0)


def test_records_without_elapsed_time_count_their_training_minutes():
  records = [{"epoch": 1, "val_accuracy": 0.5, "epoch_time_s": 30.0},
             {"epoch": 2, "val_accuracy": 0.6, "epoch_time_s": 90.0, "elapsed_s": 500.0}]
  assert metrics.elapsed_minutes(records) == [0.5, 2.0]  # One lacks it: none is used.


def test_a_resumed_writer_continues_the_runs_clock_and_keeps_its_records(tmp_path):
  cfg = tiny_config()
  writer = metrics.MetricsWriter(tmp_path, cfg, 0)
  assert writer.elapsed_before_s == 0.0
  for epoch, seconds in ((1, 40.0), (2, 75.0), (3, 110.0)):
    writer.write_epoch(_record(epoch, 0.5) | {"elapsed_s": seconds})
  writer.close(0.5)
  assert [r["epoch"] for r in writer.records] == [1, 2, 3]
  # Resumed from epoch 2's checkpoint: epoch 3 is dropped, the clock goes on from epoch 2's.
  writer = metrics.MetricsWriter(tmp_path, cfg, 2)
  assert writer.elapsed_before_s == 75.0
  assert [r["epoch"] for r in writer.records] == [1, 2]
  writer.write_epoch(_record(3, 0.6) | {"elapsed_s": 120.0})
  writer.close(0.6)
  assert [r["epoch"] for r in writer.records] == [1, 2, 3]
  assert [r["elapsed_s"] for r in metrics.read_metrics(tmp_path)] == [40.0, 75.0, 120.0]
