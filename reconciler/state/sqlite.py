"""The SQLite state backend: one local file, WAL, and an OS file lock as the leader lease."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import aiosqlite

from reconciler.domain import HistoryEvent
from reconciler.errors import StateError
from reconciler.state.base import Lease
from reconciler.state.sql import RowWrite, SQLStateStore
from reconciler.values import as_utc, utc_now

log = logging.getLogger(__name__)

#: How long a statement waits for another connection's write lock before SQLITE_BUSY (ms).
BUSY_TIMEOUT_MS = 10_000

# Each entry upgrades the schema by one version, applied in order inside one transaction at open.
# Append only: never edit a released migration, add a new one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE models (
            name TEXT PRIMARY KEY,
            provider TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            training TEXT NOT NULL,
            status TEXT NOT NULL,
            handle TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at TEXT,
            triggered_at TEXT,
            finished_at TEXT,
            marker TEXT,
            data_marker TEXT NOT NULL DEFAULT 'null',
            reasons TEXT NOT NULL DEFAULT '[]',
            updated_at TEXT NOT NULL
        )""",
        """CREATE TABLE history (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            model TEXT NOT NULL,
            event TEXT NOT NULL,
            reason TEXT NOT NULL DEFAULT '',
            fingerprint TEXT NOT NULL DEFAULT '',
            detail TEXT NOT NULL DEFAULT '{}',
            git_commit TEXT,
            at TEXT NOT NULL
        )""",
        "CREATE INDEX history_model ON history (model, id)",
        # History is an audit trail: refuse edits even from a hand-run sqlite3 shell.
        """CREATE TRIGGER history_no_update BEFORE UPDATE ON history
           BEGIN SELECT RAISE(ABORT, 'history is append-only'); END""",
        """CREATE TRIGGER history_no_delete BEFORE DELETE ON history
           BEGIN SELECT RAISE(ABORT, 'history is append-only'); END""",
        """CREATE TABLE uploads (
            provider TEXT NOT NULL,
            model TEXT NOT NULL,
            content_hash TEXT NOT NULL,
            remote_id TEXT NOT NULL,
            uploaded_at TEXT NOT NULL,
            PRIMARY KEY (provider, model, content_hash)
        )""",
    ),
    # Many writers: every record write bumps the version; compare-and-set writes check it.
    ("ALTER TABLE models ADD COLUMN version INTEGER NOT NULL DEFAULT 1",),
    # Spend guards: every training a writer started, per provider instance (what budgets count);
    # IF NOT EXISTS: a state rolled back to an older schema version by hand migrates again.
    (
        """CREATE TABLE IF NOT EXISTS starts (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            provider TEXT NOT NULL,
            model TEXT NOT NULL,
            writer TEXT NOT NULL,
            at TEXT NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS starts_provider_at ON starts (provider, at)",
        "CREATE INDEX IF NOT EXISTS starts_at ON starts (at)",
    ),
    # Notifications: at most one per (model, fingerprint, event), claimed by the row's insert;
    # IF NOT EXISTS: a state rolled back to an older schema version by hand migrates again.
    (
        """CREATE TABLE IF NOT EXISTS notifications (
            model TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            event TEXT NOT NULL,
            body TEXT NOT NULL,
            result TEXT NOT NULL,
            detail TEXT NOT NULL DEFAULT '',
            claimed_at TEXT NOT NULL,
            finished_at TEXT,
            PRIMARY KEY (model, fingerprint, event)
        )""",
    ),
    # Orphans and renames: which provider model a record is of (NULL in older records).
    ("ALTER TABLE models ADD COLUMN provider_model TEXT",),
)
SCHEMA_VERSION = len(MIGRATIONS)


def _iso(value: datetime | None) -> str | None:
    # Fixed-width text (always microseconds, always +00:00) so that text order is time order.
    return None if value is None else as_utc(value).isoformat(timespec="microseconds")


async def _enable_wal(conn: aiosqlite.Connection) -> sqlite3.Row | None:
    # Switching a new file to WAL needs an exclusive lock and SQLite reports SQLITE_BUSY at once
    # (no busy handler) when another process is opening the same file: retry for a while.
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            async with conn.execute("PRAGMA journal_mode = WAL") as cur:
                return await cur.fetchone()
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.02)


async def _rollback(conn: aiosqlite.Connection) -> None:
    # Never let a failing ROLLBACK hide the error that caused it.
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            await conn.execute("ROLLBACK")


class SQLiteStateStore(SQLStateStore):
    """State in one SQLite file (default `.reconciler/state.db`)."""

    # Times as fixed-width ISO text (microseconds, +00:00) so that text order is time order.
    @staticmethod
    def _time_in(value: datetime) -> Any:
        return _iso(value)

    @staticmethod
    def _time_out(value: Any) -> datetime:
        return as_utc(datetime.fromisoformat(value))

    @staticmethod
    def _json_out(value: Any) -> Any:
        return json.loads(value)

    def __init__(self, path: Path, conn: aiosqlite.Connection, created: bool) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"
        self.created = created
        self._conn: aiosqlite.Connection = conn
        # One connection: coroutines must not interleave statements of each other's transactions.
        self._mutex = asyncio.Lock()
        self._leases: set[FileLease] = set()
        self._closed = False

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    async def open(cls, path: Path) -> SQLiteStateStore:
        """Open the file, creating it (and its folder) on first use, and migrate the schema."""
        existed = path.exists()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StateError(
                f"cannot create the folder of the state database {path}: {err.strerror}; "
                "make it writable or choose another location with --state / RECONCILER_STATE"
            ) from err
        connecting = aiosqlite.connect(str(path), isolation_level=None)
        # aiosqlite's worker thread is not a daemon, so a store someone forgot to close would
        # hang the interpreter at exit. A daemon thread cut off at exit is only a crash to
        # SQLite: acknowledged commits are already durable, nothing half-written survives.
        connecting._thread.daemon = True
        try:
            conn = await connecting
        except sqlite3.Error as err:
            # aiosqlite stops its worker thread after a failed connect without waiting for it;
            # wait here, or the thread outlives (and trips over) a closed event loop.
            await asyncio.to_thread(connecting._thread.join, 5)
            raise cls._open_error(path, err) from err
        try:
            conn.row_factory = sqlite3.Row
            fresh = await cls._setup(path, conn)
            return cls(path, conn, created=not existed or fresh)
        except BaseException as err:
            await conn.close()
            if isinstance(err, sqlite3.Error):
                raise cls._open_error(path, err) from err
            raise

    @staticmethod
    def _open_error(path: Path, err: sqlite3.Error) -> StateError:
        text = str(err)
        if "not a database" in text or "malformed" in text:
            hint = (
                "it is not a reconciler SQLite database (or it is damaged); move it aside or "
                "point --state / RECONCILER_STATE elsewhere"
            )
        elif "readonly" in text or "unable to open" in text or "disk I/O" in text:
            hint = (
                "check that the file and its folder are readable and writable (SQLite creates "
                f"{path.name}-wal and {path.name}-shm beside it), or choose another location "
                "with --state / RECONCILER_STATE"
            )
        else:
            hint = "check the file, or choose another location with --state / RECONCILER_STATE"
        return StateError(f"cannot open the state database {path}: {text}; {hint}")

    @staticmethod
    async def _setup(path: Path, conn: aiosqlite.Connection) -> bool:
        """Set the pragmas and migrate; True when the file had no schema yet."""
        await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        row = await _enable_wal(conn)
        if row is None or str(row[0]).lower() != "wal":
            # Some network filesystems refuse WAL; still correct, only slower for readers.
            log.warning("state database %s: WAL journal mode unavailable (got %s)", path, row)
        # FULL: the WAL is fsynced at every commit, so an acknowledged write survives a crash.
        await conn.execute("PRAGMA synchronous = FULL")
        # IMMEDIATE takes the write lock first: two processes opening at once migrate in turn.
        await conn.execute("BEGIN IMMEDIATE")
        try:
            await conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            async with conn.execute("SELECT value FROM meta WHERE key = 'schema_version'") as cur:
                row = await cur.fetchone()
            version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise StateError(
                    f"the state database {path} has schema version {version}, newer than this "
                    f"reconciler understands ({SCHEMA_VERSION}); upgrade reconciler"
                )
            for statements in MIGRATIONS[version:]:
                for statement in statements:
                    await conn.execute(statement)
            if version != SCHEMA_VERSION:
                await conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (str(SCHEMA_VERSION),),
                )
            await conn.execute("COMMIT")
        except BaseException:
            await _rollback(conn)
            raise
        return version == 0

    # -- plumbing --------------------------------------------------------------------------

    def _error(self, err: sqlite3.Error, doing: str) -> StateError:
        return StateError(
            f"state database {self.path}: {doing} failed: {err}; check the file, its folder's "
            "free space and permissions"
        )

    async def _fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        async with self._mutex:
            try:
                async with self._conn.execute(sql, tuple(params)) as cur:
                    return list(await cur.fetchall())
            except sqlite3.Error as err:
                raise self._error(err, "reading") from err

    async def _write(self, events: tuple[HistoryEvent, ...], writes: Sequence[RowWrite] = ()) -> list[Any] | None:
        # Serialise before BEGIN: a value that cannot be stored fails without touching the file.
        event_rows = [self._event_row(ev) for ev in events]
        ids: list[int] = []
        returned: list[Any] = []
        async with self._mutex:
            try:
                # IMMEDIATE takes the write lock first: a compare-and-set reads and writes the
                # version under it, so no other connection can write between the two.
                await self._conn.execute("BEGIN IMMEDIATE")
                try:
                    for w in writes:
                        async with self._conn.execute(w.sql, w.params) as cur:
                            rows = list(await cur.fetchall())
                        if w.required and not rows:
                            await _rollback(self._conn)
                            return None
                        returned.append(rows[0] if rows else None)
                    for row in event_rows:
                        ids.append(await self._insert_event(row))
                    await self._conn.execute("COMMIT")
                except BaseException:
                    await _rollback(self._conn)
                    raise
            except sqlite3.Error as err:
                raise self._error(err, "writing") from err
        # Only once committed: hand the ids and times back to the caller's events.
        for ev, row, new_id in zip(events, event_rows, ids, strict=True):
            ev.id = new_id
            ev.at = self._time_out(row[-1])
        return returned

    async def _insert_event(self, row: tuple[Any, ...]) -> int:
        cur = await self._conn.execute(
            "INSERT INTO history (model, event, reason, fingerprint, detail, git_commit, at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            row,
        )
        new_id = cur.lastrowid
        await cur.close()
        assert new_id is not None
        return new_id

    async def record_upload(self, provider: str, model: str, content_hash: str, remote_id: str) -> None:
        async with self._mutex:
            try:
                # A single statement in autocommit mode is its own durable transaction.
                await self._conn.execute(
                    "INSERT INTO uploads (provider, model, content_hash, remote_id, uploaded_at)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (provider, model, content_hash)"
                    " DO UPDATE SET remote_id = excluded.remote_id,"
                    " uploaded_at = excluded.uploaded_at",
                    (provider, model, content_hash, remote_id, _iso(utc_now())),
                )
            except sqlite3.Error as err:
                raise self._error(err, "recording an upload") from err

    def lease(self, holder: str) -> FileLease:
        """The leader lease: an flock on `<db>.lock`, so leadership is per machine."""
        return FileLease(self, self.path.with_name(self.path.name + ".lock"), holder)


class FileLease(Lease):
    """An flock on `<db>.lock`: the kernel drops it when the process dies, even by SIGKILL, so no
    stale lease survives a crash. flock locks belong to an open file, so a second lease in the same
    process conflicts like any other process instead of nesting silently."""

    def __init__(self, store: SQLiteStateStore, path: Path, holder: str) -> None:
        self.store = store
        self.path = path
        self.holder = holder
        self._fd: int | None = None

    async def acquire(self) -> bool:
        """Try the flock once, without waiting."""
        if self._fd is not None:
            return True
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise StateError(
                f"cannot open the state lock file {self.path}: {err.strerror}; make its folder "
                "writable or choose another state location with --state / RECONCILER_STATE"
            ) from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise StateError(f"cannot lock {self.path}: {err.strerror}") from err
        # The holder's description is for waiters' messages only; the flock is the lock.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{self.holder}\n".encode(), 0)
        self._fd = fd
        self.store._leases.add(self)
        return True

    async def check(self) -> bool:
        """Held while our descriptor is open and still names the file at the path: a lock file
        deleted or replaced by hand would let another process lock a new one."""
        if self._fd is None:
            return False
        try:
            return os.fstat(self._fd).st_ino == os.stat(self.path).st_ino
        except OSError:
            return False

    async def held_by(self) -> str:
        """The description the holder wrote into the lock file."""
        try:
            text = self.path.read_bytes()[:4096].decode("utf-8", "replace").strip()
        except OSError:
            text = ""
        return text or "another process"

    async def release(self) -> None:
        """Drop the flock (closing the descriptor does)."""
        fd, self._fd = self._fd, None
        self.store._leases.discard(self)
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)
