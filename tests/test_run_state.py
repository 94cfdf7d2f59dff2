"""Tests of dr_jax.run_state: the typed run record, its JSON form and the best/stop rules."""

import json
import math

import numpy as np
import pytest

from dr_jax import optim, run_state
from dr_jax.run_state import RunState


@pytest.mark.parametrize("acc,loss,best_acc,best_loss,expected", [
    (0.99, 0.05, 0.98, 0.01, True),   # Higher accuracy wins whatever the loss.
    (0.98, 0.01, 0.99, 0.05, False),  # Lower accuracy never wins.
    (0.99, 0.04, 0.99, 0.05, True),   # A tie goes to the lower loss.
    (0.99, 0.05, 0.99, 0.05, False),  # A full tie keeps the earlier checkpoint.
    (0.99, 0.06, 0.99, 0.05, False),
])
def test_is_better(acc, loss, best_acc, best_loss, expected):
  got = run_state.is_better(np.array([acc]), np.array([loss]), np.array([best_acc]),
                            np.array([best_loss]))
  assert got.tolist() == [expected]


@pytest.mark.parametrize("epoch,best,patience,expected", [
    (5, [5], 3, False),     # Improved this epoch.
    (7, [4], 3, True),      # Three epochs without improvement: Keras stops here too.
    (6, [4], 3, False),
    (9, [2, 8], 3, False),  # One member still improving keeps every member training.
    (11, [2, 8], 3, True),
    (50, [1], 0, False),    # 0 = never.
    (5, [4], 1, True),      # Patience 1: the first epoch without improvement stops.
    (4, [4], 1, False),
])
def test_stops_early(epoch, best, patience, expected):
  assert run_state.stops_early(epoch, best, patience) is expected


def test_fresh_state_has_no_best_and_the_configured_rate():
  run = RunState.fresh(2, 1e-3, (0.0, 255.0))
  assert (run.epoch, run.members, run.best_epoch) == (0, 2, 0)
  assert run.plateau == (optim.PlateauState(1e-3),) * 2
  assert run.member_best_val_accuracy == (-1.0, -1.0)
  assert run.member_best_val_loss == (math.inf, math.inf)
  assert run.norm == (0.0, 255.0)


def test_after_epoch_moves_only_the_members_that_improved():
  run = RunState(3, (optim.PlateauState(1e-3),) * 3, (1, 2, 3), (0.90, 0.80, 0.70),
                 (0.3, 0.4, 0.5), (0.0, 255.0))
  plateau = (optim.PlateauState(5e-4, 0.9, 0, 0),) * 3
  new, improved = run.after_epoch(4, np.array([0.95, 0.80, 0.60]), np.array([0.2, 0.39, 0.1]),
                                  plateau)
  assert improved.tolist() == [True, True, False]  # Member 1: same accuracy, lower loss.
  assert new.epoch == 4 and new.plateau == plateau and new.norm == (0.0, 255.0)
  assert new.member_best_epoch == (4, 4, 3)
  assert new.member_best_val_accuracy == (0.95, 0.80, 0.70)
  assert new.member_best_val_loss == (0.2, 0.39, 0.5)
  assert new.best_epoch == 4 and new.best_val_accuracy == pytest.approx((0.95 + 0.8 + 0.7) / 3)
  assert run.epoch == 3  # Frozen: the old record is unchanged.



def test_after_epoch_keep_last_moves_every_member_even_a_worse_one():
  run = RunState(3, (optim.PlateauState(1e-3),) * 2, (3, 2), (0.90, 0.80), (0.3, 0.4),
                 (0.0, 255.0))
  new, improved = run.after_epoch(4, np.array([0.50, 0.85]), np.array([0.9, 0.2]),
                                  run.plateau, keep_last=True)
  assert improved.tolist() == [True, True]
  assert new.member_best_epoch == (4, 4)
  assert new.member_best_val_accuracy == (0.50, 0.85)
  assert new.member_best_val_loss == (0.9, 0.2)

def test_after_epoch_records_plain_floats_whatever_the_input_dtype():
  # The typed record (and its JSON) holds floats even when a caller passes integer arrays.
  run = RunState.fresh(2, 1e-3, (0.0, 255.0))
  new, _ = run.after_epoch(1, np.array([1, 0]), np.array([2, 3]), run.plateau)
  assert [type(v) for v in new.member_best_val_accuracy + new.member_best_val_loss] == [float] * 4
  assert json.dumps(new.to_json()["member_best_val_loss"]) == "[2.0, 3.0]"


def test_with_best_of_takes_the_other_records_best_and_keeps_the_rest():
  latest = RunState(2, (optim.PlateauState(1e-3),), (1,), (0.5,), (1.0,), (0.0, 255.0))
  best = RunState(3, (optim.PlateauState(5e-4),), (3,), (0.7,), (0.8,), (0.0, 255.0))
  merged = latest.with_best_of(best)
  assert (merged.epoch, merged.plateau) == (2, latest.plateau)
  assert (merged.member_best_epoch, merged.member_best_val_accuracy,
          merged.member_best_val_loss) == ((3,), (0.7,), (0.8,))


def test_json_round_trip_keeps_every_field_and_the_checkpoint_keys():
  run = RunState(7, (optim.PlateauState(1e-4, 0.99, 2, 1), optim.PlateauState(1e-3)), (5, 7),
                 (0.99, 0.98), (0.03, math.inf), (33.3, 78.5))
  record = run.to_json()
  # The metadata keys every checkpoint has; `predict` and older runs read these names.
  assert set(record) == {"epoch", "plateau", "member_best_epoch", "member_best_val_accuracy",
                         "member_best_val_loss", "norm"}
  assert record["norm"] == [33.3, 78.5] and record["plateau"][0] == [1e-4, 0.99, 2, 1]
  assert RunState.from_json(record) == run


def test_run_state_stops_early_uses_its_epoch_and_members():
  run = RunState(7, (optim.PlateauState(1e-3),) * 2, (2, 4), (0.9, 0.9), (0.1, 0.1), (0.0, 1.0))
  assert run.stops_early(3) and not run.stops_early(4) and not run.stops_early(0)
