"""The typed record of a run between epochs: where it is, each member's best, the plateau state.

Saved as JSON beside every checkpoint and read back by resume, `predict`, `validate`, `report`
and pseudo-labelling; the rules that decide "better" and "stop" live here with it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from dr_jax import optim


def is_better(accuracy: np.ndarray, loss: np.ndarray, best_accuracy: np.ndarray,
              best_loss: np.ndarray) -> np.ndarray:
  """Per member: higher validation accuracy, or the same accuracy at a lower loss.

  A small validation set ties often (1,050 images: steps of 0.1%); the loss breaks the tie
  instead of freezing the first epoch that reached it.
  """
  return (accuracy > best_accuracy) | ((accuracy == best_accuracy) & (loss < best_loss))


def stops_early(epoch: int, member_best_epoch: list[int], patience: int) -> bool:
  """Keras' EarlyStopping over members: none improved in the `patience` epochs up to `epoch`."""
  return patience > 0 and epoch - max(member_best_epoch) >= patience


@dataclasses.dataclass(frozen=True)
class RunState:
  """A run after `epoch` completed epochs; every per-member list has one entry per member."""

  epoch: int
  plateau: tuple[optim.PlateauState, ...]
  member_best_epoch: tuple[int, ...]
  member_best_val_accuracy: tuple[float, ...]
  member_best_val_loss: tuple[float, ...]
  norm: tuple[float, float]  # (shift, scale) the pixels are normalised with.

  @classmethod
  def fresh(cls, members: int, lr: float, norm: tuple[float, float]) -> RunState:
    """A run before its first epoch."""
    return cls(0, (optim.PlateauState(lr=lr),) * members, (0,) * members, (-1.0,) * members,
               (math.inf,) * members, norm)

  @property
  def members(self) -> int:
    return len(self.member_best_epoch)

  @property
  def best_epoch(self) -> int:
    """The latest epoch at which any member improved."""
    return max(self.member_best_epoch)

  @property
  def best_val_accuracy(self) -> float:
    """The members' mean best validation accuracy."""
    return float(np.mean(self.member_best_val_accuracy))

  def after_epoch(self, epoch: int, accuracy: np.ndarray, loss: np.ndarray,
                  plateau: tuple[optim.PlateauState, ...],
                  keep_last: bool = False) -> tuple[RunState, np.ndarray]:
    """The state after `epoch` scored `accuracy`/`loss` per member, and which members improved
    (every member, with `keep_last`: a final fit keeps its last epoch)."""
    improved = np.ones(self.members, bool) if keep_last else is_better(
        np.asarray(accuracy), np.asarray(loss), np.array(self.member_best_val_accuracy),
        np.array(self.member_best_val_loss))
    pick = lambda new, old: tuple(n if i else o for i, n, o in zip(improved, new, old))
    return RunState(epoch, tuple(plateau),
                    pick([epoch] * self.members, self.member_best_epoch),
                    pick(np.asarray(accuracy, float).tolist(), self.member_best_val_accuracy),
                    pick(np.asarray(loss, float).tolist(), self.member_best_val_loss),
                    self.norm), improved

  def with_best_of(self, other: RunState) -> RunState:
    """This state with `other`'s per-member best (a best checkpoint newer than `latest`)."""
    return dataclasses.replace(self, member_best_epoch=other.member_best_epoch,
                               member_best_val_accuracy=other.member_best_val_accuracy,
                               member_best_val_loss=other.member_best_val_loss)

  def stops_early(self, patience: int) -> bool:
    """Whether no member improved in the last `patience` epochs (0: never stops)."""
    return stops_early(self.epoch, list(self.member_best_epoch), patience)

  def to_json(self) -> dict[str, Any]:
    """The checkpoint's JSON metadata (the keys every dr_jax checkpoint has)."""
    return {
        "epoch": self.epoch, "plateau": [list(p) for p in self.plateau],
        "member_best_epoch": list(self.member_best_epoch),
        "member_best_val_accuracy": list(self.member_best_val_accuracy),
        "member_best_val_loss": list(self.member_best_val_loss), "norm": list(self.norm)}

  @classmethod
  def from_json(cls, record: dict[str, Any]) -> RunState:
    """Reads `to_json`'s record back."""
    shift, scale = record["norm"]
    return cls(int(record["epoch"]), tuple(optim.PlateauState(*p) for p in record["plateau"]),
               tuple(int(e) for e in record["member_best_epoch"]),
               tuple(float(a) for a in record["member_best_val_accuracy"]),
               tuple(float(v) for v in record["member_best_val_loss"]),
               (float(shift), float(scale)))
