"""Tests of dr_jax.interrupts: Ctrl-C becomes a flag that the trainer checks at safe points."""

import os
import signal
import threading

import pytest

from dr_jax import interrupts


@pytest.fixture(autouse=True)
def python_ctrl_c():
  """Python's own SIGINT and SIGTERM dispositions (a test runner may have replaced them)."""
  previous = signal.signal(signal.SIGINT, signal.default_int_handler)
  previous_term = signal.signal(signal.SIGTERM, signal.SIG_DFL)
  yield
  signal.signal(signal.SIGINT, previous)
  signal.signal(signal.SIGTERM, previous_term)


def test_sigterm_is_a_stop_request_like_ctrl_c_and_its_default_comes_back():
  with interrupts.StopRequest() as stop:
    os.kill(os.getpid(), signal.SIGTERM)  # Without the handler this would end the test run.
    assert stop.requested
    with pytest.raises(KeyboardInterrupt):
      stop.check()
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_programs_own_sigterm_handler_is_left_alone():
  mine = lambda signum, frame: None
  signal.signal(signal.SIGTERM, mine)
  with interrupts.StopRequest():
    assert signal.getsignal(signal.SIGTERM) is mine
    assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
  assert signal.getsignal(signal.SIGTERM) is mine


def test_ctrl_c_is_held_until_check():
  ran = []
  with interrupts.StopRequest() as stop:
    os.kill(os.getpid(), signal.SIGINT)
    ran.append("the code after the signal ran")
    assert stop.requested
    with pytest.raises(KeyboardInterrupt):
      stop.check()
  assert ran == ["the code after the signal ran"]


def test_check_without_ctrl_c_does_nothing_and_the_handler_comes_back():
  with interrupts.StopRequest() as stop:
    stop.check()
  assert not stop.requested
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_ignored_sigint_stays_ignored():
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  with interrupts.StopRequest() as stop:
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
  assert not stop.requested
  assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_off_the_main_thread_nothing_is_installed():
  seen = []

  def body():
    with interrupts.StopRequest() as stop:
      seen.append(signal.getsignal(signal.SIGINT))
      stop.check()

  t = threading.Thread(target=body)
  t.start()
  t.join()
  assert seen == [signal.default_int_handler]
