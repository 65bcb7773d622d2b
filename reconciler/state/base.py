"""What `reconciler` remembers between runs, behind one small interface.

The engine only ever talks to `StateStore`; `open_state(url)` picks the backend from the URL
(`sqlite:///...` or `postgresql://...`). Records are per model, each with a version that every
write bumps; history is append-only. Many writers share one state: the engine writes records
only by compare-and-set (`save_if`, `delete_if`), and daemons elect a leader with a `Lease`.
Notifications are claimed here too, once per (model, fingerprint, event) across all writers.
"""

from __future__ import annotations

import asyncio
import enum
import json
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import date, datetime
from types import TracebackType
from typing import Any, ClassVar

from reconciler.domain import HistoryEvent, ModelRecord
from reconciler.errors import LockHeldError, StateError
from reconciler.values import as_utc


def _json_default(value: Any) -> Any:
    # YAML loads unquoted dates as date/datetime; store them as ISO text rather than fail the write.
    if isinstance(value, datetime):
        return as_utc(value).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dump_json(value: Any, what: str) -> str:
    """`value` as JSON text for a state column; StateError (naming `what`) when it cannot be."""
    try:
        return json.dumps(value, default=_json_default, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise StateError(f"cannot store {what} in the state: {err}") from err


@dataclass(frozen=True)
class Start:
    """One training a writer started (its intent), as the spend guards count them."""

    provider: str  # the provider instance
    model: str
    writer: str  # "apply" or "daemon"
    at: datetime


#: a notification's `result` from its claim until its delivery ends (one cut off at exit keeps it)
PENDING = "pending"


@dataclass(frozen=True)
class NotificationRecord:
    """One claimed notification: its key (model, fingerprint, event), the body sent, how it went."""

    model: str
    fingerprint: str
    event: str
    body: dict[str, Any]
    result: str  # pending, sent, failed
    detail: str
    claimed_at: datetime
    finished_at: datetime | None


class Lease(ABC):
    """Leadership among the daemons sharing one state: held by at most one of them at a time.

    SQLite: an flock on `<db>.lock` (one machine). PostgreSQL: a session advisory lock on a
    connection of its own. Either is dropped when the holder dies, so a standby can take over.
    """

    holder: str

    @abstractmethod
    async def acquire(self) -> bool:
        """Try once, never waiting: True when this lease holds it (now or already)."""

    @abstractmethod
    async def check(self) -> bool:
        """Prove the lease is still held (the fence before every trigger); False once lost."""

    @abstractmethod
    async def held_by(self) -> str:
        """Who holds it, as the holder described itself (for messages)."""

    @abstractmethod
    async def release(self) -> None:
        """Give it up; safe to call when not held, or twice."""


class StateStore(ABC):
    """Per-model versioned records, an append-only history, uploaded-file maps and the leader lease."""

    url: str
    #: True when this run created the store (a fresh local file forgets every training).
    created: bool = False
    #: how often a waiting `lock()` tries the lease again (seconds)
    LOCK_POLL_INTERVAL: ClassVar[float] = 0.1

    @abstractmethod
    async def get(self, name: str) -> ModelRecord | None: ...

    @abstractmethod
    async def all(self) -> dict[str, ModelRecord]: ...

    async def get_many(self, names: Collection[str]) -> dict[str, ModelRecord]:
        """The records of these models (those that have one), without reading every record."""
        wanted = list(names)
        found = await asyncio.gather(*(self.get(name) for name in wanted))
        return {name: record for name, record in zip(wanted, found, strict=True) if record is not None}

    @abstractmethod
    async def names(self) -> set[str]:
        """Every recorded model's name, without reading the records (the daemon's orphans)."""

    @abstractmethod
    async def of_provider_models(self, identities: Collection[str]) -> dict[str, ModelRecord]:
        """The records of these provider models (`ModelRecord.provider_model`), and those older than
        the field (None): the rename candidates of a few models, without reading every record."""

    @abstractmethod
    async def save(self, record: ModelRecord, *events: HistoryEvent) -> None:
        """Write the record whatever is stored and append the events in one transaction (tools and
        tests; the engine writes only by compare-and-set). Sets `record.version` to the new one."""

    @abstractmethod
    async def save_if(self, record: ModelRecord, expected_version: int | None, *events: HistoryEvent) -> bool:
        """Compare-and-set: write the record (version + 1) and append the events in one transaction
        only when the stored version is `expected_version` (None or 0: only when there is no
        record). True and `record.version` set when written; False when another writer changed it
        first, and then nothing is written."""

    @abstractmethod
    async def save_intent(
        self,
        record: ModelRecord,
        expected_version: int | None,
        *events: HistoryEvent,
        writer: str,
        daily_limit: int | None = None,
    ) -> bool:
        """`save_if` for an intent, which also records a training start of `record.provider` at
        `record.triggered_at` (see `starts_since`), all in one transaction. With `daily_limit`, only
        when fewer starts of that provider are recorded in the 24 h before `triggered_at`, counted
        and inserted atomically across every writer. False: nothing written (the version changed,
        or the budget is spent)."""

    @abstractmethod
    async def starts_since(self, since: datetime) -> list[Start]:
        """The training starts recorded at or after `since`, oldest first (every writer's)."""

    @abstractmethod
    async def release_start(self, model: str, at: datetime) -> None:
        """Forget the start `save_intent` recorded for `model` at `at`: its train call provably
        started nothing (never sent, refused, 409/429), so it spends no budget."""

    @abstractmethod
    async def delete(self, name: str, *events: HistoryEvent) -> None:
        """Remove a model's record (history stays) and append the events, in one transaction."""

    @abstractmethod
    async def delete_if(self, name: str, expected_version: int, *events: HistoryEvent) -> bool:
        """Compare-and-set: remove the record and append the events only when the stored version is
        `expected_version`; False (nothing written) otherwise."""

    @abstractmethod
    async def move_if(self, old: str, expected_version: int, record: ModelRecord, *events: HistoryEvent) -> bool:
        """Compare-and-set rename (`reconciler rename`): in one transaction remove `old`'s record
        when its stored version is `expected_version`, write `record` under its own name only when
        that name has no record, move `old`'s uploaded-file map along and append the events.
        True and `record.version` set when written; False (nothing written) otherwise."""

    @abstractmethod
    async def append(self, *events: HistoryEvent) -> None: ...

    @abstractmethod
    async def history(self, name: str) -> list[HistoryEvent]: ...

    @abstractmethod
    async def uploads(self, provider: str, model: str) -> dict[str, str]:
        """Content hash -> provider's id of files already uploaded for a model."""

    @abstractmethod
    async def record_upload(self, provider: str, model: str, content_hash: str, remote_id: str) -> None: ...

    @abstractmethod
    async def claim_notification(self, model: str, fingerprint: str, event: str, body: dict[str, Any]) -> bool:
        """Compare-and-set: record a notification as `pending` only when none with this key was
        ever recorded. True: this writer claimed it and sends it; False: someone already did."""

    @abstractmethod
    async def notification_result(self, model: str, fingerprint: str, event: str, result: str, detail: str) -> None:
        """Record how the delivery of a claimed notification ended (`sent` or `failed`, and why)."""

    @abstractmethod
    async def notifications(self, model: str | None = None) -> list[NotificationRecord]:
        """The claimed notifications (of one model), oldest first."""

    @abstractmethod
    def lease(self, holder: str) -> Lease:
        """The leader lease of this state, described as `holder` to whoever waits for it."""

    @asynccontextmanager
    async def lock(self, holder: str, timeout: float) -> AsyncIterator[None]:
        """Hold the lease for the block; wait up to `timeout` seconds, then raise LockHeldError."""
        lease = self.lease(holder)
        start = time.monotonic()
        try:
            while not await lease.acquire():
                waited = time.monotonic() - start
                if waited >= timeout:
                    raise LockHeldError(await lease.held_by(), waited)
                await asyncio.sleep(min(self.LOCK_POLL_INTERVAL, timeout - waited))
            yield
        finally:
            await lease.release()

    @abstractmethod
    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise StateError when the store is unreachable (for /readyz)."""
        await self.all()

    async def __aenter__(self) -> StateStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
