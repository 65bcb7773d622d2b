"""The one small protocol every provider adapter implements.

An adapter knows one provider's API: how to read a model's actual state (`observe`), how to write
configuration before training (`prepare`), and how to start a training (`train`). It knows nothing
about plans, state records or policies; it only reports facts in an `Observation`.

Adapters never import httpx: they receive an `HttpClient` (reconciler.providers.http) that owns
retries, rate limits, error classification and secret redaction.
"""

from __future__ import annotations

import asyncio
import builtins
import ipaddress
import os
import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote, urlsplit

from pydantic import BaseModel

from reconciler.domain import Observation, TrainResult
from reconciler.errors import ProviderError

if TYPE_CHECKING:
    from reconciler.domain import DesiredModel, ModelRecord, ProviderConfig
    from reconciler.providers.http import HttpClient
    from reconciler.state.base import StateStore


@dataclass
class ProviderContext:
    """What an adapter may use besides HTTP: the state store (uploads map) and its config."""

    config: ProviderConfig
    http: HttpClient
    state: StateStore | None = None


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


class ProviderAdapter(ABC):
    """Base class of the five adapters. Subclasses set the class attributes and implement
    `observe` and `train`; the defaults of the rest suit most providers."""

    type: ClassVar[str]
    key_env: ClassVar[str]
    default_base_url: ClassVar[str | None]
    model_schema: ClassVar[builtins.type[BaseModel]]
    training_schema: ClassVar[builtins.type[BaseModel]]
    max_concurrent_trainings: ClassVar[int] = 2
    requests_per_second: ClassVar[float] = 5.0
    max_concurrent_requests: ClassVar[int] = 16
    poll_interval: ClassVar[timedelta] = timedelta(seconds=60)
    min_poll_interval: ClassVar[timedelta] = timedelta(seconds=0)
    #: how long a training may run before `apply --wait` gives up on it
    training_timeout: ClassVar[timedelta] = timedelta(hours=12)
    #: True when `observe` can tell whether a train call reached the provider (marker changes or a
    #: training shows as running); False makes an unacknowledged intent a `hold`, never a guess
    observable_trigger: ClassVar[bool] = True
    #: how the key is sent (header or query parameter) and the retry schedule for reads
    auth: ClassVar[Auth]
    retry: ClassVar[RetryPolicy] = RetryPolicy()

    def __init__(self, ctx: ProviderContext) -> None:
        self.ctx = ctx
        self.http = ctx.http
        self.config = ctx.config

    # ---- validation hooks (offline)

    @classmethod
    def check_local(
        cls, model: BaseModel, training: BaseModel, manifest_dir: Path
    ) -> list[tuple[tuple[str, ...], str]]:
        """Checks needing local files (PhotoGPT image globs): (path under spec, message) pairs."""
        return []

    # ---- reading

    @abstractmethod
    async def observe(self, model: DesiredModel, record: ModelRecord | None) -> Observation:
        """Read the model's actual state at the provider (one request where possible)."""

    async def observe_many(
        self, models: Sequence[DesiredModel], records: dict[str, ModelRecord]
    ) -> dict[str, Observation | ProviderError]:
        """Observe several models; adapters with a list endpoint override this to read less."""

        async def one(m: DesiredModel) -> Observation | ProviderError:
            try:
                return await self.observe(m, records.get(m.name))
            except ProviderError as exc:
                return exc.for_model(m.name)

        results = await asyncio.gather(*(one(m) for m in models))
        return {m.name: r for m, r in zip(models, results, strict=True)}

    # ---- writing

    def train_group_key(self, model: DesiredModel) -> str:
        """Models with the same key are trained by one call (Rebase trains several sites at once)."""
        return model.name

    async def prepare(self, model: DesiredModel, observation: Observation) -> None:
        """Write the provider-side configuration the spec declares, before training."""

    @abstractmethod
    async def train(self, models: Sequence[DesiredModel]) -> dict[str, TrainResult]:
        """Start one training for `models` (one group); raise ProviderError when refused."""


def read_time(value: Any) -> datetime | None:
    """A provider's ISO 8601 timestamp as aware UTC, or None when absent or unreadable.

    Adapters read timestamps from answers they do not control: garbage is "unknown", never a crash.
    """
    if not isinstance(value, str) or not value:
        return None
    from reconciler.values import parse_timestamp

    try:
        return parse_timestamp(value)
    except ValueError:
        return None


def as_object(value: Any) -> dict[str, Any]:
    """`value` when the provider sent a JSON object there, else an empty one (for chained reads)."""
    return value if isinstance(value, dict) else {}


def path_segment(value: str | int) -> str:
    """Encode one URL path segment: `../`, `?`, `#`, `/` and spaces can never change the path."""
    segment = quote(str(value), safe="")
    if segment and segment.strip(".") == "":
        # `.` and `..` are left alone by quote() but removed as dot-segments by URL normalisation
        # (httpx does it), which would climb out of the path: send them as %2E instead
        return segment.replace(".", "%2E")
    return segment


def is_loopback(host: str) -> bool:
    if host in ("localhost",) or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_base_url(url: str, allow_insecure_http: bool = False) -> str | None:
    """A reason the base URL is unacceptable, or None. Plain http only to loopback or by opt-in."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"base_url {url!r} must be an absolute http(s) URL"
    if parts.scheme == "http" and not is_loopback(parts.hostname) and not allow_insecure_http:
        return (
            f"base_url {url!r} uses plain http to a non-local host, which would send the API key "
            "unencrypted; use https, or set allow_insecure_http: true on the Provider"
        )
    if parts.query or parts.fragment:
        return f"base_url {url!r} must not carry a query or fragment"
    return None
