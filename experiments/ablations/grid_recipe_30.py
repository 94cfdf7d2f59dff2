"""Grid: the seed recipe's choices against default.py's at its full 30 epochs.

grid_levers.py ranked these at 6 epochs, which underfit; here each row undoes one of default.py's
departures from the blog post's recipe, on default.py as shipped (strided CNN at (24, 48, 96),
one-cycle Adam, label smoothing 0.1): no augmentation (rotation, zoom and shift off), RMSprop
instead of Adam (the same one-cycle schedule and peak rate), Keras' reduce-on-plateau instead of
one-cycle (factor 0.5 after 3 epochs without a validation gain), and no batch-norm (the blog
post's CNN has none; the strided CNN's convs keep their biases). The reference is
grid_widths_30.py's first row, default.py itself, on the same seeds and splits.
Command: dr-jax sweep experiments/ablations/grid_recipe_30.py --seeds 2 --workdir runs/recipe30
Measured (CPU-2s; docs/ablations.md, "The seed recipe's choices, 30 epochs"): last-epoch
validation errors of 4,200 (seeds 0, 1) 24, 23 without augmentation, 14, 17 with RMSprop, 16, 25
with reduce-on-plateau and 18, 20 without batch-norm, against default.py's 14, 17; none ahead
under the rule fixed before the runs. About 15 minutes a run.
`dr-jax train --config` on this file trains the first variant (get_config).
"""

import pathlib

from dr_jax.config import load_config, load_module

HERE = pathlib.Path(__file__).resolve().parent
VARIANTS = ("no_augmentation", "rmsprop", "plateau", "no_batch_norm")


def _no_batch_norm(c):
  c.model.kwargs.batch_norm = False


def get_grid():
  levers = load_module(HERE / "grid_levers.py").LEVERS | {"no_batch_norm": _no_batch_norm}
  grid = []
  for name in VARIANTS:
    c = load_config(HERE.parent / "default.py")
    c.train.max_minutes = 0.0  # Measured at 30 epochs; default.py caps its time.
    levers[name](c)
    grid.append((name, c))
  return grid


def get_config():
  return get_grid()[0][1]
