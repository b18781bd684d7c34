"""Waiting on a condition instead of sleeping for a guessed time.

A test that needs something to have happened (a job done, a queue drained, a generation
cancelled) polls for it here. The deadline only bounds a hang, so that a bug fails the test
instead of stalling the suite; it is generous because the 2-core CI box is often loaded, and
no test asserts how long the wait took.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

HANG_GUARD_S = 120.0
POLL_S = 0.02


def wait_for(condition: Callable[[], T], what: str, timeout: float = HANG_GUARD_S) -> T:
    """The first truthy value of `condition()`; AssertionError naming `what` if none comes."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(POLL_S)
    return value
