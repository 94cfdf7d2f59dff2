"""Ablation of experiments/classic.py: no data augmentation (rotation, zoom and shift off).

Command: dr-jax sweep experiments/ablations/no_augmentation.py --seeds 3
Results: accuracy and time are in docs/ablations.md, measured with the command above next
to `dr-jax sweep experiments/classic.py --seeds 3`.
"""

import pathlib

from dr_jax.config import load_config


def get_config():
  c = load_config(pathlib.Path(__file__).resolve().parents[1] / "classic.py")
  c.augment.rotation = 0.0
  c.augment.zoom = 0.0
  c.augment.shift = 0.0
  return c
