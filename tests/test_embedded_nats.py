"""The embedded nats-server (laptop stack, tests, bench) collects garbage more often than Go's default."""

from pathlib import Path

import pytest

from taskyard_common.embedded import DEFAULT_GOGC, EmbeddedNats

from .stack import free_port


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


@pytest.mark.parametrize("given", [None, "200"])
def test_embedded_nats_gets_gogc_50_unless_one_is_set(tmp_path, monkeypatch, given):
    if given:
        monkeypatch.setenv("GOGC", given)
    else:
        monkeypatch.delenv("GOGC", raising=False)
    server = EmbeddedNats(tmp_path / "nats", free_port(), free_port()).start()
    try:
        assert _environ(server.process.pid)["GOGC"] == (given or DEFAULT_GOGC)
    finally:
        server.stop()
