"""`dr-jax run`'s config: the strided CNN, 30 one-cycle epochs (12.4 min on CPU-2, 21-23 on CPU-2s).

The strided CNN of the 99.75% Kaggle ensembles (3×3 convs + batch-norm, stride-2 5×5 convs; half
the classic CNN's FLOPs and, with its training formulation, 1.2× its training speed here) under a
one-cycle learning rate (warm up, then anneal to ~0: the best use of a fixed budget of epochs),
and a 10% validation split: with 2.5% (1,050 images) the best-accuracy checkpoint is picked by one
or two images of noise. 30 epochs: at the ~23 s an epoch took on CPU-2 (docs/results.md), the
most that fit 15 minutes end to end there with a 10% margin; CPU-2s takes ~40 s an epoch, and
experiments/budget15.py fits 15 minutes on any machine. Narrower, the strided CNN is cheaper but
far behind the residual CNN under the same minutes (grid_quick_widths.py). One view at predict
(predict.tta = 1): on the validation splits of four strided runs 5 views were not clearly better
(`dr-jax validate`: 267 vs 271 errors of 71,400; docs/ensembles.md). Label smoothing 0.1: on
three seeds' validation splits its last epoch misses 12, 17 and 17 of 4,200 images against 19,
17 and 22 without it (experiments/ablations/grid_levers_30.py; docs/ablations.md), at no cost in
time. The classic CNN's 15-minute run is experiments/classic.py.
Command: dr-jax run   (or: dr-jax train --config experiments/default.py --workdir runs/default)
Measured (CPU-2s of docs/results.md: a 2-core AMD EPYC, embedded data, jax 0.10.2): local test
accuracy 0.99600, 0.99543 and 0.99521 (seeds 0, 1, 2: 112, 128 and 134 of 28,000 wrong), 21-23
min a run on that machine. Without label smoothing the same seeds miss 119, 120 and 136; on
CPU-2, 1.7x faster, that recipe ran 12.4 min end to end.
"""

import pathlib

from dr_jax.config import load_config


def get_config():
  c = load_config(pathlib.Path(__file__).resolve().parent / "strided.py")
  c.num_epochs = 30
  c.data.val_fraction = 0.1
  c.schedule.name = "onecycle"
  c.train.label_smoothing = 0.1
  return c
