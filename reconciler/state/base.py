"""What `reconciler` remembers between runs, behind one small interface.

The engine only ever talks to `StateStore`; `open_state(url)` picks the backend from the URL
(`sqlite:///...` or `postgresql://...`). Records are per model; history is append-only.
"""

from __future__ import annotations

import enum
import json
from abc import ABC, abstractmethod
from contextlib import AbstractAsyncContextManager
from datetime import date, datetime
from types import TracebackType
from typing import Any

from reconciler.domain import HistoryEvent, ModelRecord
from reconciler.errors import StateError
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


class StateStore(ABC):
    """Per-model records, an append-only history, uploaded-file maps and the writer lock."""

    url: str
    #: True when this run created the store (a fresh local file forgets every training).
    created: bool = False

    @abstractmethod
    async def get(self, name: str) -> ModelRecord | None: ...

    @abstractmethod
    async def all(self) -> dict[str, ModelRecord]: ...

    @abstractmethod
    async def save(self, record: ModelRecord, *events: HistoryEvent) -> None:
        """Write the record and append the events in one transaction."""

    @abstractmethod
    async def delete(self, name: str, *events: HistoryEvent) -> None:
        """Remove a model's record (history stays) and append the events, in one transaction."""

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
    def lock(self, holder: str, timeout: float) -> AbstractAsyncContextManager[None]:
        """Hold the single-writer lock; wait up to `timeout` seconds, then raise LockHeldError."""

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
