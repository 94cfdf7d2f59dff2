"""Grid: the newer levers at default.py's full 30 epochs, where the 6-epoch grid cannot rank them.

grid_levers.py's 6-epoch runs underfit, so every regulariser there costs accuracy; regularisers
pay off late. The baseline is default.py (30 epochs of one-cycle Adam) without its label
smoothing, and each other row adds one of grid_levers.py's levers to it: elastic distortion
(α 34, σ 4; the largest 6-epoch cost), no dropout (the largest 6-epoch gain after the residual
model), an EMA of the weights (0.999) and label smoothing (0.1), which is default.py as shipped:
these rows chose it. The last rows are this grid's own: label smoothing 0.2 (airbench's value),
and four changes on top of label smoothing 0.1 (default.py as shipped):
- no dropout;
- a milder elastic distortion (α 24, σ 6: 0.57 px RMS per axis against α 34, σ 4's 1.26, near
  the 4×4-grid distortion of magnitude 1 in github.com/ttdoucet/mnist);
- residual.py's model: its epochs take about 0.75 of the strided CNN's, so the row asks whether
  the same 30 epochs give the same accuracy in less time;
- the milder elastic distortion with half the zoom and shift (0.05 each; rotation stays 10°):
  the elastic rows' training loss ends highest, so the affine warp may leave the distortion too
  little room.
Command: dr-jax sweep experiments/ablations/grid_levers_30.py --seeds 2 --workdir runs/levers30
Results: docs/ablations.md ("Levers on default.py, 30 epochs"), measured with the command above.
`dr-jax train --config` on this file trains the first variant (get_config): the baseline.
"""

import pathlib

from dr_jax.config import load_config, load_module

HERE = pathlib.Path(__file__).resolve().parent
VARIANTS = ("baseline", "elastic", "no_dropout", "ema", "label_smoothing", "label_smoothing_0.2",
            "label_smoothing_no_dropout", "label_smoothing_elastic_mild",
            "label_smoothing_residual", "label_smoothing_elastic_mild_less_affine")


def _label_smoothing_02(c):
  c.train.label_smoothing = 0.2


def _elastic_mild(c):
  c.augment.elastic_alpha, c.augment.elastic_sigma = 24.0, 6.0


def _less_affine(c):
  c.augment.zoom, c.augment.shift = 0.05, 0.05


def _stacked(*changes):
  """One row that makes each change in turn."""
  def change(c):
    for f in changes:
      f(c)
  return change


def get_grid():
  levers = load_module(HERE / "grid_levers.py").LEVERS
  smoothing = levers["label_smoothing"]
  levers = levers | {"label_smoothing_0.2": _label_smoothing_02,
                     "label_smoothing_no_dropout": _stacked(smoothing, levers["no_dropout"]),
                     "label_smoothing_elastic_mild": _stacked(smoothing, _elastic_mild),
                     "label_smoothing_residual": _stacked(smoothing, levers["residual"]),
                     "label_smoothing_elastic_mild_less_affine":
                         _stacked(smoothing, _elastic_mild, _less_affine)}
  grid = []
  for name in VARIANTS:
    c = load_config(HERE.parent / "default.py")
    c.train.max_minutes = 0.0  # Measured at 30 epochs; default.py caps its time.
    c.train.label_smoothing = 0.0  # The rows' base; the smoothing rows add it back.
    c.model.kwargs.widths = (32, 64, 128)  # As measured; default.py's are narrower.
    levers[name](c)
    grid.append((name, c))
  return grid


def get_config():
  return get_grid()[0][1]
