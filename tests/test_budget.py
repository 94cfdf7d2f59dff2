"""budget.py, train.budget_minutes and train.max_minutes: epochs sized to a wall-clock limit,
recorded, resumed."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from dr_jax import budget, checkpoint, train
from dr_jax.errors import UserError


def _budget(minutes):
  return budget.Limit("train.budget_minutes", minutes, caps=False)


def _cap(minutes):
  return budget.Limit("train.max_minutes", minutes, caps=True)


def test_epochs_within_is_the_whole_epochs_left_after_loading_and_compiling():
  cost = budget.EpochCost(train_s=50.0, validation_s=5.0)
  assert cost.total_s == pytest.approx(57.75)  # 5% for saves and slower epochs.
  assert budget.epochs_within(_budget(10), 60.0, cost, 0.0) == 9  # 540 s / 57.75 = 9.35.
  assert budget.epochs_within(_budget(10), 60.0, cost, 30.0) == 8  # Recompiling first: 8.83.
  assert budget.epochs_within(_budget(10), 0.0, cost, 22.5) == 10  # 577.5 s: exactly ten.
  assert budget.epochs_within(_budget(1), 2.0, cost, 0.0) == 1


def test_a_limit_that_fits_no_epoch_is_a_user_error_word_for_word():
  cost = budget.EpochCost(train_s=50.0, validation_s=5.0)
  with pytest.raises(UserError) as e:
    budget.epochs_within(_budget(1), 20.0, cost, 10.0)
  assert str(e.value) == ("train.budget_minutes=1 fits no epoch on this machine: 0.50 min to "
                          "load and compile, then 0.96 min per epoch; raise --budget")
  with pytest.raises(UserError) as e:
    budget.epochs_under(_cap(1), 30, 20.0, cost, 10.0)
  assert str(e.value) == ("train.max_minutes=1 fits no epoch on this machine: 0.50 min to "
                          "load and compile, then 0.96 min per epoch; raise it, or set it to 0 "
                          "to train num_epochs however long they take")


def test_a_budget_replaces_num_epochs_and_a_cap_only_lowers_it():
  cost = budget.EpochCost(train_s=50.0, validation_s=5.0)  # 57.75 s an epoch.
  # 10 minutes after 60 s: 9 epochs fit as compiled, 8 after a 30-s recompile.
  assert budget.epochs_under(_budget(10), 3, 60.0, cost, 30.0) == 8
  assert budget.epochs_under(_cap(10), 3, 60.0, cost, 30.0) == 3
  assert budget.epochs_under(_cap(10), 9, 60.0, cost, 30.0) == 9  # No recompile: 9 fit.
  assert budget.epochs_under(_cap(10), 10, 60.0, cost, 30.0) == 8  # 10 do not: recompile.


def test_the_limit_is_the_budget_if_set_else_the_cap():
  assert budget.limit(tiny_config()) is None
  assert budget.limit(tiny_config(**{"train.max_minutes": 13.0})) == _cap(13.0)
  both = tiny_config(**{"train.max_minutes": 13.0, "train.budget_minutes": 20.0})
  assert budget.limit(both) == _budget(20.0)  # `--budget 20` on a capped config: 20 minutes.


def test_seconds_per_call_times_a_chain_from_a_copy_that_leaves_the_state_alone():
  calls = []
  step = jax.jit(lambda s, x: (s + x, s.sum()), donate_argnums=0)

  def call(state, x):
    calls.append(x)
    return step(state, x)

  state = jnp.zeros(3)
  seconds = budget.seconds_per_call(call, state, [(1.0,), (2.0,), (3.0,)], math.inf)
  assert seconds > 0
  assert calls == [1.0, 1.0, 2.0, 3.0]  # One untimed call, then each batch once.
  np.testing.assert_array_equal(state, np.zeros(3))  # Still alive and unchanged: a copy ran.
  calls.clear()
  budget.seconds_per_call(call, state, iter([(1.0,), (2.0,), (3.0,)]), 0.0)
  assert calls == [1.0, 1.0]  # Enough seconds after one timed call: the rest stay untouched.


def test_seconds_of_times_the_second_call():
  calls = []
  assert budget.seconds_of(lambda: calls.append(1)) >= 0 and calls == [1, 1]


def test_an_earlier_session_with_the_same_limit_gives_its_epoch_count(tmp_path):
  cfg = tiny_config(**{"train.budget_minutes": 5.0})
  assert budget.with_earlier_epochs(cfg, tmp_path) is None  # No run yet.
  saved = tiny_config(**{"train.budget_minutes": 5.0, "num_epochs": 7})
  (tmp_path / "config.json").write_text(saved.to_json())
  resumed = budget.with_earlier_epochs(cfg, tmp_path)
  assert resumed is not None and resumed.num_epochs == 7 and cfg.num_epochs == 2
  other = tiny_config(**{"train.budget_minutes": 6.0})
  assert budget.with_earlier_epochs(other, tmp_path) is None
  # A cap of the same minutes is another limit; the same cap keeps the count it resolved.
  capped = tiny_config(**{"train.max_minutes": 5.0, "num_epochs": 30})
  assert budget.with_earlier_epochs(capped, tmp_path) is None
  (tmp_path / "config.json").write_text(
      tiny_config(**{"train.max_minutes": 5.0, "num_epochs": 7}).to_json())
  resumed = budget.with_earlier_epochs(capped, tmp_path)
  assert resumed is not None and resumed.num_epochs == 7


def _params(workdir):
  with checkpoint.Checkpoints(workdir, read_only=True) as ckpts:
    return ckpts.restore("latest")[0]["params"]


def _records(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _assert_same_training(a, b):
  """Runs `a` and `b` trained with the same learning rates to bitwise equal parameters."""
  assert [r["lr"] for r in _records(a)] == [r["lr"] for r in _records(b)]
  for x, y in zip(jax.tree.leaves(_params(a)), jax.tree.leaves(_params(b))):
    np.testing.assert_array_equal(x, y)


# One-cycle: its length is compiled into the step, so the budget must recompile it.
_ONECYCLE = {"schedule.name": "onecycle", "train.budget_minutes": 100.0}


def test_a_budgeted_run_trains_the_epochs_that_fit_and_equals_that_many_epochs_without_one(
    tmp_path, data_dir, monkeypatch, capsys):
  # 1,000 s of training per epoch as measured: 6,000 s fit five (1,050 s each with the margin)
  # as long as loading and the two compiles take under 750 s, on any machine.
  monkeypatch.setattr(train, "_epoch_cost", lambda *a: budget.EpochCost(1000.0, 0.0))
  budgeted = tmp_path / "budgeted"
  summary = train.train_and_evaluate(tiny_config(**_ONECYCLE), budgeted, data_dir)
  assert summary["epochs"] == 5 and [r["epoch"] for r in _records(budgeted)] == [1, 2, 3, 4, 5]
  assert json.loads((budgeted / "config.json").read_text())["num_epochs"] == 5
  log = capsys.readouterr().err
  assert "train.budget_minutes=100: 5 epochs of ≈ 1050.0s (train 1000.0s, validation 0.0s, +5%)" \
      in log and "num_epochs=5 goes into config.json" in log
  plain = tmp_path / "plain"
  train.train_and_evaluate(tiny_config(**{"schedule.name": "onecycle", "num_epochs": 5}), plain,
                           data_dir)
  _assert_same_training(budgeted, plain)

  # Run again with the same budget: the recorded count stands, nothing is measured or retrained.
  def must_not_measure(*args):
    raise AssertionError("a resumed budgeted run measured again")

  monkeypatch.setattr(train, "_epoch_cost", must_not_measure)
  before = (budgeted / "metrics.jsonl").read_text()
  assert train.train_and_evaluate(tiny_config(**_ONECYCLE), budgeted, data_dir)["epochs"] == 5
  assert (budgeted / "metrics.jsonl").read_text() == before
  # Another budget would size another run: refused, as any change of what the run is.
  with pytest.raises(UserError, match="train.budget_minutes"):
    train.train_and_evaluate(tiny_config(**(_ONECYCLE | {"train.budget_minutes": 200.0})),
                             budgeted, data_dir)


def test_a_budgeted_ensemble_with_own_splits_equals_the_same_ensemble_with_that_many_epochs(
    tmp_path, data_dir, monkeypatch):
  # ensemble_cpu.py's shape: members stacked in one program, each on its own split. One epoch
  # of the whole ensemble is measured at 1,000 s, so the 100-minute budget fits five.
  monkeypatch.setattr(train, "_epoch_cost", lambda *a: budget.EpochCost(1000.0, 0.0))
  ensemble = {"ensemble.size": 2, "ensemble.own_split": True}
  budgeted = tmp_path / "budgeted"
  assert train.train_and_evaluate(tiny_config(**(_ONECYCLE | ensemble)), budgeted,
                                  data_dir)["epochs"] == 5
  assert json.loads((budgeted / "config.json").read_text())["num_epochs"] == 5
  plain = tmp_path / "plain"
  train.train_and_evaluate(
      tiny_config(**({"schedule.name": "onecycle", "num_epochs": 5} | ensemble)), plain, data_dir)
  _assert_same_training(budgeted, plain)
  assert all(x.shape[0] == 2 for x in jax.tree.leaves(_params(budgeted)))  # The member axis.


def test_a_cap_lowers_num_epochs_to_those_that_fit_and_keeps_them_on_resuming(
    tmp_path, data_dir, monkeypatch, capsys):
  # default.py's shape: num_epochs under train.max_minutes. 1,000 s an epoch as measured: 100
  # minutes fit five of the eight asked for, on any machine.
  monkeypatch.setattr(train, "_epoch_cost", lambda *a: budget.EpochCost(1000.0, 0.0))
  capped_cfg = tiny_config(**{"schedule.name": "onecycle", "train.max_minutes": 100.0,
                              "num_epochs": 8})
  capped = tmp_path / "capped"
  assert train.train_and_evaluate(capped_cfg, capped, data_dir)["epochs"] == 5
  saved = json.loads((capped / "config.json").read_text())
  assert (saved["num_epochs"], saved["train"]["max_minutes"]) == (5, 100.0)
  assert "train.max_minutes=100: 5 epochs (num_epochs=8 would not end in time) of ≈ 1050.0s" \
      in capsys.readouterr().err
  plain = tmp_path / "plain"
  train.train_and_evaluate(tiny_config(**{"schedule.name": "onecycle", "num_epochs": 5}), plain,
                           data_dir)
  _assert_same_training(capped, plain)

  monkeypatch.setattr(train, "_epoch_cost", lambda *a: pytest.fail("a resumed run measured"))
  before = (capped / "metrics.jsonl").read_text()
  assert train.train_and_evaluate(capped_cfg, capped, data_dir)["epochs"] == 5
  assert (capped / "metrics.jsonl").read_text() == before


def test_a_cap_that_fits_num_epochs_trains_them_as_compiled(tmp_path, data_dir, monkeypatch,
                                                             capsys):
  # 100 minutes fit five measured epochs; two are asked for: two, with no second compile.
  monkeypatch.setattr(train, "_epoch_cost", lambda *a: budget.EpochCost(1000.0, 0.0))
  compiles = []
  real_compile = train.compile_program
  monkeypatch.setattr(train, "compile_program",
                      lambda *a: compiles.append(1) or real_compile(*a))
  capped = tmp_path / "capped"
  cfg = tiny_config(**{"schedule.name": "onecycle", "train.max_minutes": 100.0})
  assert train.train_and_evaluate(cfg, capped, data_dir)["epochs"] == 2
  assert len(compiles) == 1
  assert json.loads((capped / "config.json").read_text())["num_epochs"] == 2
  assert "train.max_minutes=100: 2 epochs of ≈ 1050.0s" in capsys.readouterr().err
  plain = tmp_path / "plain"
  train.train_and_evaluate(tiny_config(**{"schedule.name": "onecycle"}), plain, data_dir)
  _assert_same_training(capped, plain)


def test_a_count_that_no_longer_fits_after_recompiling_is_lowered_and_compiled_again(
    tmp_path, data_dir, monkeypatch, capsys):
  # The estimate took the first compile's seconds for the recompile; when the recompile takes
  # longer (the first came from the compilation cache), the count is checked again as a cap.
  monkeypatch.setattr(train, "_epoch_cost", lambda *a: budget.EpochCost(1000.0, 0.0))
  answers, asked = iter([5, 4, 4]), []

  def epochs_under(lim, num_epochs, *rest):
    asked.append((lim.caps, num_epochs))
    return next(answers)

  monkeypatch.setattr(budget, "epochs_under", epochs_under)
  compiles = []
  real_compile = train.compile_program
  monkeypatch.setattr(train, "compile_program",
                      lambda *a: compiles.append(a[0].num_epochs) or real_compile(*a))
  budgeted = tmp_path / "budgeted"
  assert train.train_and_evaluate(tiny_config(**_ONECYCLE), budgeted, data_dir)["epochs"] == 4
  # The budget's count, then each recompiled count checked as a cap (it may only go down).
  assert asked == [(False, 2), (True, 5), (True, 4)] and compiles == [2, 5, 4]
  assert json.loads((budgeted / "config.json").read_text())["num_epochs"] == 4
  assert "train.budget_minutes=100: compiling for 5 epochs took " in capsys.readouterr().err
  plain = tmp_path / "plain"
  train.train_and_evaluate(tiny_config(**{"schedule.name": "onecycle", "num_epochs": 4}), plain,
                           data_dir)
  _assert_same_training(budgeted, plain)


def test_a_budget_too_small_for_one_epoch_trains_nothing(tmp_path, data_dir):
  with pytest.raises(UserError, match=r"^train.budget_minutes=0.001 fits no epoch on this "):
    train.train_and_evaluate(tiny_config(**{"train.budget_minutes": 0.001}), tmp_path, data_dir)
  assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "config.json").exists()
  assert not list((tmp_path / "checkpoints").glob("*/*"))


def test_the_measured_epoch_cost_is_positive_and_leaves_the_state_alone(tmp_path, data_dir,
                                                                          monkeypatch):
  seen = {}
  real_cost, real_epochs = train._epoch_cost, budget.epochs_within

  def cost(cfg, split, state, program):
    before = jax.tree.map(np.asarray, state.params)
    seen["cost"] = real_cost(cfg, split, state, program)
    for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(state.params)):
      np.testing.assert_array_equal(x, y)
    return seen["cost"]

  def epochs(*args):
    seen["epochs"] = real_epochs(*args)
    return 1  # An hour of tiny epochs is thousands: train one.

  monkeypatch.setattr(train, "_epoch_cost", cost)
  monkeypatch.setattr(budget, "epochs_within", epochs)
  train.train_and_evaluate(tiny_config(**{"train.budget_minutes": 60.0}), tmp_path, data_dir)
  assert seen["cost"].train_s > 0 and seen["cost"].validation_s > 0
  assert seen["epochs"] > 100
  assert json.loads((tmp_path / "config.json").read_text())["num_epochs"] == 1
  assert [r["epoch"] for r in _records(tmp_path)] == [1]
