"""Epochs sized to a wall-clock limit measured on this machine: a budget or a cap.

CPUs differ by 5× in step rate, so a fixed epoch count is twelve minutes on one machine and an
hour on another. Under a limit, `train` times its own compiled train calls and a validation pass
right after compiling. A budget (`train.budget_minutes`) sets `num_epochs` to the most epochs
that end within it; a cap (`train.max_minutes`) keeps `num_epochs` where they end within it and
lowers it to the most that do where they would not. The resolved count goes into the run's
config.json, so a resume, a rerun, or `--config.num_epochs=N` without a limit trains exactly the
same run.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import pathlib
import time
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import ml_collections

from dr_jax import provenance
from dr_jax.errors import UserError

# The estimate's allowance for what the measurement leaves out: checkpoint saves, the log,
# an epoch slower than the timed calls.
MARGIN = 0.05
# Seconds of train calls timed (at most one epoch's): 1.5 s of calls on a shared 2-core VM
# measured it up to 23% faster than the epochs then ran (docs/design.md, "Budget").
MEASURE_S = 5.0


@dataclasses.dataclass(frozen=True)
class EpochCost:
  """Measured seconds of one epoch: its train calls and its validation pass."""

  train_s: float
  validation_s: float

  @property
  def total_s(self) -> float:
    return (self.train_s + self.validation_s) * (1 + MARGIN)


@dataclasses.dataclass(frozen=True)
class Limit:
  """A run's time limit: the key that sets it, its minutes, and whether it caps `num_epochs`
  (train.max_minutes) or replaces it (train.budget_minutes)."""

  key: str
  minutes: float
  caps: bool

  @property
  def fix(self) -> str:
    return ("raise --budget" if self.key == "train.budget_minutes" else
            "raise it, or set it to 0 to train num_epochs however long they take")


def limit(cfg: ml_collections.ConfigDict) -> Limit | None:
  """The time limit `cfg` sets: its budget if any (a budget decides alone), else its cap; None
  for neither (num_epochs as given)."""
  if cfg.train.get("budget_minutes", 0.0):
    return Limit("train.budget_minutes", cfg.train.budget_minutes, caps=False)
  if cfg.train.get("max_minutes", 0.0):
    return Limit("train.max_minutes", cfg.train.max_minutes, caps=True)
  return None


def epochs_within(lim: Limit, spent_s: float, cost: EpochCost, recompile_s: float) -> int:
  """The most whole epochs that end within the limit, `spent_s` already gone and `recompile_s`
  still to come; a limit that fits none is a user error."""
  epochs = _fitting(lim.minutes, spent_s, cost, recompile_s)
  if epochs < 1:
    raise UserError(
        f"{lim.key}={lim.minutes:g} fits no epoch on this machine: "
        f"{(spent_s + recompile_s) / 60:.2f} min to load and compile, then "
        f"{cost.total_s / 60:.2f} min per epoch; {lim.fix}")
  return epochs


def epochs_under(lim: Limit, num_epochs: int, spent_s: float, cost: EpochCost,
                 recompile_s: float) -> int:
  """The epochs a run trains under `lim`: a budget's most that fit; a cap's `num_epochs` if
  they fit as compiled, else the most that fit after `recompile_s` of recompiling."""
  if lim.caps and _fitting(lim.minutes, spent_s, cost, 0.0) >= num_epochs:
    return num_epochs
  return epochs_within(lim, spent_s, cost, recompile_s)


def _fitting(minutes: float, spent_s: float, cost: EpochCost, recompile_s: float) -> int:
  return math.floor((minutes * 60 - spent_s - recompile_s) / cost.total_s)


def seconds_per_call(call: Callable, state: Any, batches: Iterable[tuple],
                     min_seconds: float = MEASURE_S) -> float:
  """Seconds per call of `call(state, *batch)` after one untimed call, over `batches` until
  `min_seconds` have passed or they run out. The calls chain their states from a copy of
  `state`, which stays untouched (calls donate their state)."""
  batches = iter(batches)
  first = next(batches)
  state = jax.tree.map(jnp.copy, state)
  state, out = call(state, *first)
  jax.block_until_ready(out)
  calls, start = 0, time.perf_counter()
  for batch in itertools.chain([first], batches):
    state, out = call(state, *batch)
    jax.block_until_ready(out)  # Each call waited for: a sustained rate, not a burst.
    calls += 1
    if time.perf_counter() - start >= min_seconds:
      break
  return (time.perf_counter() - start) / calls


def seconds_of(fn: Callable[[], Any]) -> float:
  """Seconds of `fn()` on its second call (the first compiles)."""
  fn()
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def with_earlier_epochs(cfg: ml_collections.ConfigDict,
                        workdir: pathlib.Path) -> ml_collections.ConfigDict | None:
  """`cfg` with the epoch count an earlier session of this run resolved under the same limit;
  None if there was none (a new run, or another limit, which resuming refuses)."""
  if not (pathlib.Path(workdir) / "config.json").is_file():
    return None
  saved = provenance.read_config(workdir)
  if limit(saved) != limit(cfg):
    return None
  return with_epochs(cfg, saved.num_epochs)


def with_epochs(cfg: ml_collections.ConfigDict, epochs: int) -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict(cfg.to_dict())
  cfg.num_epochs = int(epochs)
  return cfg
