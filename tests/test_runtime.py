"""gad.runtime: the process-wide set-up shared by the CLI, the demo and the benchmarks."""

from __future__ import annotations

import os
import signal
import time

import pytest

from gad.errors import GadError
from gad.runtime import environment, pick_threads, stop_on_sigterm


def test_threads_option():
    assert pick_threads("3") == 3
    assert 1 <= pick_threads("auto") <= (os.cpu_count() or 1)
    with pytest.raises(GadError, match="threads"):
        pick_threads("0")
    with pytest.raises(GadError, match="threads"):
        pick_threads("many")


def test_sigterm_unwinds_like_ctrl_c():
    previous = signal.getsignal(signal.SIGTERM)
    try:
        stop_on_sigterm()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises as soon as the signal is delivered
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_environment_records_versions_and_machine():
    env = environment()
    assert env["versions"]["gad"] and env["versions"]["torch"] and env["cpu_count"] >= 1
    assert env["python"].count(".") == 2
