"""dr_jax.api: the commands as Python functions, and the defaults they fill (data dir, config)."""

from __future__ import annotations

import json
import pathlib
import shutil

import pandas as pd
import pytest

from conftest import cli_isolation, write_family_dir
from dr_jax import api, config
from dr_jax.errors import UserError

REPO = pathlib.Path(__file__).resolve().parent.parent
TINY = ["num_epochs=1", "model.kwargs.widths=(8, 16)", "model.kwargs.dense=32",
        "train.eval_batch_size=16", "data.val_fraction=0.1"]


@pytest.fixture
def places(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
  """A working directory without data/, and a stand-in for Kaggle's notebook input."""
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(api, "KAGGLE_INPUT", tmp_path / "kaggle" / "input" / "digit-recognizer")
  return tmp_path


def test_default_data_dir_is_data_without_a_kaggle_input(places, capsys):
  assert api.default_data_dir() == pathlib.Path("data")
  assert capsys.readouterr().err == ""


def test_default_data_dir_finds_the_kaggle_notebook_input(places, kaggle_dir, capsys):
  shutil.copytree(kaggle_dir(n_train=20, n_test=5), api.KAGGLE_INPUT)
  assert api.default_data_dir() == api.KAGGLE_INPUT
  assert capsys.readouterr().err == f"dr-jax: using the Kaggle input {api.KAGGLE_INPUT}\n"


def test_local_data_wins_over_the_kaggle_input(places, kaggle_dir):
  shutil.copytree(kaggle_dir(n_train=20, n_test=5), api.KAGGLE_INPUT)
  shutil.copytree(api.KAGGLE_INPUT, places / "data")
  assert api.default_data_dir() == pathlib.Path("data")


def _provenance(workdir: pathlib.Path, *train_csvs: pathlib.Path) -> None:
  workdir.mkdir(parents=True)
  records = [{"train_data": {"path": str(p), "sha256": "0" * 64}} for p in train_csvs]
  (workdir / "provenance.json").write_text(json.dumps(records))


def test_data_dir_of_a_run_is_where_its_last_training_read_train_csv(places, capsys):
  first, second = places / "first", places / "second"
  first.mkdir()
  second.mkdir()
  _provenance(places / "run", first / "train.csv", second / "train.csv.gz")
  assert api.data_dir_of(places / "run", None) == second
  assert capsys.readouterr().err == (f"dr-jax: using the data {places / 'run'} was trained on: "
                                     f"{second} (--data-dir to change)\n")
  assert api.data_dir_of(places / "run", "elsewhere") == pathlib.Path("elsewhere")


def test_data_dir_of_a_run_whose_data_is_gone_or_unrecorded_is_the_default(places):
  _provenance(places / "moved", places / "gone" / "train.csv")
  assert api.data_dir_of(places / "moved", None) == pathlib.Path("data")
  assert api.data_dir_of(places / "never_trained", None) == pathlib.Path("data")


def test_resolve_config_by_name_with_overrides_and_checks():
  cfg = api.resolve_config("default", ["num_epochs=3"])
  expected = config.load_config(REPO / "experiments" / "default.py")
  expected.num_epochs = 3
  assert config.flatten(cfg) == config.flatten(expected)
  with pytest.raises(UserError, match="schedule.name"):
    api.resolve_config("default", ["schedule.name=platau"])


def test_default_workdir_is_runs_and_the_config_name():
  assert api.default_workdir("experiments/strided.py") == pathlib.Path("runs/strided")
  assert api.default_workdir(config.get_base_config()) == pathlib.Path("runs/run")


def test_predict_needs_out_to_blend_and_at_least_one_run(tmp_path):
  with pytest.raises(UserError, match="needs --out FILE"):
    api.predict([tmp_path / "a", tmp_path / "b"])
  with pytest.raises(UserError, match="at least one run"):
    api.predict([])


@pytest.fixture(scope="module")
def trained(kaggle_dir, tmp_path_factory, cli_env):
  """A one-epoch tiny run trained through the API, its data dir outside the working dir."""
  data = kaggle_dir(n_train=300, n_test=20)
  workdir = tmp_path_factory.mktemp("api") / "run"
  with cli_isolation(cli_env):
    summary = api.train(config.apply_overrides(config.load_config(REPO / "experiments" /
                                                                  "tiny.py"), TINY),
                        workdir, data)
  return data, workdir, summary


def test_train_returns_the_summary(trained):
  _, workdir, summary = trained
  assert summary["workdir"] == str(workdir) and summary["epochs"] == 1
  assert summary["best_epoch"] == 1 and 0 <= summary["best_val_accuracy"] <= 1


def test_predict_score_validate_and_report_follow_the_runs_data(trained, tmp_path,
                                                                 monkeypatch, capsys):
  data, workdir, summary = trained
  monkeypatch.chdir(tmp_path)  # No data/ here: every default must come from the run.
  submission = api.predict(workdir)
  assert submission.path == workdir / "submission.csv" and submission.path.is_file()
  assert [p.run.epoch for p in submission.predictors] == [summary["best_epoch"]]
  assert f"using the data {workdir} was trained on: {data}" in capsys.readouterr().err
  accuracy = api.score(submission.path, data_dir=data)
  assert accuracy == api.score(submission.path, answers=data / "test_answers.csv")
  wrong = round((1 - accuracy) * len(pd.read_csv(data / "test_answers.csv")))
  assert f"| {submission.path} | {accuracy:.5f} | {wrong} |" in api.compare(
      [submission.path, submission.path], data_dir=data)
  validation = api.validate(workdir, tta=(1,))
  # Best epoch = the only epoch: validation errors are what training measured.
  assert 1 - validation.member_errors[0, 0] / validation.n_val == pytest.approx(
      summary["best_val_accuracy"])
  index = api.report(workdir)
  assert index == workdir / "report" / "index.md" and index.is_file()


# Datasets of the MNIST-as-CSV family (conftest.write_family_dir) and the overrides each needs.
SIGN_LANGUAGE = tuple(c for c in range(25) if c != 9)  # 24 classes, label 9 unused.
FAMILY = [
    pytest.param({"ids_from": 0}, [], id="ids-from-0-sample-submission"),
    pytest.param({"first_pixel": 1, "classes": SIGN_LANGUAGE}, [], id="pixel1-24-classes-gap"),
    pytest.param({"shape": (32, 32, 1)}, [], id="32x32"),
    pytest.param({"shape": (16, 16, 3), "header": False},
                 ["data.image_shape=(16, 16, 3)", "data.header=false"], id="headerless-16x16x3"),
]


@pytest.mark.slow
@pytest.mark.parametrize("layout, overrides", FAMILY)
def test_a_dataset_of_the_family_trains_predicts_and_scores(tmp_path, cli_env, layout, overrides):
  data = write_family_dir(tmp_path / "data", **layout)
  workdir = tmp_path / "run"
  cfg = config.apply_overrides(config.load_config(REPO / "experiments" / "tiny.py"),
                               [*TINY, "num_epochs=3", *overrides])
  with cli_isolation(cli_env):
    api.train(cfg, workdir, data)
    submission = api.predict(workdir, data)
    accuracy = api.score(submission.path, data_dir=data)
    validation = api.validate(workdir, data, tta=(1, 3))
    index = api.report(workdir, data)
  classes = sorted(layout.get("classes", range(10)))
  assert validation.member_errors.shape == (2, 1)
  assert {"confusion_matrix.png", "worst_errors.png", "digit.png"} <= \
      {p.name for p in index.parent.iterdir()}
  recorded = json.loads((workdir / "config.json").read_text())["data"]
  assert recorded["classes"] == classes
  assert recorded["image_shape"] == list(layout.get("shape", (28, 28, 1)))
  frame = pd.read_csv(submission.path)
  answers = pd.read_csv(data / "test_answers.csv")
  # The competition's header and ids: sample_submission.csv's, else ImageId,Label from 1.
  assert list(frame.columns) == list(answers.columns)
  assert frame.iloc[:, 0].tolist() == answers.iloc[:, 0].tolist()
  assert set(frame.iloc[:, 1]) <= set(classes)  # Only labels train.csv has.
  assert accuracy == (frame.iloc[:, 1] == answers.iloc[:, 1]).mean()
  assert accuracy > 0.5  # A bright block per class: learnable in three epochs.
