"""What a provider declares about its HTTP API: how it takes its key and how reads are retried."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field


def _backoff_scale() -> float:
    # Tests shrink real backoff sleeps; users never need to set this.
    try:
        return float(os.environ.get("RECONCILER_BACKOFF_SCALE", "1"))
    except ValueError:
        return 1.0


@dataclass
class RetryPolicy:
    """Capped, jittered exponential backoff: base * 2**n (+/- jitter), at most `cap` seconds."""

    attempts: int = 4  # first try + 3 retries (PredictHQ documents at most 3)
    base: float = 1.0
    cap: float = 30.0
    jitter: float = 0.5
    max_retry_after: float = 120.0

    def delay(self, retry_number: int, retry_after: float | None) -> float:
        scale = _backoff_scale()
        if retry_after is not None:
            return min(retry_after, self.max_retry_after) * scale
        d = min(self.cap, self.base * float(2 ** min(retry_number, 62)))
        # the cap bounds the jittered value too (no sleep is ever longer than `cap`), and at the cap
        # the jitter still spreads clients evenly over [cap - jitter, cap]
        return max(0.0, d + random.uniform(-self.jitter, min(self.jitter, self.cap - d))) * scale


@dataclass
class Auth:
    """How a provider takes its key: a header (with an optional prefix) or a query parameter."""

    header: str | None = None
    prefix: str = ""
    query_param: str | None = None
    extra_headers: dict[str, str] = field(default_factory=dict)
