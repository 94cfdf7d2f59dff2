"""Tests of dr_jax.optim: Keras' ReduceLROnPlateau, per-epoch and per-step schedules, optimizers."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dr_jax import optim
from dr_jax.config import OPTIMIZERS, SCHEDULES, get_base_config
from dr_jax.errors import UserError


def keras_lrs(metrics, lr, factor, patience, min_lr, min_delta, cooldown, best=-math.inf, wait=0,
              cooldown_counter=0):
  """Keras ReduceLROnPlateau(mode='max').on_epoch_end, transcribed: the lr after each epoch."""
  lrs = []
  for current in metrics:
    if cooldown_counter > 0:
      cooldown_counter -= 1
      wait = 0
    if current > best + min_delta:
      best, wait = current, 0
    elif not cooldown_counter > 0:
      wait += 1
      if wait >= patience and lr > min_lr:
        lr = max(lr * factor, min_lr)
        cooldown_counter, wait = cooldown, 0
    lrs.append(lr)
  return lrs


def plateau_lrs(metrics, lr, best=-math.inf, wait=0, cooldown_counter=0, **params):
  """The lr after each epoch when `optim.plateau_update` is fed `metrics` from the given state."""
  state, lrs = optim.PlateauState(lr, best, wait, cooldown_counter), []
  for metric in metrics:
    state = optim.plateau_update(state, metric, **params)
    lrs.append(state.lr)
  return lrs


KERAS = dict(factor=0.5, patience=3, min_lr=1e-5, min_delta=1e-4, cooldown=0)

PLATEAU_TABLE = {
    "improvements_reset_wait": (
        KERAS, [0.90, 0.91, 0.91, 0.91, 0.92, 0.92, 0.92, 0.92, 0.92, 0.92, 0.92],
        [1e-3] * 7 + [5e-4] * 3 + [2.5e-4]),
    "gain_below_min_delta_does_not_count": (
        KERAS, [0.90, 0.90005, 0.90008, 0.90009, 0.90015, 0.9002, 0.9002, 0.9002],
        [1e-3] * 3 + [5e-4] * 4 + [2.5e-4]),
    "never_below_min_lr": (
        dict(KERAS, patience=1, min_lr=3e-4), [0.5] * 6, [1e-3, 5e-4, 3e-4, 3e-4, 3e-4, 3e-4]),
    "cooldown_suppresses_counting": (
        dict(KERAS, patience=2, cooldown=2), [0.5] * 7,
        [1e-3, 1e-3, 5e-4, 5e-4, 5e-4, 2.5e-4, 2.5e-4]),
    "no_cooldown_counts_at_once": (
        dict(KERAS, patience=2), [0.5] * 7, [1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4, 2.5e-4, 1.25e-4]),
    "improvement_during_cooldown_updates_best": (
        dict(KERAS, patience=1, cooldown=2), [0.5, 0.5, 0.7, 0.7, 0.7, 0.7],
        [1e-3, 5e-4, 5e-4, 2.5e-4, 2.5e-4, 1.25e-4]),
}


@pytest.mark.parametrize("params,metrics,expected", PLATEAU_TABLE.values(), ids=PLATEAU_TABLE)
def test_plateau_table(params, metrics, expected):
  assert plateau_lrs(metrics, 1e-3, **params) == pytest.approx(expected, rel=1e-12)
  assert keras_lrs(metrics, 1e-3, **params) == pytest.approx(expected, rel=1e-12)


@settings(max_examples=200, deadline=None)
@given(metrics=st.lists(st.integers(0, 20).map(lambda k: k / 20), max_size=40),
       lr=st.floats(1e-4, 1e-1), factor=st.floats(0.05, 0.95), patience=st.integers(1, 5),
       min_lr=st.floats(1e-6, 1e-3), min_delta=st.sampled_from([0.0, 1e-4, 0.05, 0.1]),
       cooldown=st.integers(0, 3),
       start=st.tuples(st.sampled_from([-math.inf, 0.0, 0.5, 0.9]), st.integers(0, 5),
                       st.integers(0, 3)))
def test_plateau_matches_keras(metrics, lr, factor, patience, min_lr, min_delta, cooldown, start):
  params = dict(factor=factor, patience=patience, min_lr=min_lr, min_delta=min_delta,
                cooldown=cooldown, best=start[0], wait=start[1], cooldown_counter=start[2])
  assert plateau_lrs(metrics, lr, **params) == keras_lrs(metrics, lr, **params)


def test_plateau_update_is_pure():
  state = optim.PlateauState(lr=1e-3, best=0.9, wait=2, cooldown_left=0)
  snapshot = tuple(state)
  first = optim.plateau_update(state, 0.5, **KERAS)
  second = optim.plateau_update(state, 0.5, **KERAS)
  assert tuple(state) == snapshot
  assert first == second == optim.PlateauState(lr=5e-4, best=0.9, wait=0, cooldown_left=0)


def test_plateau_state_starts_with_no_best():
  state = optim.PlateauState(lr=1e-3)
  assert (state.best, state.wait, state.cooldown_left) == (-math.inf, 0, 0)


def schedule_config(schedule, **optimizer):
  """The base config with schedule name `schedule` and optimizer fields overridden."""
  cfg = get_base_config()
  cfg.schedule.name = schedule
  for key, value in optimizer.items():
    cfg.optimizer[key] = value
  return cfg


def test_epoch_lr_plateau_returns_the_plateau_lr():
  assert optim.epoch_lr(schedule_config("plateau"), 4, optim.PlateauState(lr=2.5e-4)) == 2.5e-4


def test_epoch_lr_constant_ignores_epoch_and_plateau():
  cfg = schedule_config("constant", lr=3e-3)
  plateau = optim.PlateauState(lr=1e-5)
  assert [optim.epoch_lr(cfg, e, plateau) for e in (0, 7, 50)] == [3e-3] * 3


def test_epoch_lr_exponential_decays_to_the_floor():
  cfg = schedule_config("exponential", lr=1e-3)
  cfg.schedule.decay, cfg.schedule.min_lr = 0.5, 1e-4
  plateau = optim.PlateauState(lr=1.0)
  lrs = [optim.epoch_lr(cfg, e, plateau) for e in range(6)]
  assert lrs == pytest.approx([1e-3, 5e-4, 2.5e-4, 1.25e-4, 1e-4, 1e-4], rel=1e-12)


R2 = math.sqrt(2) / 2  # cos(pi / 4)
# Rates at steps 0..9 of 8: cosine from 1e-3 to min_lr 1e-5 (alpha 0.01), then held;
# onecycle from 1e-3 / 25 up to 1e-3 at step 4 (warmup 0.5), down to 4e-5 / 1e4, then held.
STEP_SCHEDULE_TABLE = {
    "cosine": ({"min_lr": 1e-5}, {
        0: 1e-3, 2: 1e-3 * (0.01 + 0.99 * (1 + R2) / 2), 4: 5.05e-4,
        6: 1e-3 * (0.01 + 0.99 * (1 - R2) / 2), 8: 1e-5, 9: 1e-5}),
    "onecycle": ({"warmup_fraction": 0.5}, {
        0: 4e-5, 1: 1e-3 - 9.6e-4 * (1 + R2) / 2, 2: 5.2e-4, 4: 1e-3,
        6: (1e-3 + 4e-9) / 2, 7: 4e-9 + (1e-3 - 4e-9) * (1 - R2) / 2, 8: 4e-9, 9: 4e-9}),
}


@pytest.mark.parametrize("name", STEP_SCHEDULE_TABLE)
def test_step_schedule_table(name):
  fields, expected = STEP_SCHEDULE_TABLE[name]
  cfg = schedule_config(name, lr=1e-3)
  for key, value in fields.items():
    cfg.schedule[key] = value
  schedule = optim.step_schedule(cfg, 8)
  got = {k: float(schedule(k)) for k in expected}
  assert got == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name", ["cosine", "onecycle"])
def test_epoch_lr_rejects_per_step_schedules(name):
  assert not optim.is_per_epoch(schedule_config(name))
  with pytest.raises(ValueError):
    optim.epoch_lr(schedule_config(name), 0, optim.PlateauState(lr=1e-3))


@pytest.mark.parametrize("name", ["plateau", "constant", "exponential"])
def test_per_epoch_schedules_have_no_step_schedule(name):
  assert optim.is_per_epoch(schedule_config(name))
  assert optim.step_schedule(schedule_config(name), 100) is None


def params_and_grads():
  """A small parameter pytree and a gradient of the same structure."""
  params = {"conv": {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}, "out": jnp.full((4,), 0.5)}
  grads = {"conv": {"w": jnp.array([[0.5, -2.0], [1e-3, 3.0], [-0.25, 0.0]]),
                    "b": jnp.array([1.0, -1.0])}, "out": jnp.array([0.1, -0.2, 4.0, -8.0])}
  return params, grads


def flat(tree):
  """All leaves of a pytree concatenated into one float64 numpy vector."""
  return np.concatenate([np.ravel(np.asarray(leaf, np.float64)) for leaf in jax.tree.leaves(tree)])


@pytest.mark.parametrize("name,momentum,schedule", [
    *((name, 0.0, schedule) for name in OPTIMIZERS for schedule in SCHEDULES),
    ("rmsprop", 0.9, "constant"), ("sgd", 0.9, "cosine")])
def test_every_optimizer_and_schedule_updates(name, momentum, schedule):
  cfg = schedule_config(schedule, name=name, momentum=momentum)
  tx = optim.make_optimizer(cfg, total_steps=10)
  params, grads = params_and_grads()
  updates, state = tx.update(grads, tx.init(params), params)
  assert jax.tree.structure(updates) == jax.tree.structure(params)
  assert np.all(np.isfinite(flat(updates))) and np.any(flat(updates) != 0)
  assert np.all(flat(updates) * flat(grads) <= 0)
  assert 0 < optim.current_lr(state) <= cfg.optimizer.lr * (1 + 1e-6)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_current_lr_and_set_lr(name):
  tx = optim.make_optimizer(schedule_config("plateau", name=name, lr=3e-3), total_steps=10)
  state = tx.init(params_and_grads()[0])
  assert optim.current_lr(state) == pytest.approx(3e-3, rel=1e-6)
  lowered = optim.set_lr(state, 7e-4)
  assert optim.current_lr(lowered) == pytest.approx(7e-4, rel=1e-6)
  assert optim.current_lr(state) == pytest.approx(3e-3, rel=1e-6)


def test_set_lr_scales_the_next_rmsprop_update():
  tx = optim.make_optimizer(schedule_config("plateau", name="rmsprop", momentum=0.0, lr=1e-3),
                            total_steps=10)
  params, grads = params_and_grads()
  _, state = tx.update(grads, tx.init(params), params)
  small, _ = tx.update(grads, optim.set_lr(state, 2e-4), params)
  large, _ = tx.update(grads, optim.set_lr(state, 4e-4), params)
  np.testing.assert_allclose(flat(large), 2 * flat(small), rtol=1e-5, atol=1e-12)
  assert np.any(flat(small) != 0)


def test_set_lr_works_inside_jit():
  tx = optim.make_optimizer(schedule_config("constant", name="sgd", lr=1e-2), total_steps=10)
  params, grads = params_and_grads()
  state = optim.set_lr(tx.init(params), 0.5)
  updates, _ = jax.jit(tx.update)(grads, state, params)
  np.testing.assert_allclose(flat(updates), -0.5 * flat(grads), rtol=1e-6)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_rmsprop_matches_the_keras_formula(momentum):
  rho, eps, lr = 0.9, 1e-7, 1e-3
  cfg = schedule_config("constant", name="rmsprop", lr=lr, rho=rho, eps=eps, momentum=momentum)
  tx = optim.make_optimizer(cfg, total_steps=10)
  params, grads = params_and_grads()
  state = tx.init(params)
  v = m = np.zeros_like(flat(params))
  for scale in (1.0, -0.5, 2.0):
    g = jax.tree.map(lambda x: x * scale, grads)
    updates, state = tx.update(g, state, params)
    v = rho * v + (1 - rho) * flat(g) ** 2
    m = momentum * m + lr * flat(g) / np.sqrt(v + eps)
    np.testing.assert_allclose(flat(updates), -m, rtol=2e-5, atol=1e-10)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_matches_keras_nesterov_sgd(momentum):
  lr = 1e-2
  tx = optim.make_optimizer(schedule_config("constant", name="sgd", lr=lr, momentum=momentum),
                            total_steps=10)
  params, grads = params_and_grads()
  state = tx.init(params)
  velocity = np.zeros_like(flat(params))
  for scale in (1.0, -0.5, 2.0):
    g = jax.tree.map(lambda x: x * scale, grads)
    updates, state = tx.update(g, state, params)
    velocity = momentum * velocity - lr * flat(g)
    np.testing.assert_allclose(flat(updates), momentum * velocity - lr * flat(g), rtol=1e-5,
                               atol=1e-10)


@pytest.mark.parametrize("field,value", [("optimizer.name", "adamw"), ("schedule.name", "linear")])
def test_unknown_names_are_user_errors(field, value):
  cfg = get_base_config()
  section, key = field.split(".")
  cfg[section][key] = value
  with pytest.raises(UserError, match=f"{field}='{value}'") as info:
    optim.make_optimizer(cfg, total_steps=10)
  assert "\n" not in str(info.value)


def test_cosine_starts_at_lr_and_ends_at_min_lr():
  cfg = schedule_config("cosine", lr=2e-3)
  cfg.schedule.min_lr = 1e-5
  schedule = optim.step_schedule(cfg, 100)
  values = np.asarray(schedule(jnp.arange(101)), np.float64)
  assert values[0] == pytest.approx(2e-3, rel=1e-6)
  assert values[-1] == pytest.approx(1e-5, rel=1e-3)
  assert np.all(np.diff(values) <= 1e-9)


def test_cosine_through_the_optimizer_state():
  cfg = schedule_config("cosine", name="sgd", lr=2e-3)
  tx = optim.make_optimizer(cfg, total_steps=4)
  params, grads = params_and_grads()
  state, lrs = tx.init(params), []
  for _ in range(5):
    _, state = tx.update(grads, state, params)
    lrs.append(optim.current_lr(state))
  assert lrs[0] == pytest.approx(2e-3, rel=1e-6)
  assert lrs[-1] == pytest.approx(cfg.schedule.min_lr, rel=1e-3)


def test_onecycle_warms_up_to_lr_then_decays():
  cfg = schedule_config("onecycle", lr=1e-3)
  cfg.schedule.warmup_fraction = 0.25
  schedule = optim.step_schedule(cfg, 200)
  values = np.asarray(jax.vmap(schedule)(jnp.arange(201)), np.float64)
  assert values.max() == pytest.approx(1e-3, rel=1e-5)
  assert abs(int(values.argmax()) - 50) <= 1
  assert values[0] < 0.1 * 1e-3 and values[-1] < 0.01 * 1e-3


def test_plateau_defaults_are_keras_min_delta_1e4_and_no_cooldown():
  # Called without min_delta and cooldown: Keras' defaults (1e-4, 0).
  state = optim.PlateauState(lr=1.0, best=0.5)
  assert optim.plateau_update(state, 0.50005, factor=0.5, patience=3,
                              min_lr=0.0) == optim.PlateauState(1.0, 0.5, 1, 0)
  assert optim.plateau_update(state, 0.5002, factor=0.5, patience=3,
                              min_lr=0.0) == optim.PlateauState(1.0, 0.5002, 0, 0)
  # A cut starts no cooldown: the very next flat epoch counts towards the next cut.
  cut = optim.plateau_update(optim.PlateauState(1.0, 0.5, 2, 0), 0.5, factor=0.5, patience=3,
                             min_lr=0.0)
  assert cut == optim.PlateauState(0.5, 0.5, 0, 0)
  assert optim.plateau_update(cut, 0.5, factor=0.5, patience=3,
                              min_lr=0.0) == optim.PlateauState(0.5, 0.5, 1, 0)


def test_plateau_cooldown_states_epoch_by_epoch():
  params = dict(factor=0.5, patience=1, min_lr=0.0, min_delta=0.0, cooldown=3)
  state = optim.PlateauState(lr=1.0, best=0.9)
  expected = [optim.PlateauState(0.5, 0.9, 0, 3),    # flat: cut, cooldown 3 starts
              optim.PlateauState(0.5, 0.9, 0, 2),    # flat, in cooldown
              optim.PlateauState(0.5, 0.9, 0, 1),
              # Keras: the cooldown ends at this epoch's start, so this flat epoch counts and
              # (patience 1) cuts again.
              optim.PlateauState(0.25, 0.9, 0, 3),
              optim.PlateauState(0.25, 0.9, 0, 2)]
  for want in expected:
    state = optim.plateau_update(state, 0.9, **params)
    assert state == want


def test_plateau_at_min_lr_keeps_counting_and_never_cuts():
  # Keras: `if old_lr > min_lr`: at the floor nothing is cut and the wait is not reset.
  state = optim.PlateauState(lr=0.01, best=0.9)
  for wait in range(1, 5):
    state = optim.plateau_update(state, 0.8, factor=0.5, patience=2, min_lr=0.01,
                                 min_delta=0.0, cooldown=2)
    assert state == optim.PlateauState(0.01, 0.9, wait, 0)


def test_epoch_lr_of_a_per_step_schedule_names_it():
  cfg = get_base_config()
  cfg.schedule.name = "onecycle"
  with pytest.raises(ValueError, match="^onecycle is a per-step schedule$"):
    optim.epoch_lr(cfg, 0, optim.PlateauState(lr=1.0))
