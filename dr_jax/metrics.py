"""Where a run's numbers go: the log, TensorBoard and `metrics.jsonl`, written by process 0 only."""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any

import ml_collections
from tensorboardX import SummaryWriter

from dr_jax import distributed
from dr_jax.config import flatten
from dr_jax.errors import UserError
from dr_jax.files import atomic_write_text

# metrics.jsonl keys → TensorBoard tags.
_TAGS = (("train_loss", "loss/train"), ("val_loss", "loss/val"),
         ("train_accuracy", "accuracy/train"), ("val_accuracy", "accuracy/val"),
         ("val_accuracy_ensemble", "accuracy/val_ensemble"), ("lr", "learning_rate"),
         ("epoch_time_s", "perf/epoch_time_s"), ("images_per_s", "perf/images_per_s"))


def log(message: str) -> None:
  """One line on stderr, from the primary process only (one log, not one per process)."""
  if distributed.is_primary():
    print(message, file=sys.stderr, flush=True)


def read_metrics(workdir: pathlib.Path) -> list[dict[str, Any]]:
  """The per-epoch records of `workdir/metrics.jsonl`, oldest first."""
  path = pathlib.Path(workdir) / "metrics.jsonl"
  if not path.is_file():
    raise UserError(f"{path} not found; train first with `dr-jax train --workdir {workdir}`")
  records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
  if not records:
    raise UserError(f"{path} is empty; train at least one epoch first")
  return records


class MetricsWriter:
  """TensorBoard scalars and `metrics.jsonl` lines for each epoch; a no-op off process 0.

  A resumed run first drops the lines of epochs after its checkpoint (an epoch killed before
  its save is trained again), and TensorBoard purges the same steps.
  """

  def __init__(self, workdir: pathlib.Path, cfg: ml_collections.ConfigDict, epoch: int):
    self.active = distributed.is_primary()
    self.path = pathlib.Path(workdir) / "metrics.jsonl"
    self.cfg = cfg
    if not self.active:
      return
    if self.path.exists():
      lines = [line for line in self.path.read_text().splitlines()
               if line.strip() and json.loads(line)["epoch"] <= epoch]
      atomic_write_text(self.path, "".join(line + "\n" for line in lines))
    self.tensorboard = SummaryWriter(str(pathlib.Path(workdir) / "tensorboard"),
                                     purge_step=epoch + 1)
    if epoch == 0:
      self.tensorboard.add_text("config", "```\n" + cfg.to_json(indent=2) + "\n```", 0)

  def write_epoch(self, record: dict[str, Any]) -> None:
    """Appends one epoch's record (per-member scalars too, for ensembles)."""
    if not self.active:
      return
    epoch = record["epoch"]
    for name, tag in _TAGS:
      if name in record:
        self.tensorboard.add_scalar(tag, record[name], epoch)
    for m, acc in enumerate(record.get("val_accuracy_members", [])):
      self.tensorboard.add_scalar(f"members/{m}/val_accuracy", acc, epoch)
      self.tensorboard.add_scalar(f"members/{m}/learning_rate", record["lr_members"][m], epoch)
    self.tensorboard.flush()
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")

  def close(self, best_val_accuracy: float) -> None:
    """Records the run's hyperparameters against its result and closes TensorBoard."""
    if not self.active:
      return
    hparams = {k: v for k, v in flatten(self.cfg).items() if isinstance(v, (int, float, str))}
    self.tensorboard.add_hparams(hparams, {"hparam/best_val_accuracy": best_val_accuracy},
                                 name="hparams")
    self.tensorboard.close()
