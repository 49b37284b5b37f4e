"""The client spreads requests over several api URLs and skips one it cannot reach."""

import asyncio

import httpx
import pytest

from taskyard import AsyncClient, Client
from taskyard._spread import AsyncSpread, Spread, parse_urls
from taskyard.errors import ConfigError

A, B = "http://127.0.0.1:1001", "http://127.0.0.1:1002"


def _answering(down: set[int], seen: list[str]):
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.url.port} {request.headers['Host']} {request.url.path}")
        if request.url.port in down:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json={"port": request.url.port})

    return handle


def test_requests_take_turns_over_the_urls():
    seen: list[str] = []
    transport = Spread(parse_urls(f"{A},{B}"), httpx.MockTransport(_answering(set(), seen)))
    with httpx.Client(base_url=A, transport=transport) as http:
        ports = [http.get("/api/v1/jobs").json()["port"] for _ in range(4)]
    assert ports == [1001, 1002, 1001, 1002]
    assert seen[1] == "1002 127.0.0.1:1002 /api/v1/jobs"  # the Host header follows the URL


def test_a_url_that_refuses_is_skipped_for_any_method():
    seen: list[str] = []
    transport = Spread(parse_urls(f"{A},{B}"), httpx.MockTransport(_answering({1001}, seen)))
    with httpx.Client(base_url=A, transport=transport) as http:
        ports = [http.post("/api/v1/jobs", json={}).json()["port"] for _ in range(3)]
    assert ports == [1002, 1002, 1002]


def test_when_every_url_refuses_the_error_reaches_the_caller():
    transport = Spread(parse_urls(f"{A},{B}"), httpx.MockTransport(_answering({1001, 1002}, [])))
    with httpx.Client(base_url=A, transport=transport) as http, pytest.raises(httpx.ConnectError):
        http.get("/healthz")


def test_a_failure_after_the_request_was_sent_is_not_retried_elsewhere():
    calls: list[int | None] = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.port)
        raise httpx.ReadError("reset", request=request)  # the POST may have been applied

    transport = Spread(parse_urls(f"{A},{B}"), httpx.MockTransport(handle))
    with httpx.Client(base_url=A, transport=transport) as http, pytest.raises(httpx.ReadError):
        http.post("/api/v1/jobs", json={})
    assert calls == [1001]


def test_the_async_transport_skips_the_same_way():
    seen: list[str] = []

    async def go() -> list[int]:
        inner = httpx.MockTransport(_answering({1002}, seen))
        async with httpx.AsyncClient(base_url=A, transport=AsyncSpread(parse_urls(f"{A},{B}"), inner)) as h:
            return [(await h.get("/x")).json()["port"] for _ in range(3)]

    assert asyncio.run(go()) == [1001, 1001, 1001]


@pytest.mark.parametrize(
    ("url", "why"),
    [
        (",", "empty"),
        ("http://a:1,localhost:8740", "must start with http"),
        ("http://a:1/x,http://b:1/y", "share one path"),
    ],
)
def test_bad_url_lists_are_refused_with_a_reason(url, why):
    with pytest.raises(ConfigError, match=why):
        parse_urls(url)


def test_the_clients_take_a_comma_separated_list():
    with Client(f"{A}, {B}/", api_key="k") as one:
        assert one.url == A and [str(u) for u in one.urls] == [A, B]
    assert isinstance(AsyncClient(f"{A},{B}", api_key="k")._http._transport, AsyncSpread)
