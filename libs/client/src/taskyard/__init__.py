"""Taskyard Python SDK: `from taskyard import Client` (or AsyncClient). The CLI lives in taskyard.cli."""

from .client import FINAL_STATUSES, AsyncClient, Client
from .errors import ConfigError, JobFailed, TaskyardError

__all__ = ["FINAL_STATUSES", "AsyncClient", "Client", "ConfigError", "JobFailed", "TaskyardError"]
