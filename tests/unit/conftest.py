"""The fast tier: pure logic only, no nats-server, no database, no process.

The stack fixtures (tests/conftest.py) are not used here; `task test:fast` does not even load
them (--confcutdir). An audit hook makes a unit test that opens a database or starts a process
fail at once, so a slow test cannot slip into this tier unnoticed.
"""

import sys

import pytest

# Audit events (docs.python.org/3/library/audit_events.html) that mean "not a unit test".
_FORBIDDEN = {"subprocess.Popen", "os.system", "os.posix_spawn", "os.fork", "os.exec", "sqlite3.connect"}
_running: list[str] = []  # node id of the unit test running now (empty between tests)


def _audit(event: str, _args: tuple) -> None:
    if _running and event in _FORBIDDEN:
        raise RuntimeError(
            f"{_running[-1]}: {event} in the fast tier; a test that needs it belongs in tests/"
        )


sys.addaudithook(_audit)  # cannot be removed: it checks only while a unit test runs


@pytest.fixture(autouse=True)
def _pure_only(request):
    _running.append(request.node.nodeid)
    yield
    _running.pop()
