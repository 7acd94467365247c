"""Waiting for something to happen, the one way all the tests wait."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

import gevent

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 5.0, step: float = 0.05, *,
             message: str | Callable[[], object] | None = None) -> T:
    """Call `predicate` every `step` seconds until it returns something truthy, and return
    that value; after `timeout` seconds without one, fail the test (AssertionError) saying
    what was awaited: `message`, or what it returns when it is a callable (the state seen
    at the end), else the predicate's name or source line.

    The pause is gevent.sleep: in a process running gevent (the unit tests' transports, the
    in-process resolvers) the other greenlets run meanwhile; elsewhere it sleeps as
    time.sleep does."""
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() >= deadline:
            break
        gevent.sleep(step)
    got = predicate()  # once more at the deadline: what was awaited may have just happened
    if got:
        return got
    said = message() if callable(message) else message
    raise AssertionError(f"waited {timeout:g} s for {_describe(predicate)}, in vain (last: {got!r})"
                         + (f": {said}" if said is not None else ""))


def _describe(predicate: Callable) -> str:
    name = getattr(predicate, "__name__", repr(predicate))
    if name != "<lambda>":
        return name
    try:
        import inspect

        return inspect.getsource(predicate).strip()
    except (OSError, TypeError):
        return name
