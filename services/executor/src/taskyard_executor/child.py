"""A job's process, reaped with ``wait4`` so its resource usage is known.

asyncio's subprocesses are reaped by a child watcher with ``waitpid``, which drops the rusage;
``resource.getrusage(RUSAGE_CHILDREN)`` deltas would mix up jobs running side by side. So the
process is started with ``subprocess.Popen`` (as asyncio does), its pipes are read through the
loop, and its exit is awaited on a pidfd (Linux ≥ 5.3; a thread blocked in ``wait4`` elsewhere)
and reaped with ``os.wait4``, whose rusage covers the process and every descendant it waited for.
"""

from __future__ import annotations

import asyncio
import os
import resource
import subprocess
import threading
from collections.abc import Callable
from typing import Any

_LIMIT = 2**16


class Child:
    """The running process: ``pid``, ``stdout``/``stderr`` readers, ``returncode`` once reaped."""

    def __init__(
        self, popen: subprocess.Popen[bytes], stdout: asyncio.StreamReader, stderr: asyncio.StreamReader
    ):
        self.popen, self.pid, self.stdout, self.stderr = popen, popen.pid, stdout, stderr
        self.returncode: int | None = None
        self.rusage: resource.struct_rusage | None = None
        self._exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def wait(self) -> int:
        """The exit code (negative: killed by that signal), once the process is reaped."""
        return await asyncio.shield(self._exited)

    def _reaped(self, status: int, usage: resource.struct_rusage) -> None:
        self.returncode = self.popen.returncode = os.waitstatus_to_exitcode(status)
        self.rusage = usage
        if not self._exited.done():
            self._exited.set_result(self.returncode)


async def spawn(
    cmd: list[str] | str, *, shell: bool, on_exit: Callable[[resource.struct_rusage], None], **popen: Any
) -> Child:
    """Start `cmd` (stdin, stdout, stderr set by the caller in `popen`); `on_exit` gets its rusage."""
    loop = asyncio.get_running_loop()
    # Popen forks in the loop thread, as asyncio.create_subprocess_exec does itself.
    proc = subprocess.Popen(cmd, shell=shell, **popen)  # noqa: ASYNC220, S603
    readers = []
    for pipe in (proc.stdout, proc.stderr):
        reader = asyncio.StreamReader(limit=_LIMIT, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        await loop.connect_read_pipe(lambda p=protocol: p, pipe)  # type: ignore[misc]
        readers.append(reader)
    child = Child(proc, *readers)

    def reaped(status: int, usage: resource.struct_rusage) -> None:
        child._reaped(status, usage)
        on_exit(usage)

    _watch(loop, proc.pid, reaped)
    return child


# Reaped by someone else (a process-wide waitpid(-1) in the host program): the exit status and the
# usage are gone; report an unknown failure (255) and no usage rather than wait for ever.
_LOST = (255 << 8, resource.struct_rusage((0.0, 0.0, *(0,) * 14)))


def _wait4(pid: int) -> tuple[int, resource.struct_rusage]:
    try:
        _, status, usage = os.wait4(pid, 0)
    except ChildProcessError:
        return _LOST
    return status, usage


def _watch(
    loop: asyncio.AbstractEventLoop, pid: int, done: Callable[[int, resource.struct_rusage], None]
) -> None:
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        fd = -1
    if fd >= 0:

        def ready() -> None:
            loop.remove_reader(fd)
            os.close(fd)
            done(*_wait4(pid))  # it exited: returns at once

        loop.add_reader(fd, ready)
        return

    def block() -> None:
        loop.call_soon_threadsafe(done, *_wait4(pid))

    threading.Thread(target=block, name=f"wait4-{pid}", daemon=True).start()
