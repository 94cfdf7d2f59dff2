"""`train.budget_minutes`: as many epochs as fit in a wall-clock budget, measured on this machine.

CPUs differ by 5× in step rate, so a fixed epoch count is twelve minutes on one machine and an
hour on another. With a budget, `train` times its own compiled train calls and a validation pass
right after compiling, and sets `num_epochs` to the most epochs that end within the budget; the
resolved count goes into the run's config.json, so a resume, a rerun, or `--config.num_epochs=N`
without a budget trains exactly the same run.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from dr_jax import provenance
from dr_jax.errors import UserError

# The estimate's allowance for what the measurement leaves out: checkpoint saves, the log,
# an epoch slower than the timed calls.
MARGIN = 0.05


@dataclasses.dataclass(frozen=True)
class EpochCost:
  """Measured seconds of one epoch: its train calls and its validation pass."""

  train_s: float
  validation_s: float

  @property
  def total_s(self) -> float:
    return (self.train_s + self.validation_s) * (1 + MARGIN)


def epochs_within(budget_minutes: float, spent_s: float, cost: EpochCost,
                  recompile_s: float) -> int:
  """The most whole epochs that end within the budget, `spent_s` already gone and `recompile_s`
  still to come; a budget that fits none is a user error."""
  epochs = math.floor((budget_minutes * 60 - spent_s - recompile_s) / cost.total_s)
  if epochs < 1:
    raise UserError(
        f"train.budget_minutes={budget_minutes:g} fits no epoch on this machine: "
        f"{(spent_s + recompile_s) / 60:.2f} min to load and compile, then "
        f"{cost.total_s / 60:.2f} min per epoch; raise --budget")
  return epochs


def seconds_per_call(call: Callable, state: Any, batches: Sequence[tuple]) -> float:
  """Seconds per call of `call(state, *batch)` over `batches` after one untimed call; the calls
  chain their states from a copy of `state`, which stays untouched (calls donate their state)."""
  state = jax.tree.map(jnp.copy, state)
  state, out = call(state, *batches[0])
  jax.block_until_ready(out)
  start = time.perf_counter()
  for batch in batches:
    state, out = call(state, *batch)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / len(batches)


def seconds_of(fn: Callable[[], Any]) -> float:
  """Seconds of `fn()` on its second call (the first compiles)."""
  fn()
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def with_earlier_epochs(cfg: ml_collections.ConfigDict,
                        workdir: pathlib.Path) -> ml_collections.ConfigDict | None:
  """`cfg` with the epoch count an earlier session of this run resolved for the same budget;
  None if there was none (a new run, or another budget, which resuming refuses)."""
  if not (pathlib.Path(workdir) / "config.json").is_file():
    return None
  saved = provenance.read_config(workdir)
  if saved.train.get("budget_minutes", 0.0) != cfg.train.budget_minutes:
    return None
  return with_epochs(cfg, saved.num_epochs)


def with_epochs(cfg: ml_collections.ConfigDict, epochs: int) -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict(cfg.to_dict())
  cfg.num_epochs = int(epochs)
  return cfg
