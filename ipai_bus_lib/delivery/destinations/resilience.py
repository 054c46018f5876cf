"""What wraps any destination: a rate limit (token bucket) and a circuit breaker."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from .base import DEFAULT_TIMEOUT_SECONDS


class TokenBucket:
    """At most ``rate`` deliveries a second on average, bursts up to ``burst``; thread-safe."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate, self.capacity, self.clock = rate, float(burst), clock
        self.tokens = float(burst)
        self.updated = clock()
        self.lock = threading.Lock()

    def wait_time(self) -> float:
        """Take a token if one is there (returns 0), else how long until one will be."""
        with self.lock:
            now = self.clock()
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            if self.tokens >= 1:
                self.tokens -= 1
                return 0.0
            return (1 - self.tokens) / self.rate

    def acquire(self) -> None:
        while (delay := self.wait_time()) > 0:
            time.sleep(delay)


class CircuitBreaker:
    """Pauses a destination that keeps failing, so its events wait instead of spending attempts.

    Closed: deliveries go through. After ``threshold`` retryable failures in a row it opens for
    ``cooldown`` seconds; then one trial delivery is let through (half-open). Whatever the trial
    meets ends it: an answer (even a refusal) closes the breaker, a failure opens it for another
    cooldown, a 429 keeps it open until the destination's Retry-After. A trial that reports
    nothing within ``trial_seconds`` (a delivery's whole budget) is given up, and the next
    delivery is the trial. ``on_change(state, open_until, error)`` is told of every transition.
    """

    def __init__(
        self,
        threshold: int = 5,
        cooldown: float = 30.0,
        on_change: Callable[[str, float | None, str | None], None] | None = None,
        clock: Callable[[], float] = time.time,
        trial_seconds: float = DEFAULT_TIMEOUT_SECONDS + 5,
    ) -> None:
        self.threshold, self.cooldown, self.clock = threshold, cooldown, clock
        self.trial_seconds = trial_seconds
        self.on_change = on_change or (lambda state, until, error: None)
        self.failures = 0
        self.open_until: float | None = None
        self.opened_at: float | None = None  # when it last opened: an older resume is spent
        self.trial_started: float | None = None
        self.lock = threading.Lock()

    @property
    def trial_running(self) -> bool:
        return self.trial_started is not None

    def paused_until(self) -> float | None:
        """None when a delivery may go now; else when to try again."""
        with self.lock:
            if self.open_until is None:
                return None
            now = self.clock()
            if now < self.open_until:
                return self.open_until
            if self.trial_started is not None and now < self.trial_started + self.trial_seconds:
                return self.trial_started + self.trial_seconds  # the trial's answer by then
            self.trial_started = now  # half-open: this caller makes the trial delivery
            return None

    def record_success(self) -> None:
        """The destination answered (accepted, or refused the event itself): it is up."""
        with self.lock:
            was_open = self.open_until is not None
            self.failures, self.open_until, self.trial_started = 0, None, None
        if was_open:
            self.on_change("closed", None, None)

    def record_failure(self, error: str) -> None:
        """A retryable failure (no answer, 5xx): counts towards opening, or reopens."""
        with self.lock:
            self.failures += 1
            self.trial_started = None
            if self.failures < self.threshold and self.open_until is None:
                return
            self.opened_at = self.clock()
            self.open_until = self.opened_at + self.cooldown
            until = self.open_until
        self.on_change("open", until, error)

    def record_throttled(self, retry_at: float | None) -> None:
        """A 429: the destination is up but asks for a pause. An open breaker stays open until
        its Retry-After (or a cooldown); a closed one is left alone (the event waits itself)."""
        with self.lock:
            self.trial_started = None
            if self.open_until is None:
                return
            self.opened_at = self.clock()
            self.open_until = retry_at if retry_at is not None else self.opened_at + self.cooldown
            until = self.open_until
        self.on_change("open", until, "throttled (HTTP 429)")

    def resume(self, requested_at: float) -> bool:
        """An operator asked at ``requested_at`` to try the destination now: if that was after
        the breaker last opened, the pause ends and the next delivery is the trial."""
        with self.lock:
            if self.open_until is None or self.opened_at is None or requested_at < self.opened_at:
                return False
            self.open_until, self.trial_started = min(self.open_until, self.clock()), None
            return True
