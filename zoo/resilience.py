"""Retry rules for Hub calls the client does not retry itself (``model_info``, header reads...).

429s wait what the ``RateLimit`` header says (every worker pauses, not only the one that was
refused); 408/5xx and transport errors back off exponentially; everything else is permanent.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx2
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import parse_ratelimit_headers

T = TypeVar("T")
TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class RetryPolicy:
    max_tries: int = 6
    backoff_s: float = 1.0  # 1, 2, 4, 8... seconds
    max_backoff_s: float = 30.0
    max_rate_limit_wait_s: float = 300.0  # the Hub's windows are 5 minutes


def _http_error(exc: BaseException) -> HfHubHTTPError | None:
    """The HTTP error behind ``exc`` (``LocalEntryNotFoundError`` wraps it as its cause)."""
    while exc is not None:
        if isinstance(exc, HfHubHTTPError):
            return exc
        exc = exc.__cause__
    return None


def transient_wait(exc: BaseException, attempt: int, policy: RetryPolicy) -> tuple[float, bool] | None:
    """(seconds to wait, is a rate limit) when ``exc`` is worth retrying, else None."""
    backoff = min(policy.backoff_s * 2**attempt, policy.max_backoff_s) * (1 + 0.1 * random.random())
    http = _http_error(exc)
    if http is not None and http.response is not None:
        status = http.response.status_code
        if status == 429:
            info = parse_ratelimit_headers(http.response.headers)
            retry_after = http.response.headers.get("Retry-After", "")
            if info is not None:
                wait = float(info.reset_in_seconds)
            elif retry_after.isdigit():
                wait = float(retry_after)
            else:
                wait = backoff
            return min(wait, policy.max_rate_limit_wait_s), True
        return (backoff, False) if status in TRANSIENT_STATUS else None
    cause = exc
    while cause is not None:
        if isinstance(cause, httpx2.TransportError):
            return backoff, False
        cause = cause.__cause__
    return None


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
    for attempt in range(policy.max_tries):
        throttle.wait()
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified just below
            verdict = transient_wait(exc, attempt, policy)
            if verdict is None or attempt == policy.max_tries - 1:
                raise
            wait, rate_limited = verdict
            if rate_limited:
                throttle.pause(wait)
            if on_retry is not None:
                on_retry(exc, wait)
            if not rate_limited:
                time.sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover
