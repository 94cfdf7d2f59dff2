"""Grid: one lever at a time on experiments/default.py, each run 6 epochs, to rank final accuracy.

The base is default.py without its label smoothing (one of the levers here).

Six epochs of the one-cycle schedule (a fifth of default.py's 30, ending at ~0 as its run does)
so that 10 variants × 2 seeds fit a 2-core CPU's afternoon; each row changes one thing: the seed
recipe's choices (augmentation, dropout, RMSprop, plateau schedule, the 2.5% validation share)
and the newer levers (EMA of weights, elastic distortion, label smoothing, the residual CNN).
Command: dr-jax sweep experiments/ablations/grid_levers.py --seeds 2 --workdir runs/levers
Results: docs/ablations.md ("Levers on default.py"), measured with the command above.
`dr-jax train --config` on this file trains the first variant (get_config): the baseline.
"""

import pathlib

import ml_collections

from dr_jax.config import load_config

EPOCHS = 6


EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1]


def _default() -> ml_collections.ConfigDict:
  c = load_config(EXPERIMENTS / "default.py")
  c.num_epochs = EPOCHS
  c.train.max_minutes = 0.0  # The rows' base: fixed epochs; default.py caps its time.
  c.train.label_smoothing = 0.0  # The base the rows were measured on; one row adds it back.
  c.model.kwargs.widths = (32, 64, 128)  # Likewise: default.py's are narrower.
  return c


def _no_augmentation(c):
  c.augment.rotation, c.augment.zoom, c.augment.shift = 0.0, 0.0, 0.0


def _no_dropout(c):
  c.model.kwargs.dropout = 0.0


def _rmsprop(c):
  c.optimizer.name = "rmsprop"


def _plateau(c):
  c.schedule.name = "plateau"


def _val_2pct(c):
  c.data.val_fraction = 0.025


def _ema(c):
  c.train.ema_decay = 0.999


def _elastic(c):
  c.augment.elastic_alpha, c.augment.elastic_sigma = 34.0, 4.0


def _label_smoothing(c):
  c.train.label_smoothing = 0.1


def _residual(c):
  c.model = load_config(EXPERIMENTS / "residual.py").model  # residual.py's model, nothing else.


LEVERS = {"baseline": lambda c: None, "no_augmentation": _no_augmentation,
          "no_dropout": _no_dropout, "rmsprop": _rmsprop, "plateau": _plateau,
          "val_2pct": _val_2pct, "ema": _ema, "elastic": _elastic,
          "label_smoothing": _label_smoothing, "residual": _residual}


def get_grid():
  grid = []
  for name, change in LEVERS.items():
    c = _default()
    change(c)
    grid.append((name, c))
  return grid


def get_config():
  return get_grid()[0][1]
