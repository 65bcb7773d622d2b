"""What a provider declares about its HTTP API: how it takes its key and how reads are retried."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class RetryPolicy:
    """Capped, jittered exponential backoff: base * 2**n (+/- jitter), at most `cap` seconds.

    `HttpClient` retries with stamina and waits `delay` between attempts: stamina's own formula
    only adds jitter (0..j) and cannot spread clients evenly just below the cap.
    """

    attempts: int = 4  # first try + 3 retries (PredictHQ documents at most 3)
    base: float = 1.0
    cap: float = 30.0
    jitter: float = 0.5
    max_retry_after: float = 120.0

    def delay(self, retry_number: int, retry_after: float | None) -> float:
        """Seconds before retry `retry_number` (0-based); a `Retry-After` is honoured up to a ceiling."""
        if retry_after is not None:
            return min(retry_after, self.max_retry_after)
        d = min(self.cap, self.base * float(2 ** min(retry_number, 62)))
        # the cap bounds the jittered value too (no sleep is ever longer than `cap`), and at the cap
        # the jitter still spreads clients evenly over [cap - jitter, cap]
        return max(0.0, d + random.uniform(-self.jitter, min(self.jitter, self.cap - d)))


@dataclass
class Auth:
    """How a provider takes its key: a header (with an optional prefix) or a query parameter."""

    header: str | None = None
    prefix: str = ""
    query_param: str | None = None
    extra_headers: dict[str, str] = field(default_factory=dict)
