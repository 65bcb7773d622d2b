"""The PostgreSQL state backend: shared state for CI runners and HA daemons.

Tables are prefixed `reconciler_` so the state can live in a database shared with other things;
put it in its own schema with `?options=-csearch_path%3Dmyschema` in the URL if you prefer.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeAlias
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import DictRow, dict_row

from reconciler.domain import HistoryEvent
from reconciler.errors import StateError
from reconciler.state.base import Lease
from reconciler.state.sql import RowWrite, SQLStateStore
from reconciler.values import as_utc

#: Seconds the fence (`AdvisoryLease.check`) may take before the lease counts as lost.
FENCE_TIMEOUT = 5.0
CONNECT_TIMEOUT = 10

# Each entry upgrades the schema by one version, applied in order inside one transaction at open.
# Append only: never edit a released migration, add a new one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE reconciler_models (
            name text PRIMARY KEY,
            provider text NOT NULL,
            fingerprint text NOT NULL,
            training jsonb NOT NULL,
            status text NOT NULL,
            handle text,
            attempts integer NOT NULL DEFAULT 0,
            next_attempt_at timestamptz,
            triggered_at timestamptz,
            finished_at timestamptz,
            marker text,
            data_marker jsonb NOT NULL DEFAULT 'null',
            reasons jsonb NOT NULL DEFAULT '[]',
            updated_at timestamptz NOT NULL
        )""",
        """CREATE TABLE reconciler_history (
            id bigserial PRIMARY KEY,
            model text NOT NULL,
            event text NOT NULL,
            reason text NOT NULL DEFAULT '',
            fingerprint text NOT NULL DEFAULT '',
            detail jsonb NOT NULL DEFAULT '{}',
            git_commit text,
            at timestamptz NOT NULL
        )""",
        "CREATE INDEX reconciler_history_model ON reconciler_history (model, id)",
        # History is an audit trail: refuse edits even from a hand-run psql session.
        """CREATE FUNCTION reconciler_history_append_only() RETURNS trigger
           LANGUAGE plpgsql AS $$
           BEGIN RAISE EXCEPTION 'reconciler_history is append-only'; END $$""",
        """CREATE TRIGGER reconciler_history_append_only
           BEFORE UPDATE OR DELETE ON reconciler_history
           FOR EACH ROW EXECUTE FUNCTION reconciler_history_append_only()""",
        """CREATE TABLE reconciler_uploads (
            provider text NOT NULL,
            model text NOT NULL,
            content_hash text NOT NULL,
            remote_id text NOT NULL,
            uploaded_at timestamptz NOT NULL,
            PRIMARY KEY (provider, model, content_hash)
        )""",
        # Who holds the advisory lock, for waiters' messages only: the advisory lock is the lock.
        """CREATE TABLE reconciler_lock (
            id integer PRIMARY KEY CHECK (id = 1),
            holder text NOT NULL,
            since timestamptz NOT NULL,
            backend_pid integer NOT NULL
        )""",
    ),
    # Many writers: every record write bumps the version; compare-and-set writes check it.
    ("ALTER TABLE reconciler_models ADD COLUMN version integer NOT NULL DEFAULT 1",),
    # Spend guards: every training a writer started, per provider instance (what budgets count);
    # IF NOT EXISTS: a state rolled back to an older schema version by hand migrates again.
    (
        """CREATE TABLE IF NOT EXISTS reconciler_starts (
            id bigserial PRIMARY KEY,
            provider text NOT NULL,
            model text NOT NULL,
            writer text NOT NULL,
            at timestamptz NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS reconciler_starts_provider_at ON reconciler_starts (provider, at)",
        "CREATE INDEX IF NOT EXISTS reconciler_starts_at ON reconciler_starts (at)",
    ),
    # Notifications: at most one per (model, fingerprint, event), claimed by the row's insert;
    # IF NOT EXISTS: a state rolled back to an older schema version by hand migrates again.
    (
        """CREATE TABLE IF NOT EXISTS reconciler_notifications (
            model text NOT NULL,
            fingerprint text NOT NULL,
            event text NOT NULL,
            body jsonb NOT NULL,
            result text NOT NULL,
            detail text NOT NULL DEFAULT '',
            claimed_at timestamptz NOT NULL,
            finished_at timestamptz,
            PRIMARY KEY (model, fingerprint, event)
        )""",
    ),
    # Orphans and renames: which provider model a record is of (NULL in older records).
    ("ALTER TABLE reconciler_models ADD COLUMN IF NOT EXISTS provider_model text",),
)
SCHEMA_VERSION = len(MIGRATIONS)

_Conn: TypeAlias = psycopg.AsyncConnection[DictRow]


def _key(text: str) -> int:
    """A stable signed 64-bit advisory-lock key."""
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def redact_url(url: str) -> str:
    """The URL without its password (in the authority or as a `password=` parameter)."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostport = netloc.rpartition("@")
            if ":" in userinfo:
                userinfo = userinfo.split(":", 1)[0] + ":***"
            netloc = f"{userinfo}@{hostport}"
        query = urlencode([(k, "***" if k == "password" else v) for k, v in parse_qsl(parts.query)], safe="/:*")
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return "postgresql://(unparseable URL)"


def _describe(params: dict[str, Any]) -> str:
    host = params.get("host") or "the local socket"
    port = params.get("port") or 5432
    dbname = params.get("dbname") or params.get("user") or "(default)"
    user = params.get("user") or "(default user)"
    return f"PostgreSQL database {dbname!r} on {host}:{port} as {user}"


class PostgresStateStore(SQLStateStore):
    """State in PostgreSQL tables named `reconciler_*`, shared by every runner."""

    TABLE_PREFIX = "reconciler_"
    PARAM = "%s"
    JSON_PARAM = "%s::jsonb"
    LOCK_POLL_INTERVAL = 0.2

    @staticmethod
    def _time_in(value: datetime) -> Any:
        return value  # timestamptz

    @staticmethod
    def _time_out(value: Any) -> datetime:
        return as_utc(value)

    @staticmethod
    def _json_out(value: Any) -> Any:
        return value  # jsonb arrives decoded

    def __init__(self, url: str, params: dict[str, Any], conn: _Conn, schema: str) -> None:
        self.url = redact_url(url)
        self.created = False  # shared state, never a fresh local file
        self._params = params
        self._where = _describe(params)
        self._conn: _Conn = conn
        self._schema = schema
        # Keyed by schema: two deployments sharing a database in separate schemas do not collide.
        self._lock_key = _key(f"reconciler:{schema}")
        # One connection: coroutines must not interleave statements of each other's transactions.
        self._mutex = asyncio.Lock()
        self._leases: set[AdvisoryLease] = set()
        self._closed = False

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    async def open(cls, url: str) -> PostgresStateStore:
        """Connect and migrate the schema (two processes opening at once migrate in turn)."""
        try:
            params: dict[str, Any] = dict(conninfo_to_dict(url))
        except psycopg.Error as err:
            raise StateError(
                f"invalid PostgreSQL state URL {redact_url(url)}: {_scrub(str(err), {})}; "
                "use postgresql://user@host:5432/dbname (--state or RECONCILER_STATE)"
            ) from None
        params.setdefault("connect_timeout", CONNECT_TIMEOUT)
        params.setdefault("application_name", "reconciler")
        conn = await _connect(params)
        try:
            schema = await cls._migrate(conn, params)
            return cls(url, params, conn, schema)
        except BaseException as err:
            await conn.close()
            if isinstance(err, psycopg.Error):
                raise StateError(
                    f"cannot prepare the state tables in {_describe(params)}: "
                    f"{_scrub(str(err), params)}; check that the user may create tables in the "
                    "schema named by search_path"
                ) from err
            raise

    @staticmethod
    async def _migrate(conn: _Conn, params: dict[str, Any]) -> str:
        async with conn.transaction():
            cur = await conn.execute("SELECT current_schema() AS schema")
            row = await cur.fetchone()
            schema = row["schema"] if row else None
            if not schema:
                raise StateError(
                    f"{_describe(params)} has no schema to create the state tables in; "
                    "create the schema named in search_path (or use the default public schema)"
                )
            # Serialises concurrent first opens (CREATE TABLE IF NOT EXISTS alone still races).
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_key(f"reconciler-migrate:{schema}"),))
            await conn.execute("CREATE TABLE IF NOT EXISTS reconciler_meta (key text PRIMARY KEY, value text NOT NULL)")
            cur = await conn.execute("SELECT value FROM reconciler_meta WHERE key = 'schema_version'")
            row = await cur.fetchone()
            version = int(row["value"]) if row else 0
            if version > SCHEMA_VERSION:
                raise StateError(
                    f"the state in {_describe(params)} (schema {schema}) has schema version "
                    f"{version}, newer than this reconciler understands ({SCHEMA_VERSION}); "
                    "upgrade reconciler"
                )
            for statements in MIGRATIONS[version:]:
                for statement in statements:
                    await conn.execute(statement)
            if version != SCHEMA_VERSION:
                await conn.execute(
                    "INSERT INTO reconciler_meta (key, value) VALUES ('schema_version', %s)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (str(SCHEMA_VERSION),),
                )
        return str(schema)

    def _budget_lock(self, provider: str) -> list[RowWrite]:
        # READ COMMITTED alone would let two writers count the same starts: the advisory lock,
        # held to the end of the transaction, makes count-and-insert one step per provider
        return [RowWrite("SELECT pg_advisory_xact_lock(%s)", (_key(f"reconciler-budget:{self._schema}:{provider}"),))]

    # -- plumbing --------------------------------------------------------------------------

    def _error(self, err: psycopg.Error, doing: str) -> StateError:
        return StateError(
            f"{self._where}: {doing} failed: {_scrub(str(err), self._params)}; check that the "
            "database is reachable and the user may read and write the reconciler_* tables"
        )

    async def _live(self) -> _Conn:
        # A daemon outlives server restarts and idle-connection reapers: reconnect when dropped.
        if self._closed:
            raise StateError(f"{self._where}: the state store is closed")
        if self._conn.closed:
            self._conn = await _connect(self._params)
        return self._conn

    async def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[DictRow]:
        async with self._mutex:
            conn = await self._live()
            try:
                async with conn.transaction():
                    cur = await conn.execute(sql, params)
                    return await cur.fetchall()
            except psycopg.Error as err:
                raise self._error(err, "reading") from err

    async def _write(self, events: tuple[HistoryEvent, ...], writes: Sequence[RowWrite] = ()) -> list[Any] | None:
        # Serialise first: a value that cannot be stored fails before the transaction opens.
        event_rows = [self._event_row(ev) for ev in events]
        ids: list[int] = []
        returned: list[Any] = []
        lost = False
        async with self._mutex:
            conn = await self._live()
            try:
                async with conn.transaction() as tx:
                    # READ COMMITTED is enough for a compare-and-set: `UPDATE ... WHERE version = %s`
                    # waits for a concurrent writer of that row, then re-checks the condition on the
                    # row it committed; `INSERT ... ON CONFLICT DO NOTHING` waits the same way.
                    for w in writes:
                        cur = await conn.execute(w.sql, w.params)
                        row = await cur.fetchone() if cur.description else None
                        if w.required and row is None:
                            lost = True
                            raise psycopg.Rollback(tx)  # leaves the block quietly, nothing written
                        returned.append(row)
                    for event_row in event_rows:
                        ids.append(await self._insert_event(conn, event_row))
            except psycopg.Error as err:
                raise self._error(err, "writing") from err
        if lost:
            return None
        # Only once committed: hand the ids and times back to the caller's events.
        for ev, event_row, new_id in zip(events, event_rows, ids, strict=True):
            ev.id = new_id
            ev.at = event_row[-1]
        return returned

    async def _insert_event(self, conn: _Conn, row: tuple[Any, ...]) -> int:
        cur = await conn.execute(
            "INSERT INTO reconciler_history"
            " (model, event, reason, fingerprint, detail, git_commit, at)"
            " VALUES (%s, %s, %s, %s, %s::jsonb, %s, %s) RETURNING id",
            row,
        )
        result = await cur.fetchone()
        assert result is not None
        return int(result["id"])

    async def record_upload(self, provider: str, model: str, content_hash: str, remote_id: str) -> None:
        async with self._mutex:
            conn = await self._live()
            try:
                async with conn.transaction():
                    await conn.execute(
                        "INSERT INTO reconciler_uploads"
                        " (provider, model, content_hash, remote_id, uploaded_at)"
                        " VALUES (%s, %s, %s, %s, now())"
                        " ON CONFLICT (provider, model, content_hash)"
                        " DO UPDATE SET remote_id = excluded.remote_id,"
                        " uploaded_at = excluded.uploaded_at",
                        (provider, model, content_hash, remote_id),
                    )
            except psycopg.Error as err:
                raise self._error(err, "recording an upload") from err

    def lease(self, holder: str) -> AdvisoryLease:
        """The leader lease: a session advisory lock on a dedicated, unpooled connection."""
        return AdvisoryLease(self, holder)


class AdvisoryLease(Lease):
    """A session advisory lock on a connection of its own (autocommit, never pooled, never shared
    with the store's queries): the server drops it when that session ends, so a killed process,
    a `pg_terminate_backend` or a network cut frees it for a standby. Advisory locks nest within a
    session, so each lease uses its own session and a second one in the same process conflicts."""

    def __init__(self, store: PostgresStateStore, holder: str) -> None:
        self.store = store
        self.holder = holder
        self._key = store._lock_key
        self._conn: _Conn | None = None
        self._held = False
        self._mutex = asyncio.Lock()  # the fence and the heartbeat share the one connection

    async def acquire(self) -> bool:
        """`pg_try_advisory_lock` once; reconnects when the session was lost."""
        async with self._mutex:
            if self._held:
                return True
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = await _connect(self.store._params, autocommit=True)
                cur = await self._conn.execute("SELECT pg_try_advisory_lock(%s) AS got", (self._key,))
                row = await cur.fetchone()
                if row is None or not row["got"]:
                    return False
                self._held = True
                self.store._leases.add(self)
                await self._conn.execute(
                    "INSERT INTO reconciler_lock (id, holder, since, backend_pid)"
                    " VALUES (1, %s, now(), pg_backend_pid())"
                    " ON CONFLICT (id) DO UPDATE SET holder = excluded.holder,"
                    " since = excluded.since, backend_pid = excluded.backend_pid",
                    (self.holder,),
                )
                return True
            except psycopg.Error as err:
                await self._drop()
                raise self.store._error(err, "taking the leader lease") from err

    async def check(self) -> bool:
        """The fence: a round trip on the lease's own session, and the server's word (`pg_locks`)
        that this session still holds the advisory lock. A terminated session, a server restart
        or a hung network (beyond FENCE_TIMEOUT) count as lost, and the lease is dropped."""
        async with self._mutex:
            if not self._held or self._conn is None or self._conn.closed:
                return False
            try:
                async with asyncio.timeout(FENCE_TIMEOUT):
                    cur = await self._conn.execute(
                        "SELECT count(*) AS held FROM pg_locks WHERE locktype = 'advisory' AND granted"
                        " AND pid = pg_backend_pid() AND objsubid = 1"
                        " AND classid::bigint = %s AND objid::bigint = %s",
                        ((self._key >> 32) & 0xFFFFFFFF, self._key & 0xFFFFFFFF),
                    )
                    row = await cur.fetchone()
            except (psycopg.Error, TimeoutError):
                await self._drop()
                return False
            if row is None or not row["held"]:
                await self._drop()
                return False
            return True

    async def held_by(self) -> str:
        """The holder recorded beside the lock (for messages only)."""
        try:
            rows = await self.store._fetchall("SELECT holder FROM reconciler_lock WHERE id = 1")
        except StateError:
            rows = []
        return str(rows[0]["holder"]) if rows else "another process"

    async def release(self) -> None:
        """Unlock and close the session (closing alone would release it too)."""
        async with self._mutex:
            conn, held = self._conn, self._held
            if conn is not None and held and not conn.closed:
                try:
                    await conn.execute("DELETE FROM reconciler_lock WHERE id = 1 AND backend_pid = pg_backend_pid()")
                    await conn.execute("SELECT pg_advisory_unlock(%s)", (self._key,))
                except psycopg.Error:
                    pass  # closing the session below releases the lock anyway
            await self._drop()

    async def _drop(self) -> None:
        conn, self._conn, self._held = self._conn, None, False
        self.store._leases.discard(self)
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()


def _scrub(text: str, params: dict[str, Any]) -> str:
    # libpq does not echo passwords today; make sure a future message cannot either.
    password = params.get("password")
    return text.replace(password, "***") if password else text


async def _connect(params: dict[str, Any], *, autocommit: bool = False) -> _Conn:
    try:
        return await psycopg.AsyncConnection.connect(autocommit=autocommit, row_factory=dict_row, **params)
    except psycopg.Error as err:
        raise StateError(
            f"cannot connect to the state database, {_describe(params)}: "
            f"{_scrub(str(err).strip(), params)}; check that the server is running and "
            "reachable, and the URL in --state / RECONCILER_STATE (password from the URL, "
            "PGPASSWORD or ~/.pgpass)"
        ) from err
