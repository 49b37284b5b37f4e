"""The cyclic garbage collector of a service that has finished starting.

Two settings, each measured in the end-to-end bench (docs/performance.md, changes 18 and 37):

- `gc.freeze()`: what is loaded by now (modules, SQLAlchemy and FastAPI structures) lives as long
  as the process; frozen, full collections stop walking it again and again.
- A young collection every 10,000 allocations instead of CPython's 700: a job's path allocates
  thousands of short-lived objects (records, events, messages) that reference counting frees, so
  most young collections found nothing. In a 20,000-job run the api spent 0.55 s in 2,388
  collections, each executor 0.17 s in 1,220; with 10,000, 0.19 s in 74 and 0.02 s in 13, RSS
  within 3 MiB of before.
"""

import gc

YOUNG_THRESHOLD = 10_000


def settle_gc() -> None:
    """Call once, when the service is ready to serve."""
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
