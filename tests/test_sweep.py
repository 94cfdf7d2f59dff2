"""Tests of dr_jax.sweep: results files, skipping finished runs, resuming one, grid files."""

import csv
import json
import shutil

import pytest

from dr_jax import cli, config, sweep, train
from dr_jax.errors import UserError

TINY = '''
from dr_jax.config import get_base_config


def tiny(lr):
  c = get_base_config()
  c.num_epochs = 1
  c.batch_size = 32
  c.data.val_fraction = 0.1
  c.model.kwargs.widths = (8, 16)
  c.model.kwargs.dense = 32
  c.optimizer.lr = lr
  c.train.steps_per_call = 1
  c.train.eval_batch_size = 16
  return c
'''


def png_size(path):
  """(width, height) from a PNG's IHDR chunk, after checking the signature."""
  head = path.read_bytes()[:24]
  assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
  return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def write_config(directory, name, lr):
  path = directory / f"{name}.py"
  path.write_text(f'"""Tiny config {name}."""\n' + TINY + f"\n\ndef get_config():\n"
                  f"  return tiny({lr})\n")
  return path


@pytest.fixture(scope="module")
def swept(tmp_path_factory, data_dir):
  """Two configs × two seeds, swept once for the whole module."""
  configs = tmp_path_factory.mktemp("configs")
  paths = [write_config(configs, "a", 1e-3), write_config(configs, "b", 2e-3)]
  workdir = tmp_path_factory.mktemp("sweep")
  results = sweep.sweep(paths, 2, workdir, data_dir)
  return paths, workdir, results


def _rows(workdir):
  with open(workdir / "results.csv") as f:
    return list(csv.DictReader(f))


@pytest.mark.slow
def test_sweep_writes_a_row_per_run_and_a_summary_per_config(swept, data_dir):
  _, workdir, results = swept
  rows = _rows(workdir)
  assert [(r["config"], r["seed_index"], r["seed"]) for r in rows] == [
      ("a", "0", "0"), ("a", "1", "1"), ("b", "0", "0"), ("b", "1", "1")]
  for row in rows:
    assert row["status"] == "ok"
    assert 0.0 <= float(row["test_accuracy"]) <= 1.0
    assert 0.0 <= float(row["best_val_accuracy"]) <= 1.0
    assert float(row["images_per_s"]) > 0 and float(row["wall_s"]) > 0
    assert row["minutes_to_target"] == ""  # One tiny epoch: far from 0.995.
    last = sweep.metrics.read_metrics(row["run_dir"])[-1]["val_accuracy"]
    assert float(row["last_val_accuracy"]) == pytest.approx(last)
    assert float(row["last_val_accuracy"]) <= float(row["best_val_accuracy"])
  for result in results:
    saved = json.loads((workdir / result["config"] / f"seed{result['seed_index']}"
                        / "result.json").read_text())
    assert saved == result
    assert (workdir / result["config"] / f"seed{result['seed_index']}" / "submission.csv").is_file()
  table = [line for line in (workdir / "results.md").read_text().splitlines()
           if line.startswith(("| a |", "| b |"))]
  assert len(table) == 2 and all(line.count("±") == 6 for line in table)
  # The same seed, the same validation rows: b's runs pair with a's image by image.
  by = {(r["config"], r["seed_index"]): r for r in results}
  assert all(by[("a", i)]["val_split"] == by[("b", i)]["val_split"] for i in (0, 1))
  assert by[("a", 0)]["val_split"] != by[("a", 1)]["val_split"]
  only_a = sum(len(set(by[("a", i)]["val_wrong"]) - set(by[("b", i)]["val_wrong"])) for i in (0, 1))
  only_b = sum(len(set(by[("b", i)]["val_wrong"]) - set(by[("a", i)]["val_wrong"])) for i in (0, 1))
  assert table[0].split(" | ")[4] == "(reference)"
  p = sweep.predict.sign_test_p(only_a, only_b)
  assert table[1].split(" | ")[4] == f"{only_a} / {only_b}, p {p:.3f} (2 seeds)"
  # Errors of a's best checkpoint, counted the way validate counts them.
  validation = sweep.predict.validate(workdir / "a" / "seed0", data_dir, (1,))
  assert len(by[("a", 0)]["val_wrong"]) == validation.member_errors[0, 0]
  assert png_size(workdir / "results.png") == tuple(
      round(inches * sweep.report.DPI) for inches in sweep.results_figsize(2))


@pytest.mark.slow
def test_second_sweep_skips_finished_runs(swept, data_dir, monkeypatch):
  paths, workdir, _ = swept
  before = _rows(workdir)

  def must_not_train(*args, **kwargs):
    raise AssertionError("a finished run was trained again")

  monkeypatch.setattr(train, "train_and_evaluate", must_not_train)
  sweep.sweep(paths, 2, workdir, data_dir)
  assert _rows(workdir) == before


@pytest.mark.slow
def test_interrupted_sweep_reruns_only_the_unfinished_run(swept, data_dir, monkeypatch, tmp_path):
  paths, shared, _ = swept
  # A copy: the other tests read the shared sweep as it was written, in any order.
  workdir = shutil.copytree(shared, tmp_path / "sweep")
  unfinished = workdir / "b" / "seed1"
  old = json.loads((unfinished / "result.json").read_text())
  (unfinished / "result.json").unlink()
  # A result.json from before last_val_accuracy existed: the skipped run gets it from its records.
  finished = workdir / "a" / "seed0" / "result.json"
  before = json.loads(finished.read_text())
  # One from before the paired figures existed: they are computed once and saved.
  finished.write_text(json.dumps({k: v for k, v in before.items()
                                  if k not in ("last_val_accuracy", "val_split", "val_wrong")}))
  calls, original = [], train.train_and_evaluate

  def recording(cfg, run_dir, data_dir, pseudo_labels=None):
    calls.append(run_dir)
    return original(cfg, run_dir, data_dir, pseudo_labels)

  monkeypatch.setattr(train, "train_and_evaluate", recording)
  results = sweep.sweep(paths, 2, workdir, data_dir)
  assert calls == [unfinished]
  new = json.loads((unfinished / "result.json").read_text())
  # Resumed from its last checkpoint: nothing left to train, the same best epoch and accuracy.
  assert new["resumed"] and not old["resumed"]
  assert (new["best_val_accuracy"], new["best_epoch"]) == (old["best_val_accuracy"],
                                                            old["best_epoch"])
  assert len(_rows(workdir)) == len(results) == 4
  assert results[0] == before
  saved = json.loads(finished.read_text())
  assert (saved["val_split"], saved["val_wrong"]) == (before["val_split"], before["val_wrong"])


@pytest.mark.slow
def test_sweep_refuses_a_run_dir_trained_with_another_config(swept, data_dir, monkeypatch):
  paths, workdir, _ = swept
  monkeypatch.setattr(train, "train_and_evaluate", lambda *a: pytest.fail("trained"))
  with pytest.raises(UserError, match="num_epochs=1.*another --workdir"):
    sweep.sweep(paths, 2, workdir, data_dir, overrides=["num_epochs=2"])


@pytest.mark.slow
def test_grid_file_gives_one_row_per_variant(tmp_path, data_dir):
  grid = tmp_path / "grid.py"
  grid.write_text('"""Tiny grid."""\n' + TINY + "\n\ndef get_grid():\n"
                  "  return [('slow', tiny(1e-3)), ('fast', tiny(3e-3))]\n")
  workdir = tmp_path / "sweep"
  sweep.sweep([grid], 1, workdir, data_dir)
  assert [r["config"] for r in _rows(workdir)] == ["grid/slow", "grid/fast"]
  assert (workdir / "grid" / "fast" / "seed0" / "result.json").is_file()
  md = (workdir / "results.md").read_text()
  assert "| grid/slow | 1 |" in md and "| grid/fast | 1 |" in md


@pytest.mark.slow
def test_a_final_fit_has_a_test_score_but_no_validation_figures(tmp_path, data_dir):
  """Its validation images are among those it trained on: their accuracy would flatter it."""
  grid = tmp_path / "grid.py"
  grid.write_text('"""Tiny grid."""\n' + TINY + "\n\ndef get_grid():\n"
                  "  fit = tiny(1e-3)\n  fit.schedule.name = 'onecycle'\n"
                  "  fit.train.final_fit = True\n  fit.train.target_accuracy = 0.01\n"
                  "  return [('held_out', tiny(1e-3)), ('fit', fit)]\n")
  workdir = tmp_path / "sweep"
  held_out, fit = sweep.sweep([grid], 1, workdir, data_dir)
  assert held_out["final_fit"] is False and held_out["best_val_accuracy"] is not None
  assert fit["final_fit"] is True and 0.0 <= fit["test_accuracy"] <= 1.0
  assert (fit["best_val_accuracy"], fit["last_val_accuracy"], fit["minutes_to_target"],
          fit["best_epoch"]) == (None, None, None, 1)
  assert [r["final_fit"] for r in _rows(workdir)] == ["False", "True"]
  md = (workdir / "results.md").read_text()
  assert "| grid/fit | 1 | – | – |" in md and "| – | " in md.split("| grid/fit |")[1]
  assert "its validation accuracies and minutes to target are left out" in md


def test_plan_applies_quick_then_overrides_and_offsets_seeds(tmp_path):
  path = write_config(tmp_path, "a", 1e-3)
  runs = sweep.plan([path], 3, tmp_path / "w", ["seed=10", "data.subset=500"], quick=True)
  assert [(r.seed_index, r.cfg.seed) for r in runs] == [(0, 10), (1, 11), (2, 12)]
  assert {(r.cfg.num_epochs, r.cfg.data.subset) for r in runs} == {(2, 500)}
  assert runs[2].run_dir == tmp_path / "w" / "a" / "seed2"


def test_quick_trains_two_epochs_of_a_budgeted_config(tmp_path):
  """A budget would fit dozens of epochs of 2,000 rows in its minutes; --quick means two, and
  an explicit --config.train.budget_minutes still wins."""
  path = tmp_path / "budgeted.py"
  path.write_text('"""Budgeted."""\n' + TINY + "\n\ndef get_config():\n  c = tiny(1e-3)\n"
                  "  c.train.budget_minutes = 5.0\n  return c\n")
  (run,) = sweep.plan([path], 1, tmp_path / "w")
  assert (run.cfg.num_epochs, run.cfg.train.budget_minutes) == (1, 5)
  (run,) = sweep.plan([path], 1, tmp_path / "w", quick=True)
  assert (run.cfg.num_epochs, run.cfg.train.budget_minutes, run.cfg.data.subset) == (2, 0, 2000)
  (run,) = sweep.plan([path], 1, tmp_path / "w", ["train.budget_minutes=3"], quick=True)
  assert run.cfg.train.budget_minutes == 3


@pytest.mark.parametrize("grid,message", [
    ("[('x', tiny(1e-3)), ('x', tiny(1e-3))]", "two configs are named 'grid/x'"),
    ("[('a b', tiny(1e-3))]", "letters, digits"),
    ("[tiny(1e-3)]", "(name, ConfigDict) pairs"),
    ("[]", "no variants"),
    ("1 / 0", "ZeroDivisionError"),
])
def test_bad_grids_are_one_line_user_errors(tmp_path, grid, message):
  path = tmp_path / "grid.py"
  path.write_text(TINY + f"\n\ndef get_grid():\n  return {grid}\n")
  with pytest.raises(UserError) as info:
    sweep.plan([path], 1, tmp_path / "w")
  assert message in str(info.value) and "\n" not in str(info.value)


def test_a_typo_in_the_last_config_fails_before_any_run_starts(tmp_path, data_dir,
                                                               monkeypatch):
  configs = tmp_path / "configs"
  configs.mkdir()
  typo = configs / "c.py"
  typo.write_text('"""Tiny config c."""\n' + TINY + "\n\ndef get_config():\n  c = tiny(1e-3)\n"
                  "  c.schedule.name = 'platau'\n  return c\n")
  paths = [write_config(configs, "a", 1e-3), write_config(configs, "b", 2e-3), typo]
  monkeypatch.setattr(train, "train_and_evaluate", lambda *a, **k: pytest.fail("trained"))
  workdir = tmp_path / "sweep"
  for start in (lambda: sweep.plan(paths, 2, workdir),
                lambda: sweep.sweep(paths, 2, workdir, data_dir)):
    with pytest.raises(UserError) as info:
      start()
    message = str(info.value)
    assert message.startswith(f"{typo}: config schedule.name='platau' is not one of")
    assert "did you mean 'plateau'" in message
    assert "\n" not in message
  assert not workdir.exists() and not list(tmp_path.rglob("metrics.jsonl"))


def test_summary_counts_diverged_runs_and_shows_no_spread_for_one_seed():
  ok = {"status": "ok", "best_val_accuracy": 0.9, "test_accuracy": None, "best_epoch": 3,
        "wall_s": 10.0, "images_per_s": 100.0, "resumed": False}
  results = [dict(ok, config="a"), dict(ok, config="a", best_val_accuracy=0.8),
             dict(ok, config="b"),
             dict(ok, config="b", status="diverged", best_val_accuracy=None, best_epoch=None)]
  a, b = sweep.summarize(results)
  assert a["n"] == 2 and a["best_val_accuracy"] == pytest.approx((0.85, 0.0707107))
  assert (b["n"], b["diverged"], b["best_val_accuracy"]) == (1, 1, (0.9, 0.0))
  md = sweep.results_markdown(results)
  assert "| a | 2 | 0.8500 ± 0.0707 | – |" in md
  assert "| b | 1 (+1 diverged) | 0.9000 | – |" in md
  assert "mean ± std over seeds" in sweep.plot_results(results).axes[0].get_xlabel()


def test_without_test_answers_a_final_fit_has_no_bar():
  ok = {"status": "ok", "test_accuracy": None, "best_epoch": 3, "wall_s": 10.0,
        "images_per_s": 100.0, "resumed": False}
  held_out = dict(ok, config="held_out", best_val_accuracy=0.99, last_val_accuracy=0.98)
  fit = dict(ok, config="fit", final_fit=True, best_val_accuracy=None, last_val_accuracy=None)
  (ax,) = sweep.plot_results([held_out, fit]).axes
  assert [t.get_text() for t in ax.get_yticklabels()] == ["held_out"]
  assert ax.get_xlabel().startswith("best validation accuracy")
  (ax,) = sweep.plot_results([fit]).axes
  assert [t.get_text() for t in ax.texts] == ["no held-out accuracy yet"]
  assert "| fit | 1 | – | – | (reference) | – | 3.0 | 10 | – | 100 |" in \
      sweep.results_markdown([fit])


def test_configs_pair_with_the_first_over_the_seeds_that_share_validation_rows():
  ok = {"status": "ok", "best_val_accuracy": 0.9, "test_accuracy": None, "best_epoch": 3,
        "wall_s": 10.0, "images_per_s": 100.0, "resumed": False}
  results = [dict(ok, config="base", seed_index=0, val_split="s0", val_wrong=[1, 2, 3]),
             dict(ok, config="base", seed_index=1, val_split="s1", val_wrong=[7]),
             dict(ok, config="new", seed_index=0, val_split="s0", val_wrong=[3, 4]),
             dict(ok, config="new", seed_index=1, val_split="s1", val_wrong=[]),
             dict(ok, config="new", seed_index=2, val_split="s2", val_wrong=[9]),  # No base.
             dict(ok, config="other_split", seed_index=0, val_split="x", val_wrong=[]),
             dict(ok, config="old", seed_index=0),  # A result.json without the figures.
             dict(ok, config="gone", seed_index=0, status="diverged", val_split=None)]
  assert sweep.paired_with_first(results) == {
      "new": (2 + 1, 1, 2), "other_split": (0, 0, 0), "old": (0, 0, 0), "gone": (0, 0, 0)}
  lines = sweep.results_markdown(results).splitlines()
  cells = {line.split(" | ")[0][2:]: line.split(" | ")[4] for line in lines[6:11]}
  assert cells == {"base": "(reference)", "new": "3 / 1, p 0.625 (2 seeds)",
                   "other_split": "–", "old": "–", "gone": "–"}


def test_a_time_limited_run_dir_is_reused_whatever_epoch_count_it_measured(tmp_path):
  cfg = config.apply_overrides(config.get_base_config(), ["train.budget_minutes=10"])
  run = sweep.Run("a", 0, cfg, tmp_path)
  measured = config.apply_overrides(cfg, ["num_epochs=17"])
  (tmp_path / "config.json").write_text(measured.to_json())
  sweep._check_same_config(run)  # The epoch count is the budget's, measured: the same run.
  other = config.apply_overrides(measured, ["train.budget_minutes=20"])
  (tmp_path / "config.json").write_text(other.to_json())
  with pytest.raises(UserError, match="train.budget_minutes=20.0, this sweep has 10.0"):
    sweep._check_same_config(run)
  # A cap too: the count it resolved may be below the one asked for.
  capped = config.apply_overrides(config.get_base_config(), ["train.max_minutes=13"])
  (tmp_path / "config.json").write_text(config.apply_overrides(capped,
                                                               ["num_epochs=17"]).to_json())
  sweep._check_same_config(sweep.Run("a", 0, capped, tmp_path))
  unbudgeted = sweep.Run("a", 0, config.get_base_config(), tmp_path)
  (tmp_path / "config.json").write_text(config.apply_overrides(config.get_base_config(),
                                                               ["num_epochs=17"]).to_json())
  with pytest.raises(UserError, match="num_epochs=17, this sweep has 30"):
    sweep._check_same_config(unbudgeted)


def test_minutes_to_target_over_the_seeds_that_reached_it():
  ok = {"status": "ok", "best_val_accuracy": 0.996, "test_accuracy": None, "best_epoch": 3,
        "wall_s": 600.0, "images_per_s": 100.0, "resumed": False}
  results = [dict(ok, config="all", minutes_to_target=4.0),
             dict(ok, config="all", minutes_to_target=6.0),
             dict(ok, config="some", minutes_to_target=5.0),
             dict(ok, config="some", minutes_to_target=None),
             dict(ok, config="none", minutes_to_target=None),
             dict(ok, config="old")]  # A result.json written before the column existed.
  rows = {row["config"]: row for row in sweep.summarize(results)}
  assert rows["all"]["minutes_to_target"] == pytest.approx((5.0, 1.4142136))
  assert (rows["some"]["reached"], rows["some"]["minutes_to_target"]) == (1, (5.0, 0.0))
  md = sweep.results_markdown(results)
  assert "| 600 ± 0 | 5.0 ± 1.4 | 100 ± 0 |" in md.splitlines()[6]
  assert "| 600 ± 0 | 5.0 (1 of 2) | 100 ± 0 |" in md.splitlines()[7]
  assert "| 600 | not reached | 100 |" in md.splitlines()[8]
  assert "| 600 | not reached | 100 |" in md.splitlines()[9]
  assert "train.target_accuracy (default 0.995)" in md
  assert sweep.results_csv(results).splitlines()[0].split(",")[9] == "minutes_to_target"


def test_cli_sweep_needs_seeds_and_takes_overrides(capsys):
  with pytest.raises(SystemExit):
    cli.main(["sweep", "x.py"])
  assert "--seeds" in capsys.readouterr().err
  assert cli.main(["sweep", "missing.py", "--seeds", "1", "--config.num_epochs=1"]) == 2
  assert "missing.py not found" in capsys.readouterr().err


def test_shipped_configs_and_grids_are_taken_by_name(tmp_path):
  runs = sweep.plan(["ablations/grid_schedules", "strided"], 1, tmp_path / "w")
  names = [run.name for run in runs]
  grid = sweep.load_variants(config.experiments_dir() / "ablations" / "grid_schedules.py")
  assert names == [name for name, _ in grid] + ["strided"]
  assert names[0].startswith("grid_schedules/") and len(names) > 2
  assert config.flatten(runs[-1].cfg) == config.flatten(config.load_config("strided"))
