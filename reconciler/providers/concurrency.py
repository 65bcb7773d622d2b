"""How many requests one provider client keeps in flight: Little's law, lowered by 429s (AIMD).

`ConcurrencyController` is the pure arithmetic, driven by an injected clock: the limit a provider's
`requests_per_second` needs at the latency it measures (in flight = rate x latency, Little's law),
never above `ceiling` (the provider's `max_concurrent_requests`). A 429 halves the limit
(multiplicative decrease, at most once per round trip: the answers to requests already in flight
are the same overload, not a new one), and each round trip of successes adds one back (additive
increase) until the Little's-law target is reached again.

`ConcurrencyGate` is the asyncio side: a semaphore whose size follows the controller.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable

#: weight of the newest latency sample in the moving average
LATENCY_WEIGHT = 0.2


class ConcurrencyController:
    """The limit on requests in flight for one provider (pure: time comes from `clock`)."""

    def __init__(
        self, *, ceiling: int, requests_per_second: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """`ceiling`: what the provider allows in flight; `requests_per_second` <= 0 means no rate limit."""
        self.ceiling = max(1, ceiling)
        self.rate = requests_per_second
        self._clock = clock
        #: moving average of the measured latency (seconds); None before the first answer
        self.latency: float | None = None
        #: until a latency is measured the rate alone cannot say: start at what the provider allows
        self.limit = self.ceiling
        #: set by a 429: additive increase only, up to the target, from here on
        self._backed_off = False
        self._credit = 0.0
        self._calm_after = -math.inf
        self.decreases = 0

    @property
    def target(self) -> int:
        """Little's law: the requests in flight that sustain `rate` at the measured latency."""
        if self.rate <= 0 or self.latency is None:
            return self.ceiling
        return max(1, min(self.ceiling, math.ceil(self.rate * self.latency)))

    def answered(self, latency: float) -> None:
        """A request was answered (not throttled) after `latency` seconds."""
        latency = max(0.0, latency)
        self.latency = latency if self.latency is None else self.latency + LATENCY_WEIGHT * (latency - self.latency)
        target = self.target
        if not self._backed_off or self.limit > target:
            self.limit = target
            return
        # additive increase: one more in flight per round trip of answers (a window of `limit`)
        self._credit += 1.0 / self.limit
        if self._credit >= 1.0:
            self._credit = 0.0
            self.limit = min(target, self.limit + 1)
        if self.limit >= target:
            self._backed_off = False

    def throttled(self, latency: float | None = None) -> bool:
        """The provider answered 429; returns whether the limit went down (once per round trip)."""
        now = self._clock()
        if now < self._calm_after:
            return False  # an answer to a request sent before the last decrease
        before = self.limit
        self.limit = max(1, self.limit // 2)
        self._backed_off = True
        self._credit = 0.0
        window = latency if latency is not None else (self.latency or 0.0)
        self._calm_after = now + window
        if self.limit < before:
            self.decreases += 1
            return True
        return False


class ConcurrencyGate:
    """An asyncio semaphore whose size is the controller's current limit."""

    def __init__(self, controller: ConcurrencyController) -> None:
        self.controller = controller
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> None:
        if self.in_flight < self.controller.limit and not self._waiters:
            self.in_flight += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # the slot was handed over as we were cancelled: pass it on
            else:
                self._waiters.remove(fut)
            raise

    def release(self) -> None:
        self.in_flight -= 1
        self.wake()

    def wake(self) -> None:
        """Hand free slots to waiters (after a release, or when the limit went up)."""
        while self._waiters and self.in_flight < self.controller.limit:
            fut = self._waiters.popleft()
            if not fut.done():
                self.in_flight += 1
                fut.set_result(None)
