"""Handler registry: job type name -> function, and how to call it.

Users register plain functions, Celery ``-A`` style::

    from taskyard_executor import handler

    @handler()                      # job type "resize", runs in a thread (gets ctx.sync())
    def resize(payload, ctx): ...

    @handler("report.build")        # async: awaited on the runner's loop (gets the JobContext)
    async def build(payload, ctx): ...

    @handler(blocking="process")    # CPU-bound: a process pool, payload only
    def crunch(payload): ...

and start the executor with the module path (``myapp.jobs`` or ``myapp.jobs:registry``).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import multiprocessing
import re
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Literal, overload

from .context import JobContext
from .errors import JobError, UnknownJobType
from .meter import Metered, in_thread, pool_call

Blocking = Literal["thread", "process"]
Mode = Literal["async", "thread", "process"]

# Same rule the API applies to job types, so anything registered here is submittable.
_NAME_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


@dataclass(frozen=True)
class HandlerEntry:
    """A registered handler: ``mode`` says where it runs, ``takes_ctx`` whether it gets a context."""

    name: str
    fn: Callable[..., Any]
    mode: Mode
    takes_ctx: bool


def _arity(fn: Callable[..., Any]) -> tuple[int, float]:
    """(required, maximum) positional arguments of ``fn``; rejects shapes that cannot be called."""
    params = list(inspect.signature(fn).parameters.values())
    if any(p.kind is p.KEYWORD_ONLY and p.default is p.empty for p in params):
        raise TypeError(f"handler {_ident(fn)} has required keyword-only parameters")
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = sum(p.default is p.empty for p in positional)
    most = float("inf") if any(p.kind is p.VAR_POSITIONAL for p in params) else len(positional)
    if most < 1 or required > 2:
        raise TypeError(f"handler {_ident(fn)} must be callable as fn(payload) or fn(payload, ctx)")
    return required, most


class Registry:
    """A set of named handlers. Most code uses the module-level :data:`registry`."""

    def __init__(self) -> None:
        self._entries: dict[str, HandlerEntry] = {}
        self._lock = threading.Lock()

    def register(
        self, fn: Callable[..., Any], name: str | None = None, *, blocking: Blocking = "thread"
    ) -> HandlerEntry:
        """Register ``fn`` under ``name`` (default: ``fn.__name__``) and return its entry."""
        if name is None:
            name = getattr(fn, "__name__", None)
            if not isinstance(name, str):
                raise TypeError(f"cannot infer a handler name from {fn!r}; pass name=")
        if not _NAME_RE.fullmatch(name):
            raise ValueError(f"invalid handler name {name!r}: must match [A-Za-z0-9_.:-]{{1,128}}")
        if blocking not in ("thread", "process"):
            raise ValueError(f"blocking must be 'thread' or 'process', got {blocking!r}")
        required, most = _arity(fn)
        # Decided once here, so a call never guesses: two or more positional slots get the ctx.
        takes_ctx = most >= 2
        if _is_async(fn):
            if blocking == "process":
                raise TypeError(f"handler {name!r}: async functions cannot run in a process pool")
            mode: Mode = "async"
        elif blocking == "process":
            if required > 1:
                raise TypeError(f"handler {name!r}: process handlers get the payload only, not ctx")
            if "<locals>" in fn.__qualname__ or "<lambda>" in fn.__qualname__:
                # The pool pickles the function by module + qualname; the child must import it.
                raise TypeError(f"handler {name!r}: process handlers must be module-level functions")
            mode, takes_ctx = "process", False
        else:
            mode = "thread"
        entry = HandlerEntry(name=name, fn=fn, mode=mode, takes_ctx=takes_ctx)
        self._add(entry)
        return entry

    def _add(self, entry: HandlerEntry) -> None:
        with self._lock:
            old = self._entries.get(entry.name)
            if old is not None and old.fn is not entry.fn and _ident(old.fn) != _ident(entry.fn):
                raise ValueError(
                    f"handler name {entry.name!r} is already registered by {_ident(old.fn)}; "
                    f"pass a distinct name= to {_ident(entry.fn)}"
                )
            # Same function (or the same module.qualname re-imported): the newest definition wins.
            self._entries[entry.name] = entry

    @overload
    def handler(self, name: Callable[..., Any], *, blocking: Blocking = "thread") -> Callable[..., Any]: ...
    @overload
    def handler(
        self, name: str | None = None, *, blocking: Blocking = "thread"
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]: ...

    def handler(self, name: Any = None, *, blocking: Blocking = "thread") -> Any:
        """Decorator registering a handler; usable as ``@handler``, ``@handler()`` or ``@handler("x")``.

        The function is returned unchanged, so it stays directly callable and picklable.
        """
        if callable(name):
            self.register(name, blocking=blocking)
            return name

        def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.register(fn, name, blocking=blocking)
            return fn

        return decorate

    def get(self, name: str) -> HandlerEntry:
        """The entry for job type ``name``; raises :class:`UnknownJobType` (permanent) if absent."""
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownJobType(
                f"no handler for job type {name!r} on this executor", details={"known": self.names()}
            ) from None

    def names(self) -> list[str]:
        """Registered job type names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def load(self, import_path: str) -> list[str]:
        """Import ``module`` or ``module:attr`` so its decorators run; return the newly added names.

        ``module:attr`` must name a :class:`Registry`; its handlers are merged into this one. A plain
        ``module`` that defines its own ``registry`` attribute is merged the same way.
        """
        module_name, _, attr = import_path.partition(":")
        if not module_name:
            raise ValueError(f"invalid import path {import_path!r}: expected 'module' or 'module:attr'")
        before = set(self._entries)
        module = importlib.import_module(module_name)
        if attr:
            other = getattr(module, attr, None)
            if not isinstance(other, Registry):
                raise TypeError(f"{import_path!r} is not a taskyard_executor Registry")
        else:
            other = getattr(module, "registry", None)
            other = other if isinstance(other, Registry) else None
        if other is not None and other is not self:
            for entry in list(other._entries.values()):
                self._add(entry)
        return sorted(set(self._entries) - before)

    async def run(self, ctx: JobContext) -> Any:
        """Look up ``ctx.job.type`` and :func:`invoke` it."""
        return await invoke(self.get(ctx.job.type), ctx)


def _is_async(fn: Callable[..., Any]) -> bool:
    # Also catches objects with an `async def __call__`, which iscoroutinefunction misses on 3.11.
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)


def _ident(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


_pool: ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()


def _get_pool() -> ProcessPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            # spawn, not fork: forking a process that runs an event loop and threads can copy held
            # locks into the child and deadlock it.
            _pool = ProcessPoolExecutor(mp_context=multiprocessing.get_context("spawn"))
        return _pool


def shutdown_process_pool(*, wait: bool = True, cancel_futures: bool = True) -> None:
    """Stop the process pool (the runner calls this on shutdown); it restarts lazily if used again."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=wait, cancel_futures=cancel_futures)


async def invoke(entry: HandlerEntry, ctx: JobContext) -> Any:
    """Run ``entry`` for ``ctx``'s job where it belongs and return its result.

    async handlers are awaited here; sync ones run via ``asyncio.to_thread`` with ``ctx.sync()``;
    process ones run in the process pool with the payload only. What the attempt used is added to
    ``ctx.meter`` (meter.py says how, per mode). Cancelling the awaiting task sets
    ``ctx.cancelled`` so thread handlers notice; a thread or pool worker cannot be stopped by force
    and finishes in the background, its result discarded.
    """
    payload = ctx.payload
    meter = ctx.meter
    try:
        if entry.mode == "async":
            coro = entry.fn(*((payload, ctx) if entry.takes_ctx else (payload,)))
            return await Metered(coro, lambda spent: meter.own(spent, "loop"))
        if entry.mode == "thread":
            args = (payload, ctx.sync()) if entry.takes_ctx else (payload,)
            return await asyncio.to_thread(in_thread, meter, entry.fn, *args)
        ok, value, spent, rss = await asyncio.get_running_loop().run_in_executor(
            _get_pool(), pool_call, entry.fn, payload
        )
        meter.own(spent, "pool", rss)
        if not ok:
            raise value
        return value
    except BrokenProcessPool as exc:
        # A worker died (crash, OOM kill); a broken pool fails every later call, so start afresh.
        shutdown_process_pool(wait=False)
        raise JobError(f"process pool worker died running {entry.name!r}: {exc}") from exc
    except asyncio.CancelledError:
        # Threads cannot be interrupted; the flag is what makes ctx.sync() calls raise there.
        ctx.cancelled.set()
        raise
    finally:
        meter.stop()


registry = Registry()
"""The default registry: built-ins plus everything registered with :func:`handler`."""

handler = registry.handler
