"""Ctrl-C during training: a request to stop at the next safe point, not an exception anywhere.

Python raises KeyboardInterrupt wherever the main thread happens to be. Inside orbax's wait
for a save it logs a failed save with a traceback; inside library code that catches broadly it
can vanish. The trainer instead polls `StopRequest.check()` between jitted calls and after
each epoch's checkpoint.
"""

from __future__ import annotations

import signal
import threading
import types
from typing import Any, Callable


class StopRequest:
  """Context manager: while active, SIGINT sets a flag that `check()` turns into KeyboardInterrupt.

  Only Python's default handler is replaced: a process that ignores SIGINT (a background job)
  keeps ignoring it, and handlers installed by an embedding program are left alone.
  """

  def __init__(self) -> None:
    self.requested = False
    self._previous: Callable[[int, types.FrameType | None], Any] | int | None = None

  def _handle(self, signum: int, frame: types.FrameType | None) -> None:
    self.requested = True

  def __enter__(self) -> "StopRequest":
    if (threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
      self._previous = signal.signal(signal.SIGINT, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGINT, self._previous)
      self._previous = None

  def check(self) -> None:
    """Raises KeyboardInterrupt if Ctrl-C was pressed since the block began."""
    if self.requested:
      raise KeyboardInterrupt
