"""The best ensemble that trains in about an hour on a 2-core CPU: 5 strided CNNs, one program.

A delta on default.py (the strided CNN, one-cycle learning rate, 10% validation): five members,
each with its own initialisation, dropout/augmentation keys and its own stratified 10% validation
split (as in the 15-CNN recipe, so each sees a different 90% of the data and picks its best
epoch on its own 4,200 images); 26 epochs each, the most that fit the hour at the ~1,600
member-images/s the looped members train at here.
Command: dr-jax train --config experiments/ensemble_cpu.py --workdir runs/ensemble_cpu
         dr-jax predict --workdir runs/ensemble_cpu && dr-jax score runs/ensemble_cpu/submission.csv
Expected: see README "Ensembles" (accuracy on the local answers and wall time, measured there).
"""

import pathlib

from dr_jax.config import load_config


def get_config():
  c = load_config(pathlib.Path(__file__).resolve().parent / "default.py")
  c.num_epochs = 26
  c.ensemble.size = 5
  c.ensemble.own_split = True
  return c
