"""Ctrl-C or SIGTERM during training: a request to stop at the next safe point.

Python raises KeyboardInterrupt wherever the main thread happens to be. Inside orbax's wait
for a save it logs a failed save with a traceback; inside library code that catches broadly it
can vanish. The trainer instead polls `StopRequest.check()` between jitted calls and after
each epoch's checkpoint. In a multi-process run every process polls at the same points and
they agree: a request on any one stops them all at the same step.
"""

from __future__ import annotations

import signal
import threading
import types
from typing import Any, Callable

from dr_jax import distributed


# Python's own dispositions, the only ones replaced: SIGINT raises, SIGTERM ends the process.
_DEFAULTS = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}


class StopRequest:
  """Context manager: while active, SIGINT and SIGTERM (what a cluster sends before it kills a
  job) set a flag that `check()` turns into KeyboardInterrupt.

  Only Python's default handlers are replaced: a process that ignores SIGINT (a background job)
  keeps ignoring it, and handlers installed by an embedding program are left alone.
  """

  def __init__(self) -> None:
    self.requested = False
    self._previous: dict[int, Callable[[int, types.FrameType | None], Any] | int | None] = {}

  def _handle(self, signum: int, frame: types.FrameType | None) -> None:
    self.requested = True

  def __enter__(self) -> "StopRequest":
    if threading.current_thread() is threading.main_thread():
      for signum, default in _DEFAULTS.items():
        if signal.getsignal(signum) is default:
          self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    self._previous = {}

  def check(self) -> None:
    """Raises KeyboardInterrupt if a stop was requested, on any process, since the block began."""
    if distributed.any_process(self.requested):
      raise KeyboardInterrupt
