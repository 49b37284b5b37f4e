"""The embedded nats-server (laptop stack, tests, bench) runs under a soft memory limit and a high GOGC unless the environment sets them."""

from pathlib import Path

import pytest

from taskyard_common.embedded import GO_ENV, EmbeddedNats

from .stack import free_port


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


@pytest.mark.parametrize("given", [{}, {"GOMEMLIMIT": "200MiB"}, {"GOGC": "25"}])
def test_embedded_nats_gets_a_memory_limit_and_gogc_unless_set(tmp_path, monkeypatch, given):
    for name in GO_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in given.items():
        monkeypatch.setenv(name, value)
    server = EmbeddedNats(tmp_path / "nats", free_port(), free_port()).start()
    try:
        environ = _environ(server.process.pid)
        assert {name: environ[name] for name in GO_ENV} == GO_ENV | given
    finally:
        server.stop()
