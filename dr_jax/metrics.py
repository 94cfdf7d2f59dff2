"""Where a run's numbers go: the log, TensorBoard and `metrics.jsonl`, written by process 0 only."""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any

import ml_collections
import numpy as np
from tensorboardX import SummaryWriter
from tensorboardX.summary import hparams as hparams_summaries

from dr_jax import distributed
from dr_jax.config import flatten
from dr_jax.errors import UserError
from dr_jax.files import atomic_write_text

# metrics.jsonl keys → TensorBoard tags.
_TAGS = (("train_loss", "loss/train"), ("val_loss", "loss/val"),
         ("train_accuracy", "accuracy/train"), ("val_accuracy", "accuracy/val"),
         ("val_accuracy_ensemble", "accuracy/val_ensemble"), ("lr", "learning_rate"),
         ("epoch_time_s", "perf/epoch_time_s"), ("images_per_s", "perf/images_per_s"),
         ("elapsed_s", "perf/elapsed_s"))
# The HPARAMS tab's metrics: the run's own scalar tags, plus the best accuracy written at the end.
HPARAM_METRICS = ("accuracy/val", "loss/val", "accuracy/train", "hparam/best_val_accuracy")
EXAMPLES_TAG = "train/augmented_examples"


def image_grid(images: np.ndarray, columns: int = 8) -> np.ndarray:
  """(n, h, w, 1) images in [0, 1] → one (rows·(h+1)−1, columns·(w+1)−1) uint8 image, a
  one-pixel gap between cells; missing cells are blank."""
  n, h, w = images.shape[:3]
  rows = -(-n // columns)
  grid = np.zeros((rows * (h + 1) - 1, columns * (w + 1) - 1), np.uint8)
  cells = np.clip(np.asarray(images, np.float32)[..., 0], 0, 1) * 255
  for i in range(n):
    r, c = divmod(i, columns)
    grid[r * (h + 1): r * (h + 1) + h, c * (w + 1): c * (w + 1) + w] = np.rint(cells[i])
  return grid


def _hparams(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config's scalar keys (tuples as text), as TensorBoard's HPARAMS tab takes them."""
  return {k: v if isinstance(v, (bool, int, float, str)) else str(v)
          for k, v in flatten(cfg).items()}


def log(message: str) -> None:
  """One line on stderr, from the primary process only (one log, not one per process)."""
  if distributed.is_primary():
    print(message, file=sys.stderr, flush=True)


def _records(path: pathlib.Path) -> list[dict[str, Any]]:
  """metrics.jsonl's records; a torn last line (a crash or a full disk mid-append) is dropped:
  its epoch is trained again on resume, as an epoch killed before its checkpoint is."""
  lines = [line for line in path.read_text().splitlines() if line.strip()]
  records = []
  for i, line in enumerate(lines):
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      if i < len(lines) - 1:
        raise UserError(f"{path}: line {i + 1} is not JSON ({line[:40]!r}); only the last "
                        "line can be torn by a crash — restore the file or train into a new "
                        "--workdir") from None
  return records


def val_accuracy(record: dict[str, Any]) -> float:
  """The validation accuracy a record is judged by: the ensemble's where it has one."""
  return record.get("val_accuracy_ensemble", record["val_accuracy"])


def elapsed_minutes(records: list[dict[str, Any]]) -> list[float]:
  """Wall-clock minutes from the run's start to the end of each record's epoch.

  Records written without `elapsed_s` count their epochs' training time only.
  """
  if all("elapsed_s" in r for r in records):
    return [r["elapsed_s"] / 60 for r in records]
  return list(np.cumsum([r["epoch_time_s"] for r in records]) / 60)


def time_to_accuracy(records: list[dict[str, Any]],
                     target: float) -> tuple[int, float] | None:
  """(epoch, minutes) of the first record whose validation accuracy reached `target`; None if
  none did."""
  for record, minutes in zip(records, elapsed_minutes(records)):
    if val_accuracy(record) >= target:
      return record["epoch"], minutes
  return None


def read_metrics(workdir: pathlib.Path) -> list[dict[str, Any]]:
  """The per-epoch records of `workdir/metrics.jsonl`, oldest first."""
  path = pathlib.Path(workdir) / "metrics.jsonl"
  if not path.is_file():
    raise UserError(f"{path} not found; train first with `dr-jax train --workdir {workdir}`")
  records = _records(path)
  if not records:
    raise UserError(f"{path} is empty; train at least one epoch first")
  return records


class MetricsWriter:
  """TensorBoard scalars and `metrics.jsonl` lines for each epoch; a no-op off process 0.

  A resumed run first drops the lines of epochs after its checkpoint (an epoch killed before
  its save is trained again), and TensorBoard purges the same steps.
  """

  def __init__(self, workdir: pathlib.Path, cfg: ml_collections.ConfigDict, epoch: int,
               examples: np.ndarray | None = None):
    """`examples`: augmented training images in [0, 1], shown once when the run starts."""
    self.active = distributed.is_primary()
    self.path = pathlib.Path(workdir) / "metrics.jsonl"
    self.cfg = cfg
    self.records: list[dict[str, Any]] = []  # Every epoch's record so far, resumed ones too.
    # Wall-clock seconds the run had taken before this session: a resume's clock goes on.
    self.elapsed_before_s = 0.0
    if not self.active:
      return
    if self.path.exists():
      self.records = [r for r in _records(self.path) if r["epoch"] <= epoch]
      atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records))
      self.elapsed_before_s = self.records[-1].get("elapsed_s", 0.0) if self.records else 0.0
    # flush_secs: what is written reaches the file (and TensorBoard) within seconds, the run's
    # start too; the suffix keeps a resume in the same second from reusing the start's file name.
    self.tensorboard = SummaryWriter(str(pathlib.Path(workdir) / "tensorboard"),
                                     purge_step=epoch + 1, flush_secs=2,
                                     filename_suffix=f".from_epoch_{epoch}")
    self.epoch = epoch
    if epoch == 0:
      # Written now, in the scalars' own event file: the HPARAMS tab lists a running run and
      # links its curves (tensorboardX's add_hparams would make a sub-run, and only at the end).
      experiment, session_start, _ = hparams_summaries(_hparams(cfg),
                                                       dict.fromkeys(HPARAM_METRICS, 0.0))
      self.tensorboard.file_writer.add_summary(experiment)
      self.tensorboard.file_writer.add_summary(session_start)
      self.tensorboard.add_text("config", "```\n" + cfg.to_json(indent=2) + "\n```", 0)
      if examples is not None:
        self.tensorboard.add_image(EXAMPLES_TAG, image_grid(examples), 0, dataformats="HW")
      self.tensorboard.flush()

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
    self.epoch = epoch
    self.records.append(record)
    self.tensorboard.flush()
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")

  def close(self, best_val_accuracy: float) -> None:
    """Records the run's best accuracy (the HPARAMS tab's result) and closes TensorBoard."""
    if not self.active:
      return
    self.tensorboard.add_scalar("hparam/best_val_accuracy", best_val_accuracy, self.epoch)
    *_, session_end = hparams_summaries(_hparams(self.cfg), dict.fromkeys(HPARAM_METRICS, 0.0))
    self.tensorboard.file_writer.add_summary(session_end)
    self.tensorboard.close()
