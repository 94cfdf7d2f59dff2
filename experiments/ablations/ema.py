"""Ablation of experiments/classic.py: validate, keep and predict with an average of the weights.

train.ema_decay 0.999: each step moves the average 0.1% of the way to the parameters, an
horizon of about 1,000 steps (two epochs at batch 86 on 42,000 images); batch-norm statistics
stay the live ones (classic.py has none).
Command: dr-jax sweep experiments/ablations/ema.py --seeds 3
Results: not measured yet (docs/ablations.md lists what is).
"""

import pathlib

from dr_jax.config import load_config


def get_config():
  c = load_config(pathlib.Path(__file__).resolve().parents[1] / "classic.py")
  c.train.ema_decay = 0.999
  return c
