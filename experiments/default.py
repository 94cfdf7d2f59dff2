"""The README's main run: best local accuracy that fits in about 15 minutes on a 2-core CPU.

Command: dr-jax run   (or: dr-jax train --config experiments/default.py --workdir runs/default)
Expected: see README "Results" (measured there on the 2-core AMD EPYC CPU).
"""

from dr_jax.config import get_base_config


def get_config():
  c = get_base_config()
  c.num_epochs = 20
  c.batch_size = 64
  c.data.val_fraction = 0.025
  c.optimizer.lr = 1e-3
  c.schedule.name = "onecycle"
  return c
