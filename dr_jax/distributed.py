"""Several processes (hosts) as one JAX runtime: `jax.distributed`, set up from flags or env.

Every process runs the same command. JAX then sees the devices of all processes as one mesh:
the jitted step all-reduces gradients across hosts, orbax coordinates checkpoint writes, and
files that exist once per run (logs, TensorBoard, submission.csv) are written by process 0.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, TypeVar

import jax
import numpy as np
from jax.experimental import multihost_utils

from dr_jax.errors import UserError

T = TypeVar("T")
TEXT_BYTES = 2048  # What one process tells the others: an error line or a digest.

ENV_ADDRESS, ENV_COUNT, ENV_ID = "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"
# `auto`: let JAX detect the cluster (SLURM, Open MPI, Cloud TPU, GKE) and its coordinator.
ENV_MODE = "DR_JAX_DISTRIBUTED"


@dataclasses.dataclass(frozen=True)
class Launch:
  """How this process joins a run: alone, explicitly, or by cluster auto-detection."""

  coordinator: str | None = None
  num_processes: int = 1
  process_id: int = 0
  auto: bool = False

  @property
  def multi_process(self) -> bool:
    return self.auto or self.num_processes > 1


def _int(value: str | int | None, name: str) -> int | None:
  if value is None or value == "":
    return None
  try:
    return int(value)
  except ValueError:
    raise UserError(f"{name}={value!r} is not an integer; set it to a whole number") from None


def resolve(coordinator: str | None = None, num_processes: int | None = None,
            process_id: int | None = None, environ: dict | None = None) -> Launch:
  """Flags win over the environment; returns a checked `Launch` (pure: reads only `environ`)."""
  env = os.environ if environ is None else environ
  if env.get(ENV_MODE, "") not in ("", "auto", "off"):
    raise UserError(f"{ENV_MODE}={env[ENV_MODE]!r}: use `auto` (cluster auto-detection) or "
                    "`off`, or set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID")
  if env.get(ENV_MODE) == "auto" and coordinator is None and num_processes is None:
    return Launch(auto=True)
  coordinator = coordinator or env.get(ENV_ADDRESS) or None
  count = num_processes if num_processes is not None else _int(env.get(ENV_COUNT), ENV_COUNT)
  pid = process_id if process_id is not None else _int(env.get(ENV_ID), ENV_ID)
  if count is None or count == 1:
    if pid not in (None, 0):
      raise UserError(f"process id {pid} without a process count; set {ENV_COUNT} "
                      "(--num-processes) to the number of processes")
    return Launch()
  if count < 1:
    raise UserError(f"{ENV_COUNT} (--num-processes) is {count}; it must be at least 1")
  missing = [name for name, value in ((f"{ENV_ADDRESS} (--coordinator)", coordinator),
                                      (f"{ENV_ID} (--process-id)", pid)) if value is None]
  if missing:
    raise UserError(f"{count} processes need {' and '.join(missing)} in every process; the "
                    "coordinator is process 0's host:port, e.g. localhost:12355")
  assert coordinator is not None and pid is not None  # `missing` is empty.
  if not 0 <= pid < count:
    raise UserError(f"process id {pid} is outside 0..{count - 1} for {count} processes")
  if ":" not in coordinator:
    raise UserError(f"coordinator {coordinator!r} needs a port: HOST:PORT, e.g. "
                    f"{coordinator}:12355")
  return Launch(coordinator, count, pid)


def initialize(launch: Launch) -> None:
  """Joins the multi-process runtime (before any other JAX call); a no-op for one process."""
  if not launch.multi_process:
    return
  try:
    if launch.auto:
      jax.distributed.initialize()
    else:
      jax.distributed.initialize(launch.coordinator, launch.num_processes, launch.process_id)
  except (RuntimeError, ValueError) as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise UserError(f"could not join the distributed run ({first}); start every process with "
                    "the same coordinator and process count, process 0 first") from None


def is_primary() -> bool:
  """Process 0 writes what exists once per run (logs, TensorBoard, submission, run files)."""
  return jax.process_index() == 0


def gather_text(text: str) -> list[str]:
  """Every process's `text` (its first TEXT_BYTES bytes of UTF-8), in process order."""
  raw = np.zeros(TEXT_BYTES, np.uint8)
  encoded = text.encode("utf-8")[:TEXT_BYTES]
  raw[:len(encoded)] = np.frombuffer(encoded, np.uint8)
  rows = np.asarray(multihost_utils.process_allgather(raw)).reshape(-1, TEXT_BYTES)
  return [bytes(row).rstrip(b"\0").decode("utf-8", errors="replace") for row in rows]


def fail_together(fn: Callable[[], T]) -> T:
  """`fn()` on every process; a UserError on any process ends every process with its message.

  Otherwise the processes that succeeded would wait forever in their next collective for the
  one that exited.
  """
  if jax.process_count() == 1:
    return fn()
  error, result = "", None
  try:
    result = fn()
  except UserError as e:
    error = str(e) or "failed"
  for index, message in enumerate(gather_text(error)):
    if message:
      raise UserError(message if index == jax.process_index() else f"process {index}: {message}")
  return result  # type: ignore[return-value]  # Set: no process failed, this one included.


def check_same(what: str, value: str) -> None:
  """Every process must hold the same `value` (a digest of its data); else every process raises."""
  if jax.process_count() == 1:
    return
  values = gather_text(value)
  if len(set(values)) > 1:
    held = ", ".join(f"process {i}: {v[:12]}" for i, v in enumerate(values))
    raise UserError(f"the processes' {what} differ ({held}); give every process the same files")


def any_process(flag: bool) -> bool:
  """Whether `flag` is set on any process (every process must call this at the same point)."""
  if jax.process_count() == 1:
    return flag
  return bool(np.asarray(multihost_utils.process_allgather(np.array([flag]))).any())


def min_over_processes(value: int) -> int:
  """The smallest of every process's `value` (every process must call this at the same point)."""
  if jax.process_count() == 1:
    return value
  return int(np.asarray(multihost_utils.process_allgather(np.array([value]))).min())
