"""Taskyard executor service.

Job handler API: ``from taskyard_executor import handler, JobContext, PermanentError, RetryLater``.
"""

from . import builtins as _builtins  # noqa: F401  (registers noop, sleep, shell, python, http)
from .context import JobContext
from .errors import JobError, PermanentError, RetryLater
from .registry import handler, registry

__all__ = ["JobContext", "JobError", "PermanentError", "RetryLater", "handler", "registry"]
