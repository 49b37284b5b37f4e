"""Typed job failures: the one place that decides "retry" versus "give up".

Handlers raise these (or anything else, which :func:`as_job_error` classifies); the runner only
looks at ``retryable`` and ``defer_s`` and stores :meth:`JobError.to_dict` as the job's ``error``.
"""

from __future__ import annotations

import traceback as _tb
from typing import Any

# The job's stored error is a JSON document; an unbounded traceback would bloat every event.
_MAX_TRACEBACK_CHARS = 8000


class JobError(Exception):
    """A job attempt failed.

    ``retryable`` tells the runner whether another attempt may succeed (it still respects
    ``max_attempts``); ``exit_code`` is set for process failures; ``details`` is extra JSON-safe
    context shown to the user.
    """

    def __init__(
        self,
        message: str,
        *,
        exit_code: int | None = None,
        retryable: bool = True,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.retryable = retryable
        self.details: dict[str, Any] = dict(details or {})
        self.traceback: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored as the job's ``error`` (optional keys only when set)."""
        out: dict[str, Any] = {
            "type": type(self).__name__,
            "message": self.message,
            "retryable": self.retryable,
        }
        if self.exit_code is not None:
            out["exit_code"] = self.exit_code
        if self.traceback:
            out["traceback"] = self.traceback
        if self.details:
            out["details"] = self.details
        return out

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only constructors break the default Exception pickling (cls(*args)), and these
        # errors cross the process-pool boundary, so rebuild from the instance state instead.
        return (_restore, (type(self), self.args, self.__dict__.copy()))


def _restore(cls: type[JobError], args: tuple[Any, ...], state: dict[str, Any]) -> JobError:
    err = cls.__new__(cls)
    Exception.__init__(err, *args)
    err.__dict__.update(state)
    return err


class PermanentError(JobError):
    """Do not retry: another attempt would fail the same way."""

    def __init__(
        self, message: str, *, exit_code: int | None = None, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message, exit_code=exit_code, retryable=False, details=details)


class RetryLater(JobError):
    """Retry after ``defer_s`` seconds, overriding the job's backoff for this attempt."""

    def __init__(self, message: str, *, defer_s: float, details: dict[str, Any] | None = None) -> None:
        if not defer_s >= 0:
            raise ValueError(f"defer_s must be >= 0, got {defer_s!r}")
        super().__init__(message, retryable=True, details=details)
        self.defer_s = float(defer_s)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "defer_s": self.defer_s}


class ProcessFailed(JobError):
    """A subprocess exited non-zero (or was killed by a signal: negative ``exit_code``); retryable."""


class HTTPStatusError(JobError):
    """An HTTP response had an unexpected status; retryable (used for 5xx, 408 and 429)."""

    def __init__(self, message: str, *, status: int, details: dict[str, Any] | None = None) -> None:
        super().__init__(message, details={"status": status, **(details or {})})
        self.status = status


class HTTPClientError(HTTPStatusError, PermanentError):
    """An unexpected status that a retry will not fix (most 4xx, unexpected 2xx/3xx)."""


class ResultTooLarge(PermanentError):
    """The handler's result exceeds what may be stored; the same input would produce it again."""


class InvalidPayload(PermanentError):
    """The payload does not match what the job type expects (the message names the field)."""


class UnknownJobType(PermanentError):
    """No handler is registered under the job's type on this executor."""


def as_job_error(exc: BaseException) -> JobError:
    """Classify any exception raised by a handler as a :class:`JobError`.

    JobErrors pass through unchanged (they were raised on purpose, their message is the point);
    anything else becomes a retryable JobError named after the original type, with its traceback,
    because an unexpected crash may be transient and ``max_attempts`` bounds the cost of being wrong.
    """
    if isinstance(exc, JobError):
        return exc
    name = type(exc).__qualname__
    text = str(exc)
    err = JobError(f"{name}: {text}" if text else name, details={"exception": name})
    # Keep the tail: the innermost frames are the ones that explain the failure.
    err.traceback = "".join(_tb.format_exception(exc))[-_MAX_TRACEBACK_CHARS:]
    return err
