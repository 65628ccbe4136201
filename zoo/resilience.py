"""One retry policy for every Hub call the crawler makes: listing pages, ``model_info``, header
reads and file downloads.

A failure worth retrying (429, 408, 5xx, a dropped or timed-out connection) waits, then tries
again, for as long as the policy's patience lasts, not for a fixed count. Waits start at a floor
and double up to a cap, whatever the server says: a 429 with ``RateLimit: "api";r=0;t=0`` still
waits the floor, and a larger ``t`` or ``Retry-After`` is honoured. A 429 pauses every worker,
not only the one that was refused. A connection that cannot be made at all (refused, unknown
host) gets a few seconds, not minutes: a wrong endpoint is likelier than an outage. Everything
else is permanent.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

from huggingface_hub.errors import HfHubHTTPError
# httpx: the HTTP module huggingface_hub itself uses (httpx up to 1.x, httpx2 from 2.0), exported since 1.30
from huggingface_hub.utils import httpx, parse_ratelimit_headers

from zoo.errors import HubAccessError

T = TypeVar("T")
TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
TRANSIENT_TRANSPORT = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
CONNECT_FAILURES = (httpx.ConnectError, httpx.ConnectTimeout)  # the server was never reached


@dataclass(frozen=True)
class RetryPolicy:
    patience_s: float = 600.0  # how long one call keeps retrying (the Hub's rate-limit windows are 5 minutes)
    floor_s: float = 1.0  # the first wait, even when the server says t=0; it doubles on each retry
    max_backoff_s: float = 60.0
    connect_patience_s: float = 3.0  # for a server that cannot be reached at all

    def backoff(self, attempt: int) -> float:
        return min(self.floor_s * 2**attempt, self.max_backoff_s) * (1 + 0.1 * random.random())


def _chain(exc: BaseException | None):  # noqa: ANN202 - a generator of exceptions
    """``exc`` and its causes (``LocalEntryNotFoundError`` wraps the HTTP error as its cause)."""
    while exc is not None:
        yield exc
        exc = exc.__cause__


def is_connect_failure(exc: BaseException) -> bool:
    return any(isinstance(e, CONNECT_FAILURES) for e in _chain(exc))


def transient_wait(exc: BaseException, attempt: int, policy: RetryPolicy) -> tuple[float, bool, float] | None:
    """(seconds to wait, is a rate limit, patience for this kind of failure) when ``exc`` is worth
    retrying, else None."""
    backoff = policy.backoff(attempt)
    http = next((e for e in _chain(exc) if isinstance(e, HfHubHTTPError)), None)
    if http is not None and http.response is not None:
        status = http.response.status_code
        if status == 429:
            info = parse_ratelimit_headers(http.response.headers)
            retry_after = http.response.headers.get("Retry-After", "")
            told = float(info.reset_in_seconds) if info is not None else \
                float(retry_after) if retry_after.isdigit() else 0.0
            return max(told, backoff), True, policy.patience_s
        return (backoff, False, policy.patience_s) if status in TRANSIENT_STATUS else None
    if is_connect_failure(exc):
        return backoff, False, policy.connect_patience_s
    if any(isinstance(e, TRANSIENT_TRANSPORT) for e in _chain(exc)):
        return backoff, False, policy.patience_s
    return None


def checked_endpoint(url: str) -> str:
    """``url`` without a trailing slash, when it is an http(s) URL with a host; fails at once otherwise
    (the HTTP client would call a scheme-less URL a transport error and retry it)."""
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        parts = parts._replace(netloc="")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HubAccessError(f"Hub endpoint {url!r} (--endpoint or $HF_ENDPOINT) is not an http(s)://host URL")
    return url.rstrip("/")


class Throttle:
    """A pause shared by all workers, and an optional cap on requests per second."""

    def __init__(self, max_rps: float | None = None):
        self._lock = threading.Lock()
        self._paused_until = 0.0
        self._next_slot = 0.0
        self._interval = 1.0 / max_rps if max_rps else 0.0

    def pause(self, seconds: float) -> None:
        with self._lock:
            self._paused_until = max(self._paused_until, time.monotonic() + seconds)

    def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._paused_until, self._next_slot)
            self._next_slot = slot + self._interval
        if slot > now:
            time.sleep(slot - now)


def call_with_retry(fn: Callable[[], T], policy: RetryPolicy, throttle: Throttle,
                    on_retry: Callable[[BaseException, float], None] | None = None) -> T:
    """``fn()``, retried while its failures are transient and the policy's patience lasts; the
    last failure is raised."""
    start = time.monotonic()
    attempt = 0
    while True:
        throttle.wait()
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified just below
            verdict = transient_wait(exc, attempt, policy)
            if verdict is None:
                raise
            wait, rate_limited, patience = verdict
            left = start + patience - time.monotonic()
            if left <= 0:
                raise
            wait = min(wait, left)  # one last try when the patience runs out
            if rate_limited:
                throttle.pause(wait)
            if on_retry is not None:
                on_retry(exc, wait)
            if not rate_limited:
                time.sleep(wait)
            attempt += 1
