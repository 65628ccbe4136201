"""The retry policy on a fake clock: a floor and exponential growth even when the server says t=0,
larger waits honoured, retries for as long as the patience lasts, a short leash for a Hub that
cannot be reached, and a malformed endpoint refused before any request."""

from __future__ import annotations

import pytest
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import httpx

from zoo import resilience
from zoo.errors import HubAccessError
from zoo.resilience import RetryPolicy, Throttle, call_with_retry, checked_endpoint


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(resilience, "time", fake)
    return fake


def http_error(status: int, **headers: str) -> HfHubHTTPError:
    response = httpx.Response(status, headers=headers, request=httpx.Request("GET", "http://127.0.0.1:9/api/models"))
    return HfHubHTTPError(f"{status} error", response=response)


def failing(errors: list[BaseException], result: str = "ok"):  # noqa: ANN201
    """A call that raises each of ``errors`` in turn, then returns ``result``."""
    calls = []

    def fn() -> str:
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return result

    fn.calls = calls  # type: ignore[attr-defined]
    return fn


def test_rate_limit_with_t0_backs_off_from_a_floor_and_doubles(clock):
    """The issue's Hub double: six 429s saying ``t=0``. The old policy waited 0.0 s five times
    and gave up; this one waits 1, 2, 4, 8, 16, 32 s (plus jitter) and gets through."""
    fn = failing([http_error(429, RateLimit='"api";r=0;t=0')] * 6)
    assert call_with_retry(fn, RetryPolicy(), Throttle()) == "ok"
    assert len(fn.calls) == 7 and len(clock.sleeps) == 6
    for i, wait in enumerate(clock.sleeps):
        assert 2**i <= wait <= 2**i * 1.1


def test_larger_server_waits_are_honoured(clock):
    fn = failing([http_error(429, RateLimit='"api";r=0;t=7'), http_error(429, **{"Retry-After": "5"})])
    call_with_retry(fn, RetryPolicy(), Throttle())
    assert clock.sleeps[0] >= 7 and clock.sleeps[1] >= 5


def test_retries_last_as_long_as_the_patience_not_a_fixed_count(clock):
    burst = [http_error(503)] * 30  # thirty 5xx in a row: ~25 minutes at the capped backoff
    assert call_with_retry(failing(burst), RetryPolicy(patience_s=3600), Throttle()) == "ok"
    assert len(clock.sleeps) == 30 and max(clock.sleeps) <= 60 * 1.1

    clock.sleeps.clear()
    clock.now = 0.0
    with pytest.raises(HfHubHTTPError):
        call_with_retry(failing([http_error(502)] * 1000), RetryPolicy(patience_s=300), Throttle())
    assert clock.now == pytest.approx(300)  # gave up when the patience ran out, with a last try at its end


def test_permanent_errors_are_not_retried(clock):
    fn = failing([http_error(404)])
    with pytest.raises(HfHubHTTPError):
        call_with_retry(fn, RetryPolicy(), Throttle())
    assert len(fn.calls) == 1 and clock.sleeps == []


def test_an_unreachable_hub_gets_seconds_not_minutes(clock):
    refused = httpx.ConnectError("[Errno 111] Connection refused")
    with pytest.raises(httpx.ConnectError):
        call_with_retry(failing([refused] * 1000), RetryPolicy(), Throttle())
    assert 1 <= clock.now <= RetryPolicy().connect_patience_s
    dropped = httpx.ReadError("connection reset by peer")  # a Hub that answers, then drops: worth the full patience
    assert call_with_retry(failing([dropped] * 8), RetryPolicy(), Throttle()) == "ok"


@pytest.mark.parametrize("url", ["localhost:8000", "htp://example.org", "http://", "http://host:port", "/api"])
def test_malformed_endpoints_are_refused_at_once(url):
    with pytest.raises(HubAccessError, match="not an http"):
        checked_endpoint(url)
    assert checked_endpoint("http://127.0.0.1:8765/") == "http://127.0.0.1:8765"
