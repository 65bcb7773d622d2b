"""What the SQLite and PostgreSQL stores share: row mapping, the queries and the record writes.

A subclass names its dialect (`TABLE_PREFIX`, `PARAM`, `JSON_PARAM`, how times and JSON come back)
and implements the transactional parts (`_fetchall`, `_write`, the leader lease).

Every record write bumps the row's `version`. A compare-and-set write (`save_if`, `delete_if`)
names the version it read and changes nothing when the stored one differs: `UPDATE ... WHERE
version = ?` or `INSERT ... ON CONFLICT DO NOTHING` for "no record yet", with `RETURNING` telling
whether a row was touched, so the check and the write are one statement in one transaction.
"""

from __future__ import annotations

import asyncio
import sys
from abc import abstractmethod
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar

from reconciler.domain import HistoryEvent, ModelRecord, RecordStatus
from reconciler.errors import StateError
from reconciler.state.base import PENDING, NotificationRecord, Start, StateStore, dump_json
from reconciler.values import as_utc, utc_now

RECORD_FIELDS = (
    "name",
    "provider",
    "fingerprint",
    "training",
    "status",
    "handle",
    "attempts",
    "next_attempt_at",
    "triggered_at",
    "finished_at",
    "marker",
    "data_marker",
    "reasons",
    "provider_model",
)
JSON_FIELDS = frozenset({"training", "data_marker", "reasons"})
MODEL_COLUMNS = ", ".join(RECORD_FIELDS) + ", version"


@dataclass(frozen=True)
class RowWrite:
    """One statement of a write transaction. `required`: the transaction is void (rolled back,
    False returned) unless the statement returns a row: how a compare-and-set that lost writes nothing."""

    sql: str
    params: tuple[Any, ...]
    required: bool = False


def record_status(value: str, name: str) -> RecordStatus:
    try:
        return RecordStatus(value)
    except ValueError:
        raise StateError(
            f"model {name!r} has status {value!r} in the state, unknown to this version; upgrade reconciler"
        ) from None


#: names in one `get_many` statement
NAMES_PER_QUERY = 500


class SQLStateStore(StateStore):
    """Row mapping and the read/write entry points, over a dialect given by the subclass."""

    #: set by the subclass: its connection, the mutex serialising its use, the leases it handed out
    _conn: Any
    _mutex: asyncio.Lock
    _leases: set[Any]
    _closed: bool

    TABLE_PREFIX: ClassVar[str] = ""
    PARAM: ClassVar[str] = "?"
    #: the placeholder of a JSON column (PostgreSQL casts text to jsonb)
    JSON_PARAM: ClassVar[str] = "?"

    async def close(self) -> None:
        """Release any lease still held and close the connection; safe to call twice."""
        for lease in list(self._leases):
            await lease.release()
        if self._closed:
            return
        self._closed = True
        async with self._mutex:
            await self._conn.close()

    async def ping(self) -> None:
        """Raise StateError when the database cannot be read."""
        await self._fetchall("SELECT 1")

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
    async def _write(self, events: tuple[HistoryEvent, ...], writes: Sequence[RowWrite] = ()) -> list[Any] | None:
        """Run the writes, then append the events, in one transaction. The first row each write
        returned (None when none), or None and nothing written when a `required` one returned none."""

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
            record.provider_model,
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
            provider=sys.intern(row["provider"]),
            fingerprint=row["fingerprint"],
            training=_interned_keys(self._json_out(row["training"])),
            status=record_status(row["status"], row["name"]),
            handle=row["handle"],
            attempts=row["attempts"],
            next_attempt_at=self._opt_time_out(row["next_attempt_at"]),
            triggered_at=self._opt_time_out(row["triggered_at"]),
            finished_at=self._opt_time_out(row["finished_at"]),
            marker=row["marker"],
            data_marker=self._json_out(row["data_marker"]),
            reasons=[sys.intern(r) if isinstance(r, str) else r for r in self._json_out(row["reasons"])],
            provider_model=row["provider_model"],
            version=row["version"],
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

    async def get_many(self, names: Collection[str]) -> dict[str, ModelRecord]:
        wanted = list(dict.fromkeys(names))
        found: dict[str, ModelRecord] = {}
        # in chunks: SQLite before 3.32 takes at most 999 parameters in one statement
        for start in range(0, len(wanted), NAMES_PER_QUERY):
            chunk = wanted[start : start + NAMES_PER_QUERY]
            rows = await self._fetchall(
                f"SELECT {MODEL_COLUMNS} FROM {self._table('models')} WHERE name IN ({', '.join([self.PARAM] * len(chunk))})",
                chunk,
            )
            found.update((row["name"], self._record(row)) for row in rows)
        return found

    async def names(self) -> set[str]:
        rows = await self._fetchall(f"SELECT name FROM {self._table('models')}")
        return {row["name"] for row in rows}

    async def of_provider_models(self, identities: Collection[str]) -> dict[str, ModelRecord]:
        """The records of these provider models, and those that do not say theirs (NULL)."""
        wanted = sorted(set(identities))
        among = f" OR provider_model IN ({', '.join([self.PARAM] * len(wanted))})" if wanted else ""
        rows = await self._fetchall(
            f"SELECT {MODEL_COLUMNS} FROM {self._table('models')} WHERE provider_model IS NULL{among} ORDER BY name",
            wanted,
        )
        return {row["name"]: self._record(row) for row in rows}

    def _record_sql(self, mode: str) -> str:
        """The statement that writes a record: `upsert` (unconditional), `insert` (only when the
        name has no record) or `update` (only when the stored version is the one given last)."""
        t, p = self._table("models"), self.PARAM
        values = ", ".join(self.JSON_PARAM if f in JSON_FIELDS else p for f in RECORD_FIELDS)
        if mode == "update":
            sets = ", ".join(f"{f} = {self.JSON_PARAM if f in JSON_FIELDS else p}" for f in RECORD_FIELDS[1:])
            return (
                f"UPDATE {t} SET {sets}, version = version + 1, updated_at = {p}"
                f" WHERE name = {p} AND version = {p} RETURNING version"
            )
        insert = f"INSERT INTO {t} ({MODEL_COLUMNS}, updated_at) VALUES ({values}, 1, {p}) ON CONFLICT (name)"
        if mode == "insert":
            return f"{insert} DO NOTHING RETURNING version"
        sets = ", ".join(f"{f} = excluded.{f}" for f in RECORD_FIELDS[1:])
        return f"{insert} DO UPDATE SET {sets}, version = {t}.version + 1, updated_at = excluded.updated_at RETURNING version"

    def _record_write(self, record: ModelRecord, expected_version: int | None, conditional: bool) -> RowWrite:
        row = self._record_row(record)
        now = self._time_in(utc_now())
        if not conditional:
            return RowWrite(self._record_sql("upsert"), (*row, now))
        if not expected_version:
            return RowWrite(self._record_sql("insert"), (*row, now), required=True)
        return RowWrite(self._record_sql("update"), (*row[1:], now, record.name, expected_version), required=True)

    async def _save(
        self, record: ModelRecord, events: tuple[HistoryEvent, ...], expected: int | None, conditional: bool
    ) -> bool:
        # Serialised before the transaction: a value that cannot be stored fails without a write.
        written = await self._write(events, [self._record_write(record, expected, conditional)])
        if written is None or written[0] is None:
            return False
        record.version = int(written[0]["version"])
        return True

    async def save(self, record: ModelRecord, *events: HistoryEvent) -> None:
        """Write the record (whatever is stored) and append the events in one transaction."""
        await self._save(record, events, None, conditional=False)

    async def save_if(self, record: ModelRecord, expected_version: int | None, *events: HistoryEvent) -> bool:
        """Compare-and-set: write the record and append the events only when the stored version is
        `expected_version` (None or 0: only when there is no record). False: nothing written."""
        return await self._save(record, events, expected_version, conditional=True)

    def _budget_lock(self, provider: str) -> list[RowWrite]:
        """What makes counting a provider's starts and inserting one atomic across writers. SQLite:
        nothing more, `BEGIN IMMEDIATE` already serialises every write transaction."""
        return []

    async def save_intent(
        self,
        record: ModelRecord,
        expected_version: int | None,
        *events: HistoryEvent,
        writer: str,
        daily_limit: int | None = None,
    ) -> bool:
        """Compare-and-set the intent and record its start in one transaction; with `daily_limit`,
        only while the provider's starts in the last 24 h are fewer (see `StateStore.save_intent`)."""
        assert record.triggered_at is not None, "an intent has its trigger time"
        t, p = self._table("starts"), self.PARAM
        at = self._time_in(as_utc(record.triggered_at))
        writes: list[RowWrite] = []
        if daily_limit is not None:
            since = self._time_in(as_utc(record.triggered_at) - timedelta(hours=24))
            writes += self._budget_lock(record.provider)
            # a row only while the budget has room: `required` voids the transaction otherwise
            writes.append(
                RowWrite(
                    f"SELECT 1 AS room WHERE (SELECT count(*) FROM {t} WHERE provider = {p} AND at > {p}) < {p}",
                    (record.provider, since, daily_limit),
                    required=True,
                )
            )
        writes.append(self._record_write(record, expected_version, conditional=True))
        writes.append(
            RowWrite(
                f"INSERT INTO {t} (provider, model, writer, at) VALUES ({p}, {p}, {p}, {p})",
                (record.provider, record.name, writer, at),
            )
        )
        written = await self._write(events, writes)
        if written is None:
            return False
        record.version = int(written[len(writes) - 2]["version"])
        return True

    async def starts_since(self, since: datetime) -> list[Start]:
        """Every writer's training starts at or after `since`, oldest first."""
        rows = await self._fetchall(
            f"SELECT provider, model, writer, at FROM {self._table('starts')} WHERE at >= {self.PARAM} ORDER BY at, id",
            (self._time_in(as_utc(since)),),
        )
        return [Start(row["provider"], row["model"], row["writer"], self._time_out(row["at"])) for row in rows]

    async def release_start(self, model: str, at: datetime) -> None:
        """Forget a start whose train call provably started nothing."""
        p = self.PARAM
        sql = f"DELETE FROM {self._table('starts')} WHERE model = {p} AND at = {p}"
        await self._write((), [RowWrite(sql, (model, self._time_in(as_utc(at))))])

    async def delete(self, name: str, *events: HistoryEvent) -> None:
        """Remove a model's record (history stays) and append the events, in one transaction."""
        await self._write(events, [RowWrite(f"DELETE FROM {self._table('models')} WHERE name = {self.PARAM}", (name,))])

    async def delete_if(self, name: str, expected_version: int, *events: HistoryEvent) -> bool:
        """Compare-and-set: remove the record and append the events only when the stored version
        is `expected_version`. False: nothing written."""
        p = self.PARAM
        sql = f"DELETE FROM {self._table('models')} WHERE name = {p} AND version = {p} RETURNING version"
        return await self._write(events, [RowWrite(sql, (name, expected_version), required=True)]) is not None

    async def move_if(self, old: str, expected_version: int, record: ModelRecord, *events: HistoryEvent) -> bool:
        """Compare-and-set rename: remove `old` (at `expected_version`), insert `record` (only when
        its name has no record), move the uploads and copy the notifications sent, all or nothing.
        False: nothing written."""
        p, models, uploads = self.PARAM, self._table("models"), self._table("uploads")
        notifications = self._table("notifications")
        writes = [
            RowWrite(
                f"DELETE FROM {models} WHERE name = {p} AND version = {p} RETURNING version",
                (old, expected_version),
                required=True,
            ),
            self._record_write(record, None, conditional=True),
            # the files already uploaded for the model are the same files under its new name
            RowWrite(
                f"INSERT INTO {uploads} (provider, model, content_hash, remote_id, uploaded_at)"
                f" SELECT provider, {p}, content_hash, remote_id, uploaded_at FROM {uploads} WHERE model = {p}"
                " ON CONFLICT (provider, model, content_hash) DO NOTHING",
                (record.name, old),
            ),
            RowWrite(f"DELETE FROM {uploads} WHERE model = {p}", (old,)),
            # what was told of the model stays told under its new name (a hold is not announced
            # twice); the old name keeps its rows, like its history
            RowWrite(
                f"INSERT INTO {notifications} (model, fingerprint, event, body, result, detail, claimed_at, finished_at)"
                f" SELECT {p}, fingerprint, event, body, result, detail, claimed_at, finished_at FROM {notifications}"
                f" WHERE model = {p} ON CONFLICT (model, fingerprint, event) DO NOTHING",
                (record.name, old),
            ),
        ]
        written = await self._write(events, writes)
        if written is None or written[1] is None:
            return False
        record.version = int(written[1]["version"])
        return True

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

    # -- notifications ---------------------------------------------------------------------

    async def claim_notification(self, model: str, fingerprint: str, event: str, body: dict[str, Any]) -> bool:
        """`INSERT ... ON CONFLICT DO NOTHING RETURNING`: the one writer whose row went in sends it."""
        t, p = self._table("notifications"), self.PARAM
        sql = (
            f"INSERT INTO {t} (model, fingerprint, event, body, result, detail, claimed_at)"
            f" VALUES ({p}, {p}, {p}, {self.JSON_PARAM}, {p}, '', {p})"
            " ON CONFLICT (model, fingerprint, event) DO NOTHING RETURNING event"
        )
        row = (model, fingerprint, event, dump_json(body, f"a {event!r} notification"), PENDING)
        written = await self._write((), [RowWrite(sql, (*row, self._time_in(utc_now())), required=True)])
        return written is not None

    async def notification_result(self, model: str, fingerprint: str, event: str, result: str, detail: str) -> None:
        t, p = self._table("notifications"), self.PARAM
        sql = (
            f"UPDATE {t} SET result = {p}, detail = {p}, finished_at = {p}"
            f" WHERE model = {p} AND fingerprint = {p} AND event = {p}"
        )
        await self._write((), [RowWrite(sql, (result, detail, self._time_in(utc_now()), model, fingerprint, event))])

    async def notifications(self, model: str | None = None) -> list[NotificationRecord]:
        t, p = self._table("notifications"), self.PARAM
        where, params = (f" WHERE model = {p}", (model,)) if model is not None else ("", ())
        rows = await self._fetchall(f"SELECT * FROM {t}{where} ORDER BY claimed_at, model, event", params)
        return [
            NotificationRecord(
                model=row["model"],
                fingerprint=row["fingerprint"],
                event=row["event"],
                body=self._json_out(row["body"]),
                result=row["result"],
                detail=row["detail"],
                claimed_at=self._time_out(row["claimed_at"]),
                finished_at=self._opt_time_out(row["finished_at"]),
            )
            for row in rows
        ]


def _interned_keys(value: Any) -> Any:
    """`value` with its dicts' keys interned: a daemon holds one record per model (10k), whose
    training dicts repeat the same few field names, each decoded afresh per row."""
    if isinstance(value, dict):
        return {sys.intern(k) if isinstance(k, str) else k: _interned_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_interned_keys(v) for v in value]
    return value
