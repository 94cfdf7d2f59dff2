"""Optimizers and learning-rate schedules, including Keras' ReduceLROnPlateau as a pure function."""

from __future__ import annotations

import math
from typing import NamedTuple

import ml_collections
import numpy as np
import optax

from dr_jax import config


class PlateauState(NamedTuple):
  """Keras ReduceLROnPlateau state for a metric to maximise (validation accuracy)."""

  lr: float
  best: float = -math.inf
  wait: int = 0
  cooldown_left: int = 0


def plateau_update(state: PlateauState, metric: float, *, factor: float, patience: int,
                   min_lr: float, min_delta: float = 1e-4, cooldown: int = 0) -> PlateauState:
  """One end-of-epoch step of Keras' ReduceLROnPlateau(mode='max'); pure.

  optax.contrib.reduce_on_plateau is not used because it acts per update on a minimised
  (training) value; the recipe reduces once per epoch on validation accuracy.
  """
  lr, best, wait, cooldown_left = state
  if cooldown_left > 0:
    cooldown_left -= 1
    wait = 0
  if metric > best + min_delta:
    return PlateauState(lr, metric, 0, cooldown_left)
  if cooldown_left > 0:
    return PlateauState(lr, best, wait, cooldown_left)
  wait += 1
  if wait >= patience and lr > min_lr:
    return PlateauState(max(lr * factor, min_lr), best, 0, cooldown)
  return PlateauState(lr, best, wait, cooldown_left)


def is_per_epoch(cfg: ml_collections.ConfigDict) -> bool:
  """Whether the host sets the learning rate once per epoch (rather than optax per step)."""
  return cfg.schedule.name in ("plateau", "constant", "exponential")


def epoch_lr(cfg: ml_collections.ConfigDict, epoch: int, plateau: PlateauState) -> float:
  """Learning rate the host sets for `epoch` (0-based) under per-epoch schedules."""
  name = cfg.schedule.name
  if name == "plateau":
    return plateau.lr
  if name == "constant":
    return cfg.optimizer.lr
  if name == "exponential":
    return max(cfg.optimizer.lr * cfg.schedule.decay ** epoch, cfg.schedule.min_lr)
  raise ValueError(f"{name} is a per-step schedule")


def step_schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule | None:
  """Per-step schedule evaluated inside the jitted step, or None for per-epoch schedules."""
  name, lr = cfg.schedule.name, cfg.optimizer.lr
  config.check_value("schedule.name", name)
  if name == "cosine":
    return optax.cosine_decay_schedule(lr, max(total_steps, 1), alpha=cfg.schedule.min_lr / lr)
  if name == "onecycle":
    return optax.cosine_onecycle_schedule(max(total_steps, 1), lr,
                                          pct_start=cfg.schedule.warmup_fraction)
  return None


def make_optimizer(cfg: ml_collections.ConfigDict,
                   total_steps: int) -> optax.GradientTransformation:
  """The configured optimizer with its learning rate held in `opt_state.hyperparams`."""
  o = cfg.optimizer
  config.check_value("optimizer.name", o.name)
  schedule = step_schedule(cfg, total_steps)
  lr = schedule if schedule is not None else o.lr

  def build(learning_rate):
    if o.name == "rmsprop":
      # Keras RMSprop: decay rho, epsilon inside the square root (optax's default placement).
      return optax.rmsprop(learning_rate, decay=o.rho, eps=o.eps, momentum=o.momentum or None)
    if o.name == "adam":
      return optax.adam(learning_rate, eps=o.eps)
    return optax.sgd(learning_rate, momentum=o.momentum or None, nesterov=o.momentum > 0)

  return optax.inject_hyperparams(build)(learning_rate=lr)


def set_lr(opt_state: optax.OptState, lr: float | np.ndarray) -> optax.OptState:
  """Returns `opt_state` with a new learning rate (for per-epoch schedules)."""
  hyperparams = dict(opt_state.hyperparams)
  hyperparams["learning_rate"] = hyperparams["learning_rate"] * 0 + lr
  return opt_state._replace(hyperparams=hyperparams)


def current_lr(opt_state: optax.OptState) -> float:
  """The learning rate the last step used (or the next will, for per-epoch schedules)."""
  return float(opt_state.hyperparams["learning_rate"])
