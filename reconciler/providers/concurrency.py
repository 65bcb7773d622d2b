"""How many requests one provider client keeps in flight: Little's law, lowered by 429s (AIMD).

`ConcurrencyController` is the pure arithmetic, driven by an injected clock. `allowed(age)` is the
number of requests that may be in flight now: what the provider's `requests_per_second` needs at
the latency measured (in flight = rate x latency, Little's law), never above `ceiling` (the
provider's `max_concurrent_requests`) nor above the AIMD cap. The latency is the moving average of
answered requests, or the age of the oldest request still in flight when that is longer: a request
that hangs (a slow train call) raises the latency it stands for instead of holding every other
request behind it. A 429 halves the cap (multiplicative decrease, at most once per round trip:
the answers to requests already in flight are the same overload, not a new one), and each round
trip of answers adds one back (additive increase) up to the ceiling.

`ConcurrencyGate` is the asyncio side: a semaphore whose size follows `allowed`, which also paces
requests at the rate, so that one queue decides who goes next: the daemon's change lane (`URGENT`)
before a resync's thousands of reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import math
import time
from collections import deque
from collections.abc import Callable, Iterator

#: weight of the newest latency sample in the moving average
LATENCY_WEIGHT = 0.2
#: how often a waiter looks again whether the oldest request's age allows one more
RECHECK_SECONDS = 0.05
#: True in the daemon's change lane (saved edits, webhooks): its requests get the next free slot
#: before a resync's; tasks started from that lane inherit it (asyncio copies the context)
URGENT: contextvars.ContextVar[bool] = contextvars.ContextVar("reconciler_urgent_requests", default=False)


class ConcurrencyController:
    """The limit on requests in flight for one provider (pure: time comes from `clock`)."""

    def __init__(
        self, *, ceiling: int, requests_per_second: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """`ceiling`: what the provider allows in flight; `requests_per_second` <= 0 means no rate limit."""
        self.ceiling = max(1, ceiling)
        self.rate = requests_per_second
        self.clock = clock
        #: moving average of the measured latency (seconds); None before the first answer
        self.latency: float | None = None
        #: the AIMD cap: the ceiling until a 429, then halved and grown back one per round trip
        self.cap = self.ceiling
        self._credit = 0.0
        self._calm_after = -math.inf
        self.decreases = 0

    def target(self, oldest_age: float = 0.0) -> int:
        """Little's law: the requests in flight that sustain `rate` at the latency measured (or at
        the age of the oldest request in flight, when longer)."""
        if self.rate <= 0 or self.latency is None:
            return self.ceiling  # nothing measured yet: what the provider allows
        latency = max(self.latency, oldest_age)
        return max(1, min(self.ceiling, math.ceil(self.rate * latency)))

    def allowed(self, oldest_age: float = 0.0) -> int:
        """How many requests may be in flight now."""
        return min(self.cap, self.target(oldest_age))

    def answered(self, latency: float) -> None:
        """A request was answered (not throttled) after `latency` seconds."""
        latency = max(0.0, latency)
        self.latency = latency if self.latency is None else self.latency + LATENCY_WEIGHT * (latency - self.latency)
        if self.cap < self.ceiling:
            # additive increase: one more in flight per round trip of answers (a window of `cap`)
            self._credit += 1.0 / self.cap
            if self._credit >= 1.0:
                self._credit = 0.0
                self.cap += 1

    def throttled(self, latency: float | None = None) -> bool:
        """The provider answered 429; returns whether the cap went down (once per round trip)."""
        now = self.clock()
        if now < self._calm_after:
            return False  # an answer to a request sent before the last decrease
        before = min(self.cap, self.target())
        self.cap = max(1, before // 2)
        self._credit = 0.0
        window = latency if latency is not None else (self.latency or 0.0)
        self._calm_after = now + window
        if self.cap < before:
            self.decreases += 1
            return True
        return False


class ConcurrencyGate:
    """An asyncio semaphore whose size is the controller's `allowed` now, handing out slots no faster
    than the controller's rate, to the urgent waiters first (each kind first come, first served).

    Urgent requests are those of the daemon's change lane (a saved edit, a webhook: `URGENT`): a
    resync queues thousands of requests here, and a person's edit must not wait for all of them.
    Priority only changes who gets the next free slot, never how many are in flight or how fast
    they start, so the provider's limits hold whoever asks.
    """

    def __init__(self, controller: ConcurrencyController) -> None:
        self.controller = controller
        self._started: dict[int, float] = {}  # slot -> when it was taken (the controller's clock)
        self._ids = itertools.count()
        self._urgent: deque[asyncio.Future[int]] = deque()
        self._waiters: deque[asyncio.Future[int]] = deque()
        #: when the rate allows the next slot (the controller's clock)
        self._next_at = -math.inf
        self._timer: asyncio.TimerHandle | None = None

    @property
    def in_flight(self) -> int:
        return len(self._started)

    @property
    def waiting(self) -> int:
        return len(self._urgent) + len(self._waiters)

    def _room(self) -> bool:
        now = self.controller.clock()
        if now < self._next_at:
            return False  # the rate: too soon after the last slot
        oldest = now - min(self._started.values()) if self._started else 0.0
        return self.in_flight < self.controller.allowed(oldest)

    def _take(self) -> int:
        slot = next(self._ids)
        now = self.controller.clock()
        rate = self.controller.rate
        if rate > 0:
            self._next_at = max(now, self._next_at) + 1.0 / rate
        self._started[slot] = now
        return slot

    async def acquire(self, *, urgent: bool | None = None) -> int:
        """Wait for a slot; returns it, to be given back to `release`. `urgent` None: `URGENT`'s value."""
        if urgent is None:
            urgent = URGENT.get()
        if not self._urgent and (urgent or not self._waiters) and self._room():
            return self._take()
        queue = self._urgent if urgent else self._waiters
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        queue.append(fut)
        self._arm()
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(fut.result())  # the slot was handed over as we were cancelled: pass it on
            else:
                queue.remove(fut)
            raise

    def release(self, slot: int) -> None:
        self._started.pop(slot, None)
        self.wake()

    def wake(self) -> None:
        """Hand free slots to waiters, urgent ones first (after a release, or when the limit went up)."""
        while (self._urgent or self._waiters) and self._room():
            fut = (self._urgent or self._waiters).popleft()
            if not fut.done():
                fut.set_result(self._take())
        self._arm()

    def _arm(self) -> None:
        # one timer while anyone waits: the rate's next slot, or a request in flight long enough to
        # allow one more (Little's law)
        if (self._urgent or self._waiters) and self._timer is None:
            delay = self._next_at - self.controller.clock()
            delay = min(RECHECK_SECONDS, delay) if delay > 0 else RECHECK_SECONDS
            self._timer = asyncio.get_running_loop().call_later(delay, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self.wake()


@contextlib.contextmanager
def urgent_requests() -> Iterator[None]:
    """Requests made inside (and in tasks started inside) go before the others for a slot."""
    token = URGENT.set(True)
    try:
        yield
    finally:
        URGENT.reset(token)
