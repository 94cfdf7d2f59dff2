"""Grid: each learning-rate schedule on experiments/classic.py, one results row per schedule.

Command: dr-jax sweep experiments/ablations/grid_schedules.py --seeds 3
Results: accuracy and time are in docs/ablations.md, measured with the command above.
`dr-jax train --config` on this file trains the first variant (get_config).
"""

import pathlib

from dr_jax.config import load_config

SCHEDULES = ("onecycle", "plateau", "constant", "cosine", "exponential")


def get_grid():
  grid = []
  for name in SCHEDULES:
    c = load_config(pathlib.Path(__file__).resolve().parents[1] / "classic.py")
    c.schedule.name = name
    grid.append((name, c))
  return grid


def get_config():
  return get_grid()[0][1]
