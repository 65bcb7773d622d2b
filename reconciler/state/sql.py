"""What the SQLite and PostgreSQL stores share: row mapping and the simple queries.

A subclass names its dialect (`TABLE_PREFIX`, `PARAM`, how times and JSON come back) and
implements the transactional parts (`_fetchall`, `_write`, the lock).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from datetime import datetime
from typing import Any, ClassVar

from reconciler.domain import HistoryEvent, ModelRecord, RecordStatus
from reconciler.errors import StateError
from reconciler.state.base import StateStore, dump_json
from reconciler.values import as_utc, utc_now

MODEL_COLUMNS = (
    "name, provider, fingerprint, training, status, handle, attempts, next_attempt_at,"
    " triggered_at, finished_at, marker, data_marker, reasons"
)


def record_status(value: str, name: str) -> RecordStatus:
    try:
        return RecordStatus(value)
    except ValueError:
        raise StateError(
            f"model {name!r} has status {value!r} in the state, unknown to this version; upgrade reconciler"
        ) from None


class SQLStateStore(StateStore):
    """Row mapping and the read/write entry points, over a dialect given by the subclass."""

    TABLE_PREFIX: ClassVar[str] = ""
    PARAM: ClassVar[str] = "?"

    # -- the dialect -----------------------------------------------------------------------

    @staticmethod
    @abstractmethod
    def _time_in(value: datetime) -> Any:
        """A UTC datetime as the database stores it."""

    @staticmethod
    @abstractmethod
    def _time_out(value: Any) -> datetime:
        """A stored time back as an aware UTC datetime."""

    @staticmethod
    @abstractmethod
    def _json_out(value: Any) -> Any:
        """A stored JSON column back as Python data."""

    @abstractmethod
    async def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> Sequence[Any]:
        """Rows (sqlite3.Row or dict) read by column name."""

    @abstractmethod
    async def _write(
        self, events: tuple[HistoryEvent, ...], record: ModelRecord | None = None, delete: str | None = None
    ) -> None:
        """Delete and/or upsert a record and append events, in one transaction."""

    # -- rows ------------------------------------------------------------------------------

    def _table(self, name: str) -> str:
        return self.TABLE_PREFIX + name

    def _opt_time_in(self, value: datetime | None) -> Any:
        return None if value is None else self._time_in(as_utc(value))

    def _opt_time_out(self, value: Any) -> datetime | None:
        return None if value is None else self._time_out(value)

    def _record_row(self, record: ModelRecord) -> tuple[Any, ...]:
        what = f"the record of model {record.name!r}"
        return (
            record.name,
            record.provider,
            record.fingerprint,
            dump_json(record.training, what),
            RecordStatus(record.status).value,
            record.handle,
            record.attempts,
            self._opt_time_in(record.next_attempt_at),
            self._opt_time_in(record.triggered_at),
            self._opt_time_in(record.finished_at),
            record.marker,
            dump_json(record.data_marker, what),
            dump_json(list(record.reasons), what),
        )

    def _event_row(self, ev: HistoryEvent) -> tuple[Any, ...]:
        return (
            ev.model,
            ev.event,
            ev.reason,
            ev.fingerprint,
            dump_json(ev.detail, f"a {ev.event!r} event of model {ev.model!r}"),
            ev.git_commit,
            self._time_in(as_utc(ev.at or utc_now())),
        )

    def _record(self, row: Any) -> ModelRecord:
        return ModelRecord(
            name=row["name"],
            provider=row["provider"],
            fingerprint=row["fingerprint"],
            training=self._json_out(row["training"]),
            status=record_status(row["status"], row["name"]),
            handle=row["handle"],
            attempts=row["attempts"],
            next_attempt_at=self._opt_time_out(row["next_attempt_at"]),
            triggered_at=self._opt_time_out(row["triggered_at"]),
            finished_at=self._opt_time_out(row["finished_at"]),
            marker=row["marker"],
            data_marker=self._json_out(row["data_marker"]),
            reasons=list(self._json_out(row["reasons"])),
        )

    def _event(self, row: Any) -> HistoryEvent:
        return HistoryEvent(
            id=row["id"],
            model=row["model"],
            event=row["event"],
            reason=row["reason"],
            fingerprint=row["fingerprint"],
            detail=self._json_out(row["detail"]),
            git_commit=row["git_commit"],
            at=self._opt_time_out(row["at"]),
        )

    # -- StateStore ------------------------------------------------------------------------

    async def get(self, name: str) -> ModelRecord | None:
        rows = await self._fetchall(
            f"SELECT {MODEL_COLUMNS} FROM {self._table('models')} WHERE name = {self.PARAM}", (name,)
        )
        return self._record(rows[0]) if rows else None

    async def all(self) -> dict[str, ModelRecord]:
        rows = await self._fetchall(f"SELECT {MODEL_COLUMNS} FROM {self._table('models')} ORDER BY name")
        return {row["name"]: self._record(row) for row in rows}

    async def save(self, record: ModelRecord, *events: HistoryEvent) -> None:
        """Write the record and append the events in one transaction."""
        await self._write(events, record=record)

    async def delete(self, name: str, *events: HistoryEvent) -> None:
        """Remove a model's record (history stays) and append the events, in one transaction."""
        await self._write(events, delete=name)

    async def append(self, *events: HistoryEvent) -> None:
        """Append events to the history, all or none."""
        if events:
            await self._write(events)

    async def history(self, name: str) -> list[HistoryEvent]:
        rows = await self._fetchall(
            f"SELECT * FROM {self._table('history')} WHERE model = {self.PARAM} ORDER BY id", (name,)
        )
        return [self._event(row) for row in rows]

    async def uploads(self, provider: str, model: str) -> dict[str, str]:
        """Content hash -> provider's id of files already uploaded for a model."""
        p = self.PARAM
        rows = await self._fetchall(
            f"SELECT content_hash, remote_id FROM {self._table('uploads')} WHERE provider = {p} AND model = {p}",
            (provider, model),
        )
        return {row["content_hash"]: row["remote_id"] for row in rows}
