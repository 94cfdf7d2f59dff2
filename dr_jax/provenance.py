"""What a run records so its result can be explained: config, versions, devices, git, data."""

from __future__ import annotations

import importlib.metadata
import json
import pathlib
import platform
import subprocess
import time

import ml_collections

from dr_jax.errors import UserError
from dr_jax.files import atomic_write_bytes

_PACKAGES = ("dr-jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")


def versions() -> dict[str, str]:
  """Installed versions of the packages that decide the numbers."""
  found = {}
  for name in _PACKAGES:
    try:
      found[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      found[name] = "not installed"
  found["python"] = platform.python_version()
  return found


def git_commit() -> str:
  """The commit of the dr_jax checkout (with '+dirty' for local changes), or 'unknown'."""
  here = pathlib.Path(__file__).resolve().parent
  try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                            text=True, timeout=10, check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                           capture_output=True, text=True, timeout=10).stdout.strip()
    return commit + ("+dirty" if dirty else "")
  except (OSError, subprocess.SubprocessError):
    return "unknown"


def write_run_files(workdir: pathlib.Path, cfg: ml_collections.ConfigDict, resumed: bool,
                    train_csv: pathlib.Path, train_digest: str,
                    pseudo_labels: dict | None = None) -> None:
  """Writes config.json and provenance.json (a resumed run appends to the provenance list)."""
  import jax  # Here: reading a run's records (`train_data_dir`) should not import jax.

  atomic_write_bytes(workdir / "config.json", cfg.to_json(indent=2).encode())
  record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "resumed": resumed,
            "versions": versions(), "git_commit": git_commit(),
            "devices": [f"{d.platform}:{d.device_kind}" for d in jax.devices()],
            "host": platform.node(), "machine": platform.machine(),
            "train_data": {"path": str(pathlib.Path(train_csv).resolve()),
                           "sha256": train_digest}}
  if pseudo_labels:
    record["pseudo_labels"] = pseudo_labels
  path = workdir / "provenance.json"
  history = json.loads(path.read_text()) if path.exists() and resumed else []
  atomic_write_bytes(path, json.dumps(history + [record], indent=2).encode())


def _records(workdir: pathlib.Path) -> list[dict]:
  """provenance.json's records, oldest first; none where nothing readable was recorded."""
  try:
    return json.loads((pathlib.Path(workdir) / "provenance.json").read_text())
  except (OSError, json.JSONDecodeError):
    return []


def check_train_data(workdir: pathlib.Path, train_csv: pathlib.Path, train_digest: str) -> None:
  """Refuses a train.csv whose digits differ from those the run recorded (older runs pass)."""
  records = _records(workdir)
  recorded = next((r["train_data"] for r in reversed(records) if "train_data" in r), None)
  if recorded is not None and recorded["sha256"] != train_digest:
    # A different file would rebuild different splits: validation images the run trained on.
    raise UserError(f"{train_csv} holds other digits than the train.csv {workdir} was trained on "
                    f"({recorded['path']}; sha256 {recorded['sha256'][:12]}…, this file "
                    f"{train_digest[:12]}…); pass --data-dir with the run's train.csv")


def train_data_dir(workdir: pathlib.Path) -> pathlib.Path | None:
  """The directory of the train.csv the run was last trained on, if recorded."""
  recorded = next((r["train_data"] for r in reversed(_records(workdir)) if "train_data" in r), None)
  return pathlib.Path(recorded["path"]).parent if recorded else None


# Keys a resume may change: how the run is computed or used, not what it is. num_epochs too, for
# schedules set per epoch (a per-step schedule's shape depends on the total step count).
RESUMABLE_KEYS = ("predict.tta", "train.eval_batch_size", "train.early_stop", "train.fast_cpu",
                  "train.steps_per_call", "ensemble.vectorize", "train.target_accuracy")
PER_EPOCH_SCHEDULES = ("plateau", "constant", "exponential")


_IMPLIED_BEFORE_RECORDED = {"data.classes": tuple(range(10)), "data.image_shape": (28, 28, 1)}


def check_config(workdir: pathlib.Path, cfg: ml_collections.ConfigDict) -> None:
  """Refuses to resume `workdir` under a config that changes what the run is (its split, model,
  optimizer, data, seed or members), naming each key that differs."""
  # Here: provenance is read by commands that need no config.
  from dr_jax.config import flatten, get_base_config

  if not (pathlib.Path(workdir) / "config.json").exists():
    return
  # A key the run's config.json lacks did not exist when it started: it had the value that
  # version of dr_jax implied, the default (runs before data.classes were all 28×28 digits).
  implied = flatten(get_base_config()) | _IMPLIED_BEFORE_RECORDED
  before, now = implied | flatten(read_config(workdir)), flatten(cfg)
  allowed = set(RESUMABLE_KEYS)
  if now.get("schedule.name") in PER_EPOCH_SCHEDULES:
    allowed.add("num_epochs")
  # pseudo.* is judged by the rows it yields (check_pseudo_labels), not by the keys.
  changed = [k for k in sorted(before.keys() | now.keys()) if k not in allowed
             and not k.startswith("pseudo.") and before.get(k) != now.get(k)]
  if changed:
    diffs = ", ".join(f"{k} {before.get(k)!r} → {now.get(k)!r}" for k in changed[:6])
    more = f" and {len(changed) - 6} more" if len(changed) > 6 else ""
    raise UserError(f"{workdir} was trained with another config ({diffs}{more}); resuming would "
                    "mix two runs: resume with the config in "
                    f"{pathlib.Path(workdir) / 'config.json'}, or train into a new --workdir")


def _pseudo_text(record: dict | None) -> str:
  """A pseudo-labels record as words for an error message."""
  return "no pseudo-labels" if record is None else \
      f"{record['rows']:,} pseudo-labelled rows from {record['teacher']}"


def check_pseudo_labels(workdir: pathlib.Path, current: dict | None) -> None:
  """Refuses to resume a run with other pseudo-labelled training rows than it started with."""
  records = _records(workdir)
  recorded = records[-1].get("pseudo_labels") if records else current
  if recorded != current:
    raise UserError(f"{workdir} was trained with {_pseudo_text(recorded)}, this config gives "
                    f"{_pseudo_text(current)}; resume with the pseudo.teacher and "
                    "pseudo.threshold it started with, or train into a new --workdir")


def read_config(workdir: pathlib.Path) -> ml_collections.ConfigDict:
  """The resolved config a run was trained with (lists back to tuples, as the code expects)."""
  path = pathlib.Path(workdir) / "config.json"
  if not path.exists():
    raise UserError(f"{path} not found: {workdir} is not a dr_jax run directory; "
                    "train first with `dr-jax train --config FILE --workdir DIR`")
  try:
    raw = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise UserError(f"{path}: not valid JSON ({e}); restore it or retrain") from None

  def tuples(value):
    if isinstance(value, dict):
      return {k: tuples(v) for k, v in value.items()}
    return tuple(value) if isinstance(value, list) else value

  return ml_collections.ConfigDict(tuples(raw))
