"""Several api processes behind one client: `url` may name them all ("http://a:8740,http://b:8740").

Requests go round-robin over the URLs. A URL that cannot be reached (refused, unknown host,
connect timeout) is skipped for that request and the next one is tried, whatever the method: the
request never reached that process, so nothing can happen twice. Any later failure (a reset
after the request was sent) is the caller's, as with one URL, because a POST may have been
applied. A Service or load balancer in front of the replicas (compose, Kubernetes) does the same
job with one URL.
"""

import itertools

import httpx

from .errors import ConfigError


def parse_urls(url: str) -> list[httpx.URL]:
    """The URLs of a comma-separated list; they may differ only in scheme, host and port (the
    client's base path is the first one's)."""
    urls = [httpx.URL(part.strip().rstrip("/")) for part in url.split(",") if part.strip()]
    if not urls:
        raise ConfigError("API URL is empty")
    for u in urls:
        if u.scheme not in ("http", "https") or not u.host:
            raise ConfigError(f"API URL must start with http:// or https:// and name a host, got {str(u)!r}")
        if u.path != urls[0].path:
            raise ConfigError(f"API URLs must share one path: {urls[0].path!r} and {u.path!r}")
    return urls


def _aimed(request: httpx.Request, at: httpx.URL) -> None:
    request.url = request.url.copy_with(scheme=at.scheme, host=at.host, port=at.port)
    request.headers["Host"] = at.netloc.decode("ascii")


class _Turns:
    def __init__(self, urls: list[httpx.URL]) -> None:
        self.urls = urls
        self._turn = itertools.count()

    def _order(self) -> list[httpx.URL]:
        """This request's URLs: the next in turn first, then the others."""
        first = next(self._turn) % len(self.urls)
        return self.urls[first:] + self.urls[:first]


class Spread(_Turns, httpx.BaseTransport):
    def __init__(self, urls: list[httpx.URL], inner: httpx.BaseTransport | None = None) -> None:
        super().__init__(urls)
        self.inner = inner or httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for i, url in enumerate(self._order()):
            _aimed(request, url)
            try:
                return self.inner.handle_request(request)
            except (httpx.ConnectError, httpx.ConnectTimeout):
                if i == len(self.urls) - 1:
                    raise
        raise AssertionError("unreachable")  # the loop returns or raises

    def close(self) -> None:
        self.inner.close()


class AsyncSpread(_Turns, httpx.AsyncBaseTransport):
    def __init__(self, urls: list[httpx.URL], inner: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__(urls)
        self.inner = inner or httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        for i, url in enumerate(self._order()):
            _aimed(request, url)
            try:
                return await self.inner.handle_async_request(request)
            except (httpx.ConnectError, httpx.ConnectTimeout):
                if i == len(self.urls) - 1:
                    raise
        raise AssertionError("unreachable")  # the loop returns or raises

    async def aclose(self) -> None:
        await self.inner.aclose()
