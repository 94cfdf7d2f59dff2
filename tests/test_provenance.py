"""Tests of dr_jax.provenance: the run's record of its training data, reading the config back."""

import json

import pytest

from dr_jax import provenance
from dr_jax.errors import UserError
from conftest import tiny_config


def _write(workdir, *records):
  (workdir / "provenance.json").write_text(json.dumps(list(records)))


def test_write_run_files_records_the_data_and_a_resume_appends(tmp_path):
  cfg = tiny_config()
  provenance.write_run_files(tmp_path, cfg, False, tmp_path / "train.csv", "a" * 64)
  provenance.write_run_files(tmp_path, cfg, True, tmp_path / "train.csv", "a" * 64)
  records = json.loads((tmp_path / "provenance.json").read_text())
  assert [r["resumed"] for r in records] == [False, True]
  assert records[0]["train_data"] == {"path": str(tmp_path / "train.csv"), "sha256": "a" * 64}
  assert provenance.read_config(tmp_path).to_dict() == cfg.to_dict()


def test_check_train_data_passes_the_same_digits_and_runs_that_predate_the_record(tmp_path):
  provenance.check_train_data(tmp_path, tmp_path / "train.csv", "b" * 64)  # No provenance.json.
  _write(tmp_path, {"resumed": False})  # Written before runs recorded their data.
  provenance.check_train_data(tmp_path, tmp_path / "train.csv", "b" * 64)
  _write(tmp_path, {"train_data": {"path": "/old/train.csv", "sha256": "b" * 64}})
  provenance.check_train_data(tmp_path, tmp_path / "elsewhere.csv", "b" * 64)


def test_check_train_data_names_both_files_and_uses_the_latest_record(tmp_path):
  _write(tmp_path, {"train_data": {"path": "/first/train.csv", "sha256": "c" * 64}},
         {"train_data": {"path": "/latest/train.csv", "sha256": "d" * 64}})
  provenance.check_train_data(tmp_path, tmp_path / "x.csv", "d" * 64)
  with pytest.raises(UserError) as info:
    provenance.check_train_data(tmp_path, tmp_path / "x.csv", "c" * 64)
  message = str(info.value)
  assert str(tmp_path / "x.csv") in message and "/latest/train.csv" in message
  assert "d" * 12 in message and "c" * 12 in message and "\n" not in message


def test_read_config_of_a_directory_that_is_no_run(tmp_path):
  with pytest.raises(UserError, match="not a dr_jax run directory"):
    provenance.read_config(tmp_path)
  (tmp_path / "config.json").write_text("{")
  with pytest.raises(UserError, match="not valid JSON"):
    provenance.read_config(tmp_path)


def test_check_pseudo_labels_refuses_other_rows_than_the_run_started_with(tmp_path):
  record = {"teacher": "/runs/default", "threshold": 0.99, "rows": 27397}
  provenance.check_pseudo_labels(tmp_path, record)  # No provenance.json: nothing to compare.
  provenance.write_run_files(tmp_path, tiny_config(), False, tmp_path / "train.csv",
                             "a" * 64, record)
  provenance.check_pseudo_labels(tmp_path, dict(record))
  with pytest.raises(UserError, match="trained with 27,397 pseudo-labelled rows from "
                                      "/runs/default, this config gives no pseudo-labels"):
    provenance.check_pseudo_labels(tmp_path, None)
  with pytest.raises(UserError, match="pseudo.threshold it started with"):
    provenance.check_pseudo_labels(tmp_path, record | {"threshold": 0.9})
  provenance.write_run_files(tmp_path, tiny_config(), False, tmp_path / "train.csv",
                             "a" * 64)
  with pytest.raises(UserError, match="trained with no pseudo-labels, this config gives 27,397"):
    provenance.check_pseudo_labels(tmp_path, record)


def _trained_with(tmp_path, **overrides):
  tmp_path.mkdir(exist_ok=True)
  cfg = tiny_config(**overrides)
  (tmp_path / "config.json").write_text(cfg.to_json())
  return tmp_path


@pytest.mark.parametrize("key, value", [
    ("predict.tta", 5), ("train.eval_batch_size", 64), ("train.early_stop", 3),
    ("train.fast_cpu", False), ("train.steps_per_call", 1), ("ensemble.vectorize", "loop"),
    ("num_epochs", 9), ("train.target_accuracy", 0.99)])
def test_resume_may_change_how_the_run_is_computed_or_used(tmp_path, key, value):
  provenance.check_config(_trained_with(tmp_path), tiny_config(**{key: value}))


@pytest.mark.parametrize("key, value", [
    ("seed", 3), ("data.val_fraction", 0.2), ("optimizer.lr", 0.5), ("model.name", "strided"),
    ("ensemble.size", 2), ("augment.rotation", 0.0), ("data.subset", 100),
    ("schedule.patience", 9)])
def test_resume_refuses_what_changes_the_run(tmp_path, key, value):
  workdir = _trained_with(tmp_path)
  with pytest.raises(UserError, match=f"was trained with another config \\({key} "):
    provenance.check_config(workdir, tiny_config(**{key: value}))


def test_more_epochs_of_a_per_step_schedule_is_another_run(tmp_path):
  workdir = _trained_with(tmp_path, **{"schedule.name": "onecycle"})
  with pytest.raises(UserError, match=r"num_epochs 2 → 3"):
    provenance.check_config(workdir, tiny_config(**{"schedule.name": "onecycle",
                                                    "num_epochs": 3}))
  provenance.check_config(_trained_with(tmp_path / "p"), tiny_config(num_epochs=3))


def test_a_run_without_config_json_is_not_checked(tmp_path):
  provenance.check_config(tmp_path, tiny_config(seed=7))


def test_a_run_from_before_a_key_existed_resumes_under_the_value_it_implied(tmp_path):
  """A digits run whose config.json predates data.* layout keys and train.early_stop resumes."""
  old = json.loads(tiny_config().to_json())
  for key in ("classes", "image_shape", "num_classes", "header"):
    del old["data"][key]
  del old["train"]["early_stop"]
  (tmp_path / "config.json").write_text(json.dumps(old))
  resolved = tiny_config(**{"data.classes": tuple(range(10)), "data.image_shape": (28, 28, 1)})
  provenance.check_config(tmp_path, resolved)
  with pytest.raises(UserError, match=r"data.image_shape \(28, 28, 1\) → \(32, 32, 1\)"):
    provenance.check_config(tmp_path, tiny_config(**{"data.classes": tuple(range(10)),
                                                     "data.image_shape": (32, 32, 1)}))
  with pytest.raises(UserError, match=r"data.header True → False"):
    provenance.check_config(tmp_path, tiny_config(**{"data.header": False}))
