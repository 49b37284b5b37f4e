"""Failed-key limits: a valid key is never locked out, failures count per real client address and
per key id, and X-Forwarded-For names the client only when a configured proxy sent it."""

import secrets

import httpx
import pytest

from taskyard_api.auth import client_bucket, failure_buckets
from taskyard_api.ratelimit import FailureLimiter
from taskyard_api.settings import ApiSettings
from taskyard_ui.settings import UiSettings

pytestmark = pytest.mark.one_database(
    "sqlite", why="in-memory limiters and proxy-header handling in the api process"
)

# --- unit: buckets and the limiter ---------------------------------------------------------------


def guessed_key(key_id: str | None = None) -> str:
    """A well-formed key that does not exist: a real id with a guessed secret, or a random id."""
    return f"ty_{key_id or secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"


def id_of(key: str) -> str:
    return key.split("_")[1]


def test_failures_count_per_address_and_per_claimed_key_id():
    key = guessed_key("0123456789ab")
    assert failure_buckets("198.51.100.7", key) == ["addr:198.51.100.7", "id:0123456789ab"]
    assert failure_buckets("198.51.100.7", "not-a-taskyard-key") == ["addr:198.51.100.7"]
    # One IPv6 subscriber holds a /64: every address in it is one client.
    assert (
        client_bucket("2001:db8:1:2::1") == client_bucket("2001:db8:1:2:ffff::9") == "addr:2001:db8:1:2::/64"
    )
    assert client_bucket("::ffff:198.51.100.7") == "addr:198.51.100.7"
    assert len(client_bucket("x" * 10_000)) < 80  # whatever a proxy sends, the bucket name is bounded


def test_limiter_refuses_past_the_limit_and_forgets_after_the_window(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr("taskyard_api.ratelimit.time.monotonic", lambda: now[0])
    limiter = FailureLimiter(limit=3, window_s=60)
    assert [limiter.failed(["addr:a"]) for _ in range(4)] == [0, 0, 0, 60]
    assert limiter.failed(["addr:b"]) == 0  # another client is not affected
    now[0] += 59
    assert limiter.failed(["addr:a"]) == pytest.approx(1)
    now[0] += 1.5
    assert limiter.failed(["addr:a"]) == 0  # a new window


def test_random_key_ids_keep_memory_bounded_and_cannot_flush_the_attackers_bucket():
    limiter = FailureLimiter(limit=20, window_s=60, max_buckets=1000)
    waits = [limiter.failed(failure_buckets("198.51.100.7", guessed_key())) for _ in range(20_000)]
    assert len(limiter) <= 1000
    # The old limiter cleared everything at 100,000 clients, resetting the attacker's own count.
    assert waits[:20] == [0] * 20 and all(w > 0 for w in waits[20:])


def test_forwarded_allow_ips_is_empty_by_default_and_checked():
    assert ApiSettings().trusted_proxies == [] and UiSettings().trusted_proxies == []
    assert ApiSettings(forwarded_allow_ips="10.0.0.5, 10.244.0.0/16").trusted_proxies == [
        "10.0.0.5",
        "10.244.0.0/16",
    ]
    for settings in (ApiSettings, UiSettings):
        with pytest.raises(ValueError, match="forwarded_allow_ips: 'ui.local' is not an IP"):
            settings(forwarded_allow_ips="127.0.0.1,ui.local")


# --- stack: real api and ui processes -----------------------------------------------------------


def attempt(c: httpx.Client, key: str, forwarded_for: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {key}"}
    if forwarded_for:
        headers["X-Forwarded-For"] = forwarded_for
    return c.get("/api/v1/whoami", headers=headers).status_code


def test_a_valid_key_is_admitted_after_100_bad_keys_from_its_address(stack):
    stack.start_api()  # default limit: 20 failures per minute
    admin_id = id_of(stack.admin_key)
    with httpx.Client(base_url=stack.api.url, timeout=30) as c:
        # Random ids and the admin's own id with guessed secrets, all from 127.0.0.1.
        codes = [attempt(c, guessed_key(admin_id if i % 2 else None)) for i in range(100)]
        assert codes[:20] == [401] * 20 and set(codes[20:]) == {429}
        r = c.get("/api/v1/whoami", headers={"Authorization": f"Bearer {stack.admin_key}"})
        assert r.status_code == 200 and r.json()["role"] == "admin"
        assert attempt(c, guessed_key()) == 429  # the guesser is still refused


@pytest.mark.parametrize("trusted", ["", "10.9.8.7"], ids=["no-proxies", "other-proxy"])
def test_forged_forwarded_for_from_an_untrusted_peer_changes_nothing(stack, trusted):
    stack.start_api(TASKYARD_API_AUTH_FAILURES_LIMIT="5", TASKYARD_API_FORWARDED_ALLOW_IPS=trusted)
    with httpx.Client(base_url=stack.api.url, timeout=30) as c:
        codes = [attempt(c, guessed_key(), forwarded_for=f"198.51.100.{i}") for i in range(8)]
    assert codes == [401] * 5 + [429] * 3  # all counted as 127.0.0.1, the real peer


def test_a_trusted_proxy_names_the_client(stack):
    stack.start_api(TASKYARD_API_AUTH_FAILURES_LIMIT="5", TASKYARD_API_FORWARDED_ALLOW_IPS="127.0.0.1")
    admin_id = id_of(stack.admin_key)
    with httpx.Client(base_url=stack.api.url, timeout=30) as c:
        blocked = "198.51.100.1"
        assert [attempt(c, guessed_key(), blocked) for _ in range(6)] == [401] * 5 + [429]
        assert attempt(c, guessed_key(), "198.51.100.2") == 401  # another client behind the proxy
        assert attempt(c, guessed_key()) == 401  # the proxy's own requests: a client of their own
        # A client cannot step out of its bucket by sending its own X-Forwarded-For through the proxy:
        # the proxy appends the real address, and the rightmost untrusted one counts.
        assert attempt(c, guessed_key(), f"203.0.113.250, {blocked}") == 429
        # Many addresses guessing one real key's secret: counted on the key id.
        spread = [attempt(c, guessed_key(admin_id), f"203.0.113.{i}") for i in range(6)]
        assert spread == [401] * 5 + [429]
        # The owner of that key, even from the blocked address, is admitted.
        assert attempt(c, stack.admin_key, blocked) == 200


def test_ui_users_are_counted_per_address_and_sign_in_during_a_brute_force(stack):
    # The test plays the ingress in front of the UI; the UI is the API's trusted proxy.
    stack.start_api(TASKYARD_API_FORWARDED_ALLOW_IPS="127.0.0.1")
    ui = stack.start_ui(TASKYARD_UI_FORWARDED_ALLOW_IPS="127.0.0.1")
    attacker, user = "198.51.100.66", "203.0.113.5"

    def sign_in(c: httpx.Client, key: str, address: str) -> httpx.Response:
        return c.post("/login", data={"api_key": key, "next": "/"}, headers={"X-Forwarded-For": address})

    with httpx.Client(base_url=ui.url, timeout=30) as c:
        codes = [sign_in(c, guessed_key(), attacker).status_code for _ in range(30)]
        assert codes[:20] == [401] * 20 and set(codes[20:]) == {429}
        # And straight at the API from the UI's own address: a UI call that did not name its user
        # would now be refused with 429.
        with httpx.Client(base_url=stack.api.url, timeout=30) as direct:
            assert {attempt(direct, guessed_key()) for _ in range(25)} == {401, 429}
        # Someone else mistyping their key is told so, not rate limited with the attacker.
        typo = sign_in(c, guessed_key(), user)
        assert typo.status_code == 401 and "not accepted" in typo.text
        for address in (user, attacker):  # a valid key signs in, even from the attacker's address
            ok = sign_in(c, stack.admin_key, address)
            assert ok.status_code == 303 and ok.headers["location"] == "/", ok.text[:500]
            page = c.get("/", headers={"X-Forwarded-For": address})  # the cookie is in the jar
            assert page.status_code == 200, page.text[:500]
    # The streams (live views, log relay) pass the user's address on too: a stale key there is
    # "signed out", not rate limited with the attacker.
    with httpx.Client(base_url=ui.url, timeout=30, cookies={"taskyard_key": guessed_key()}) as c:
        logs = c.get("/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV/logs/stream", headers={"X-Forwarded-For": user})
        assert logs.status_code == 401, logs.text
        with c.stream("GET", "/live/dashboard", headers={"X-Forwarded-For": user}) as live:
            events = (line for line in live.iter_lines() if line.startswith("event:"))
            assert next(events) == "event: signed-out"
