"""Sortable job ids (ULID layout: 48-bit milliseconds + 80 random bits, Crockford base32).

Sorted ids are creation order, so cursor pagination is a plain `id < cursor`. Ids minted in the
same millisecond by one process stay ordered (monotonic ULID: the random part is incremented).
"""

import os
import re
import threading
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# What a job id looks like: anything else is a 404 without touching the database.
JOB_ID = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")
_lock = threading.Lock()
_last = (0, 0)


def new_id(now: float | None = None) -> str:
    global _last
    ms = int((time.time() if now is None else now) * 1000)
    with _lock:
        last_ms, last_rand = _last
        if ms <= last_ms:
            ms, rand = last_ms, (last_rand + 1) % (1 << 80)
        else:
            rand = int.from_bytes(os.urandom(10), "big") >> 1  # headroom for increments
        _last = (ms, rand)
    return _encode((ms << 80) | rand)


def first_id_at(at: float) -> str:
    """The smallest id minted at `at` (epoch s): every job created before then has a smaller one."""
    return _encode(int(at * 1000) << 80)


def _encode(value: int) -> str:
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))
