"""Smoke run on a few hundred images: checks the whole pipeline in well under a minute.

Command: dr-jax train --config experiments/tiny.py --workdir runs/tiny
Expected: accuracy is meaningless (a few hundred images, 2 epochs); it only exercises the code.
"""

from dr_jax.config import get_base_config


def get_config():
  c = get_base_config()
  c.num_epochs = 2
  c.batch_size = 32
  c.data.subset = 600
  c.data.val_fraction = 0.1
  c.train.steps_per_call = 2
  return c
