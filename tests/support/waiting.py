import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from shared.runtime.processes import free_port

__all__ = ["eventually", "free_port"]

T = TypeVar("T")


async def eventually(probe: Callable[[], Awaitable[T]], *, timeout: float = 20.0, interval: float = 0.05) -> T:
    """Poll `probe` until it returns a truthy value or the deadline passes; return that value."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {last!r})")
