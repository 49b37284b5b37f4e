"""The event loop the services run on: uvloop where it is installed (Linux and macOS; a dependency
of taskyard-common there), asyncio's own elsewhere.

uvloop runs the same asyncio code on libuv with its scheduling, timers and socket transports in
C. Measured with everything else equal (docs/performance.md, change 40): an executor alone spent
0.082 -> 0.074 ms of CPU per noop job; the end-to-end run 0.47 -> 0.43 ms per job over every
service in one set of pairs, no difference in a second set on a loaded machine. The api, metrics and UI services run under uvicorn, whose `loop="auto"` picks uvloop when
it is importable; the executor runs its own loop through `run` below.
"""

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:  # Windows, or installed without it
        return asyncio.run(main)
    return uvloop.run(main)
