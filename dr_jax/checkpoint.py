"""orbax checkpoints in a workdir: `latest/` to resume from and `best/` (by validation accuracy).

This module owns the order of the two saves and how a resume reconciles them.
"""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import os
import pathlib
import time
from typing import Any

import jax
import orbax.checkpoint as ocp

from dr_jax.errors import UserError
from dr_jax.run_state import RunState

KINDS = ("latest", "best")


def check_writable(root: pathlib.Path) -> None:
  """Refuses a checkpoint directory a trainer must not write: a link, or one it cannot write."""
  paths = (root, *(root / kind for kind in KINDS))
  for path in paths:
    if path.is_symlink():
      # orbax deletes old steps and temp directories inside it: through a link, in the target.
      raise UserError(f"{path}: is a symbolic link; dr_jax writes checkpoints only into real "
                      "directories (its cleanup would delete inside the link's target): replace "
                      "it with a directory, or pass another --workdir")
  existing = [p for p in paths if p.exists()]
  for path in existing or [next(p for p in root.parents if p.exists())]:
    if not os.access(path, os.W_OK | os.X_OK):
      raise UserError(f"{path}: not writable, so checkpoints cannot be saved under {root}; fix "
                      "its permissions or pass another --workdir")


class Checkpoints:
  """Two orbax managers: the newest epoch (resume) and the best validation accuracy (predict).

  Separate directories because a single best-N manager deletes the newest checkpoint whenever it
  is worse, which would make resuming impossible (orbax issue #526). Each save is atomic: orbax
  writes to a temporary directory and renames it when complete.
  """

  def __init__(self, workdir: pathlib.Path, read_only: bool = False):
    root = pathlib.Path(workdir).absolute() / "checkpoints"
    if not read_only:
      check_writable(root)
    # Read-only users (predict) must not create directories or clean up a trainer's temp files.
    options = ocp.CheckpointManagerOptions(max_to_keep=1, create=not read_only,
                                           cleanup_tmp_directories=not read_only)
    self.root = root
    # Named handlers let orbax read a checkpoint's array metadata before restoring it.
    self.managers = {kind: ocp.CheckpointManager(
        root / kind, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "meta": ocp.JsonCheckpointHandler()}) for kind in KINDS}

  def save(self, kind: str, state: Any, run: RunState) -> None:
    """Saves a state pytree and the run's record as `kind` for `run.epoch` (asynchronously)."""
    manager = self.managers[kind]
    if run.epoch in manager.all_steps():
      # Left by a run killed before its `latest` save; the resumed run recomputes this epoch.
      manager.delete(run.epoch)
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              meta=ocp.args.JsonSave(run.to_json()))
    manager.save(run.epoch, args=args, force=True)

  def save_epoch(self, train_state: Any, best_variables: Any | None, run: RunState) -> None:
    """An epoch's saves: `best` first when a member improved (`best_variables`), then `latest`.

    `latest` must never point past `best`: a kill between the two saves then only repeats
    this epoch, which rewrites the same best checkpoint.
    """
    if best_variables is not None:
      self.save("best", best_variables, run)
      self.wait()
    self.save("latest", train_state, run)

  def resume(self, train_state: Any, best_variables: Any) -> tuple[Any, Any, RunState] | None:
    """(train state, best variables, run record) of the newest epoch, or None for a new run.

    The arguments give the pytrees' structure and types. When a kill landed after an epoch's
    `best` save but before its `latest` save, that newer best is kept: it is never
    overwritten by a worse one when the epoch is trained again.
    """
    if self.latest_epoch("latest") is None:
      return None
    train_state, run = self.restore("latest", target=train_state)
    best_variables, best_run = self.restore("best", target=best_variables)
    if best_run.epoch > run.epoch:
      run = run.with_best_of(best_run)
    return train_state, best_variables, run

  def latest_epoch(self, kind: str) -> int | None:
    """The epoch of the newest complete checkpoint of `kind`, or None."""
    return self.managers[kind].latest_step()

  def restore(self, kind: str, target: Any | None = None) -> tuple[Any, RunState]:
    """Restores (state, run record); `target`, a pytree like the saved one, gives the types."""
    manager = self.managers[kind]
    epoch = manager.latest_step()
    if epoch is None:
      raise UserError(f"no {kind} checkpoint in {self.root / kind}; train first with "
                      f"`dr-jax train --config FILE --workdir {self.root.parent}`")
    try:
      restored = self._quiet_restore(manager, epoch, target)
    except Exception as e:  # orbax raises many types for damaged files; all mean the same here.
      first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      first = first if len(first) <= 160 else first[:157] + "..."
      raise UserError(f"{self.root / kind / str(epoch)}: checkpoint cannot be read "
                      f"({type(e).__name__}: {first}); it is damaged or from another model: "
                      "delete it, or retrain") from None
    return restored["state"], RunState.from_json(restored["meta"])

  @staticmethod
  def _quiet_restore(manager: ocp.CheckpointManager, epoch: int, target: Any | None) -> Any:
    """Restores; on failure, lets orbax's pending reads finish before raising.

    With a damaged file, reads still in flight when orbax closes its event loop print
    "Event loop is closed" tracebacks; they carry nothing the one-line error does not.
    """
    with contextlib.redirect_stderr(io.StringIO()):
      try:
        if target is None:
          # Onto this process's first device, whatever topology saved it (a 4-device run, a
          # GPU), so predict works anywhere.
          device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
          target = jax.tree.map(
              lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
              manager.item_metadata(epoch)["state"].tree)
        args = ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                  meta=ocp.args.JsonRestore())
        return manager.restore(epoch, args=args)
      except Exception:
        manager.close()
        time.sleep(1.0)
        # The failed reads' futures report "exception was never retrieved" through the asyncio
        # logger when collected; collect them now and keep that logger quiet: the caller is
        # about to report the failure in one line.
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        gc.collect()
        raise

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    for manager in self.managers.values():
      manager.wait_until_finished()

  def close(self) -> None:
    """Finishes pending saves and releases orbax's resources."""
    self.wait()
    for manager in self.managers.values():
      manager.close()

  def __enter__(self) -> "Checkpoints":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
