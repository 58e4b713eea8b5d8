"""The one way tests wait: for a condition, with a deadline (never a fixed sleep).

``await eventually(check)`` in async tests (``check`` may return an awaitable),
``eventually_sync(check)`` in plain ones; each returns the check's first truthy result.
Deadlines are generous: the machines are shared and noisy, and a deadline is a bound on a hang,
not a speed target (those live in bench/).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

POLL_SECONDS = 0.02


Describe = str | Callable[[], str]  # a callable is asked at the deadline: what is still wrong
T = TypeVar("T")


def _describe(what: Describe, check: object) -> str:
    text = what() if callable(what) else what
    return text or repr(check)


@overload
async def eventually(
    check: Callable[[], Awaitable[T | None]], within: float = ..., what: Describe = ...
) -> T: ...
@overload
async def eventually(
    check: Callable[[], T | None], within: float = ..., what: Describe = ...
) -> T: ...
async def eventually(
    check: Callable[[], object], within: float = 10.0, what: Describe = ""
) -> object:
    deadline = time.monotonic() + within
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"not met within {within} s: {_describe(what, check)}")
        await asyncio.sleep(POLL_SECONDS)


def eventually_sync(check: Callable[[], T | None], within: float = 10.0, what: Describe = "") -> T:
    deadline = time.monotonic() + within
    while not (result := check()):
        if time.monotonic() >= deadline:
            raise AssertionError(f"not met within {within} s: {_describe(what, check)}")
        time.sleep(POLL_SECONDS)
    return result
