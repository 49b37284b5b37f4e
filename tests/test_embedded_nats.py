"""The embedded nats-server (laptop stack, tests, bench) runs under a soft memory limit unless one is set."""

from pathlib import Path

import pytest

from taskyard_common.embedded import GO_ENV, EmbeddedNats

from .stack import free_port


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


@pytest.mark.parametrize("given", [None, "200MiB"])
def test_embedded_nats_gets_a_memory_limit_unless_one_is_set(tmp_path, monkeypatch, given):
    if given:
        monkeypatch.setenv("GOMEMLIMIT", given)
    else:
        monkeypatch.delenv("GOMEMLIMIT", raising=False)
    server = EmbeddedNats(tmp_path / "nats", free_port(), free_port()).start()
    try:
        assert _environ(server.process.pid)["GOMEMLIMIT"] == (given or GO_ENV["GOMEMLIMIT"])
    finally:
        server.stop()
