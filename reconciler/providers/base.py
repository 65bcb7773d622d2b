"""The one small protocol every provider adapter implements.

An adapter knows one provider's API: how to read a model's actual state (`observe`), how to write
configuration before training (`prepare`), and how to start a training (`train`). It knows nothing
about plans, state records or policies; it only reports facts in an `Observation`.

Adapters never import httpx: they receive an `HttpClient` (reconciler.providers.http) that owns
retries, rate limits, error classification and secret redaction.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Generic
from urllib.parse import quote

from pydantic import BaseModel
from typing_extensions import TypeVar

from reconciler.domain import Observation, TrainResult
from reconciler.errors import BadResponseError, ProviderError
from reconciler.providers.policy import Auth, RetryPolicy
from reconciler.providers.provider_type import ProviderType
from reconciler.seams import Clock
from reconciler.values import utc_now

if TYPE_CHECKING:
    from reconciler.domain import DesiredModel, ModelRecord, ProviderConfig
    from reconciler.providers.http import HttpClient
    from reconciler.state.base import StateStore

#: the engine's logger: an adapter's unexpected exception is logged where the engine reports it
log = logging.getLogger("reconciler.engine")

M = TypeVar("M", bound=BaseModel, default=BaseModel)
T = TypeVar("T", bound=BaseModel, default=BaseModel)


@dataclass
class ProviderContext:
    """What an adapter may use besides HTTP: the state store (uploads map), its config and the clock."""

    config: ProviderConfig
    http: HttpClient
    state: StateStore | None = None
    #: the engine's clock: an adapter that compares with "now" uses this, never the wall clock
    clock: Clock = utc_now
    #: the operator's environment as the composition root read it (trusted, unlike manifests): an
    #: adapter reads its operator settings here, never from `os.environ`
    env: Mapping[str, str] = field(default_factory=dict)


class ProviderAdapter(ABC, Generic[M, T]):
    """Base class of the five adapters, generic over their type's `model` and `training` schemas.

    Subclasses name their type record (`provider_type`: schemas, defaults, limits) and how the key is
    sent, and implement `observe` and `train`; the defaults of the rest suit most providers.
    """

    provider_type: ClassVar[ProviderType[Any, Any]]
    #: how the key is sent (header or query parameter) and the retry schedule for reads
    auth: ClassVar[Auth]
    retry: ClassVar[RetryPolicy] = RetryPolicy()

    def __init__(self, ctx: ProviderContext) -> None:
        self.ctx = ctx
        self.http = ctx.http
        self.config = ctx.config

    # ---- reading

    @abstractmethod
    async def observe(self, model: DesiredModel[M, T], record: ModelRecord | None) -> Observation:
        """Read the model's actual state at the provider (one request where possible)."""

    async def observe_many(
        self, models: Sequence[DesiredModel[M, T]], records: dict[str, ModelRecord]
    ) -> dict[str, Observation | ProviderError]:
        """Observe several models; adapters with a list endpoint override this to read less."""

        async def one(m: DesiredModel[M, T]) -> Observation | ProviderError:
            try:
                return await self.observe(m, records.get(m.name))
            except ProviderError as exc:
                return exc.with_model(m.name)

        results = await asyncio.gather(*(one(m) for m in models))
        return {m.name: r for m, r in zip(models, results, strict=True)}

    # ---- writing

    def train_group_key(self, model: DesiredModel[M, T]) -> str:
        """Models with the same key are trained by one call (Rebase trains several sites at once)."""
        return model.name

    async def prepare(self, model: DesiredModel[M, T], observation: Observation) -> None:
        """Write the provider-side configuration the spec declares, before training."""

    @abstractmethod
    async def train(self, models: Sequence[DesiredModel[M, T]]) -> dict[str, TrainResult]:
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


def unexpected_error(provider: str, doing: str, exc: Exception, redact: Callable[[str], str] = str) -> BadResponseError:
    """An exception an adapter did not mean to raise, as a per-model error.

    It comes from an answer the adapter could not read (wrong types, missing fields) or from a
    bug: either way that provider's models are reported and the others go on. The traceback is
    logged at debug level (-vv) only, so a provider answering garbage never prints one. `redact`
    masks the key in the exception's text (it may quote the answer).
    """
    log.debug("%s: unexpected %s while %s", provider, type(exc).__name__, doing, exc_info=True)
    return BadResponseError(
        redact(f"unexpected answer while {doing} ({type(exc).__name__}: {exc}); run with -vv for the traceback"),
        provider=provider,
    )


def redacted(obs: Observation, redact: Callable[[str], str]) -> Observation:
    """`obs` with the key masked in the provider's words (a provider may echo it back): a copy
    where a text held it, else `obs` itself (no copy of 10,000 observations to mask nothing)."""
    texts: dict[str, Any] = {
        name: masked
        for name in ("message", "stale", "data_changed", "provider_state", "marker", "handle")
        if isinstance(value := getattr(obs, name), str) and (masked := redact(value)) != value
    }
    training = obs.observed_training
    if any(isinstance(v, str) and redact(v) != v for v in training.values()):
        texts["observed_training"] = {k: redact(v) if isinstance(v, str) else v for k, v in training.items()}
    return dataclasses.replace(obs, **texts) if texts else obs
