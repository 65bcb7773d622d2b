"""The state store contract, run against both backends (SQLite in tmp_path, PostgreSQL).

PostgreSQL tests each create a fresh database (conftest `postgres_url`) that is dropped afterwards;
they are skipped when the server at RECONCILER_TEST_POSTGRES_URL (default
postgresql://postgres@127.0.0.1:5432/postgres, used only to create and drop those databases)
cannot be reached.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import with_search_path

from reconciler.domain import HistoryEvent, ModelRecord, RecordStatus
from reconciler.errors import LockHeldError, StateError
from reconciler.state import StateStore, open_state
from reconciler.state.postgres import redact_url

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Backend:
    """One backend under test: its state URL and raw SQL access for looking underneath."""

    name: str
    url: str
    raw: Callable[[str], list[tuple[Any, ...]]]
    prefix: str  # table name prefix: "" for SQLite, "reconciler_" for PostgreSQL
    path: Path | None = None  # the SQLite file

    def table(self, name: str) -> str:
        return self.prefix + name

    async def open(self) -> StateStore:
        return await open_state(self.url)


def _sqlite_raw(path: Path) -> Callable[[str], list[tuple[Any, ...]]]:
    def run(query: str) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            return conn.execute(query).fetchall()
        finally:
            conn.close()

    return run


def _pg_raw(url: str) -> Callable[[str], list[tuple[Any, ...]]]:
    def run(query: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(url, autocommit=True) as conn:
            cur = conn.execute(query.encode())
            return cur.fetchall() if cur.description else []

    return run


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        path = tmp_path / "nested" / "dir" / "state.db"  # the folders do not exist yet
        yield Backend("sqlite", f"sqlite:///{path}", _sqlite_raw(path), "", path)
        return
    url = request.getfixturevalue("postgres_url")
    yield Backend("postgres", url, _pg_raw(url), "reconciler_")


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[StateStore]:
    s = await backend.open()
    try:
        yield s
    finally:
        await s.close()


def full_record(name: str = "hardhat-detector", **changes: Any) -> ModelRecord:
    record = ModelRecord(
        name=name,
        provider="roboflow",
        fingerprint="sha256:abc",
        training={
            "version": 3,
            "model_type": "rfdetr-nano",
            "epochs": 100,
            "nested": {"list": [1, 2.5, None, True], "text": "héllo ✓"},
        },
        status=RecordStatus.TRAINING,
        handle="job-42",
        attempts=2,
        # Not UTC on the way in: must come back as the same instant, in UTC.
        next_attempt_at=datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2))),
        triggered_at=datetime(2026, 2, 28, 9, 0, tzinfo=UTC),
        finished_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        marker="v3-trained-2026-01-02",
        data_marker={"batches": ["b1", "b2"], "images": {"a.jpg": "h1"}},
        reasons=["spec-changed", "expired"],
    )
    for key, value in changes.items():
        setattr(record, key, value)
    return record


def assert_utc(value: datetime | None) -> None:
    assert value is not None
    assert value.tzinfo is not None and value.utcoffset() == timedelta(0)


# -- creation, round trip -----------------------------------------------------------------------


async def test_create_on_first_use(backend: Backend) -> None:
    if backend.path is not None:
        assert not backend.path.parent.exists()
    first = await backend.open()
    try:
        # A fresh local file forgets every training: only a new SQLite file says so.
        assert first.created is (backend.name == "sqlite")
        await first.save(full_record())
    finally:
        await first.close()
    if backend.path is not None:
        assert backend.path.is_file()
    again = await backend.open()
    try:
        assert again.created is False
        assert await again.get("hardhat-detector") is not None
    finally:
        await again.close()


async def test_round_trip_full_record(store: StateStore) -> None:
    record = full_record()
    await store.save(record)

    got = await store.get(record.name)
    assert got == record  # datetimes compare as instants
    assert got is not None
    assert isinstance(got.status, RecordStatus) and got.status is RecordStatus.TRAINING
    for value in (got.next_attempt_at, got.triggered_at, got.finished_at):
        assert_utc(value)
    assert got.next_attempt_at == datetime(2026, 3, 1, 10, 30, 15, 123456, tzinfo=UTC)
    assert await store.all() == {record.name: record}
    assert await store.get("nope") is None


async def test_round_trip_defaults_and_update(store: StateStore) -> None:
    minimal = ModelRecord(name="m", provider="lucid", fingerprint="f1", training={}, status=RecordStatus.INTENT)
    await store.save(minimal)
    assert await store.get("m") == minimal

    # Naive datetimes are taken as UTC; saving again replaces the whole record.
    updated = full_record("m", status=RecordStatus.SUCCEEDED, handle=None, data_marker=None)
    updated.finished_at = datetime(2026, 5, 1, 8, 0)
    await store.save(updated)
    got = await store.get("m")
    assert got is not None
    assert got.status is RecordStatus.SUCCEEDED and got.handle is None and got.data_marker is None
    assert got.finished_at == datetime(2026, 5, 1, 8, 0, tzinfo=UTC)
    await store.save(full_record("a"))
    assert list(await store.all()) == ["a", "m"]


async def test_get_many_reads_exactly_the_named_records_in_chunks(
    store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plan reads each provider's records by name (never every record): across statement chunks,
    names without a record, repeated names and names that look like SQL."""
    from reconciler.state import sql

    monkeypatch.setattr(sql, "NAMES_PER_QUERY", 3)
    names = [f"m{i}" for i in range(8)] + ["o'brien; DROP TABLE models"]
    for name in names:
        await store.save(full_record(name))
    wanted = ["m7", "m0", "missing", "m3", "m0", "m4", "m5", "m6", "o'brien; DROP TABLE models"]
    got = await store.get_many(wanted)
    assert set(got) == {"m7", "m0", "m3", "m4", "m5", "m6", "o'brien; DROP TABLE models"}
    for name, record in got.items():
        assert record == await store.get(name)
    assert await store.get_many([]) == {}
    assert len(await store.all()) == len(names)


async def test_unstorable_value_is_a_state_error_and_writes_nothing(store: StateStore) -> None:
    with pytest.raises(StateError, match="model 'm'"):
        await store.save(full_record("m", training={"x": object()}))
    with pytest.raises(StateError):
        await store.save(full_record("m"), HistoryEvent("m", "intent", detail={"x": object()}))
    assert await store.all() == {}
    assert await store.history("m") == []


# -- transactions, history, uploads -------------------------------------------------------------


async def test_save_is_one_transaction(store: StateStore, monkeypatch: pytest.MonkeyPatch) -> None:
    before = full_record("m", fingerprint="old")
    await store.save(before, HistoryEvent("m", "intent"))

    original = store._insert_event  # type: ignore[attr-defined]
    calls = 0

    async def fail_second(*args: Any) -> int:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("disk on fire")
        result: int = await original(*args)
        return result

    monkeypatch.setattr(store, "_insert_event", fail_second)
    first, second = HistoryEvent("m", "triggered"), HistoryEvent("m", "succeeded")
    with pytest.raises(RuntimeError, match="disk on fire"):
        await store.save(full_record("m", fingerprint="new"), first, second)
    assert calls == 2  # the record and the first event were written, then rolled back

    got = await store.get("m")
    assert got is not None and got.fingerprint == "old"
    assert [e.event for e in await store.history("m")] == ["intent"]
    assert first.id is None and second.id is None

    # The connection is usable afterwards (no transaction left open).
    monkeypatch.undo()
    await store.save(full_record("m", fingerprint="new"), HistoryEvent("m", "triggered"))
    got = await store.get("m")
    assert got is not None and got.fingerprint == "new"
    assert [e.event for e in await store.history("m")] == ["intent", "triggered"]


async def test_history_order_and_append_only(backend: Backend, store: StateStore) -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    events = [
        HistoryEvent("m", "intent", "never-trained", "f1", {"k": [1, 2]}, "abc123", at),
        # Recorded later but with an earlier time: order is the order of recording.
        HistoryEvent("m", "triggered", at=at - timedelta(days=1)),
        HistoryEvent("m", "failed", detail={"error": "boom"}),
    ]
    await store.append(*events[:2])
    await store.append(HistoryEvent("other", "adopted"))
    started = datetime.now(UTC)
    await store.save(full_record("m"), events[2])
    await store.append()  # nothing to do

    got = await store.history("m")
    assert [e.event for e in got] == ["intent", "triggered", "failed"]
    ids = [e.id for e in got]
    assert all(isinstance(i, int) for i in ids) and ids == sorted(i for i in ids if i is not None)
    assert [e.id for e in events] == ids  # the caller's events learn their ids
    assert got[0] == events[0]
    assert got[0].detail == {"k": [1, 2]} and got[0].git_commit == "abc123"
    for event in got:
        assert_utc(event.at)
    assert got[2].at is not None and got[2].at >= started - timedelta(seconds=1)
    assert [e.event for e in await store.history("other")] == ["adopted"]
    assert await store.history("nobody") == []

    history = backend.table("history")
    for statement in (f"UPDATE {history} SET event = 'x'", f"DELETE FROM {history}"):
        with pytest.raises((sqlite3.Error, psycopg.Error), match="append-only"):
            backend.raw(statement)
    assert await store.history("m") == got


async def test_delete_removes_the_record_and_keeps_history(store: StateStore) -> None:
    await store.save(full_record("m"), HistoryEvent("m", "intent"))
    await store.save(full_record("keep"))
    removed = HistoryEvent("m", "removed", detail={"why": "manifest deleted"})
    await store.delete("m", removed)
    assert await store.get("m") is None
    assert list(await store.all()) == ["keep"]
    assert [e.event for e in await store.history("m")] == ["intent", "removed"]
    assert removed.id is not None
    await store.delete("never-existed")  # not an error


async def test_uploads_map(store: StateStore) -> None:
    assert await store.uploads("photogpt", "m") == {}
    await store.record_upload("photogpt", "m", "sha256:1", "img-1")
    await store.record_upload("photogpt", "m", "sha256:2", "img-2")
    await store.record_upload("photogpt", "other", "sha256:1", "img-9")
    await store.record_upload("lucid", "m", "sha256:1", "batch-1")
    await store.record_upload("photogpt", "m", "sha256:2", "img-2b")  # re-upload replaces
    assert await store.uploads("photogpt", "m") == {"sha256:1": "img-1", "sha256:2": "img-2b"}
    assert await store.uploads("photogpt", "other") == {"sha256:1": "img-9"}
    assert await store.uploads("lucid", "m") == {"sha256:1": "batch-1"}


async def test_ping(store: StateStore) -> None:
    await store.ping()


# -- schema versions ------------------------------------------------------------------------------


def schema_version(backend: Backend) -> int:
    rows = backend.raw(f"SELECT value FROM {backend.table('meta')} WHERE key = 'schema_version'")
    return int(rows[0][0])


async def test_migrations_idempotent_on_reopen(backend: Backend) -> None:
    async with await backend.open() as first:
        await first.save(full_record(), HistoryEvent("hardhat-detector", "intent"))
    version = schema_version(backend)
    assert version >= 1
    for _ in range(2):
        async with await backend.open() as again:
            assert await again.get("hardhat-detector") == full_record()
            assert len(await again.history("hardhat-detector")) == 1
        assert schema_version(backend) == version


async def test_concurrent_first_opens_do_not_race(backend: Backend) -> None:
    opened = await asyncio.gather(*(backend.open() for _ in range(4)), return_exceptions=True)
    stores = [s for s in opened if isinstance(s, StateStore)]
    try:
        assert len(stores) == 4, opened
        await asyncio.gather(*(s.save(full_record(f"m{i}")) for i, s in enumerate(stores)))
        assert len(await stores[0].all()) == 4
    finally:
        for s in stores:
            await s.close()


async def test_newer_schema_is_refused(backend: Backend) -> None:
    async with await backend.open() as first:
        await first.save(full_record())
    backend.raw(f"UPDATE {backend.table('meta')} SET value = '999' WHERE key = 'schema_version'")
    with pytest.raises(StateError, match=r"version 999.*upgrade reconciler"):
        await backend.open()
    assert schema_version(backend) == 999  # left untouched


# -- the writer lock ------------------------------------------------------------------------------

LOCK_CHILD = """
import asyncio, sys
from reconciler.state import open_state

async def main():
    store = await open_state(sys.argv[1])
    async with store.lock(sys.argv[2], timeout=10):
        print("locked", flush=True)
        await asyncio.sleep(60)

asyncio.run(main())
"""

WRITER_CHILD = """
import asyncio, sys
from reconciler.domain import HistoryEvent, ModelRecord, RecordStatus
from reconciler.state import open_state

async def main():
    store = await open_state(sys.argv[1])
    i = 0
    while True:
        name = f"m{i}"
        record = ModelRecord(name, "roboflow", f"f{i}", {"i": i, "pad": "x" * 500},
                             RecordStatus.INTENT)
        await store.save(record, HistoryEvent(name, "intent", detail={"i": i}))
        print(i, flush=True)  # acknowledged: save() returned
        i += 1

asyncio.run(main())
"""


async def spawn(script: str, *args: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, *args, cwd=REPO, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def read_line(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout=15)
    if not line:
        assert proc.stderr is not None
        raise AssertionError(f"child exited: {(await proc.stderr.read()).decode()}")
    return line.decode().strip()


async def kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGKILL)
    await proc.wait()


async def test_lock_excludes_another_process_and_is_freed_by_sigkill(backend: Backend, store: StateStore) -> None:
    holder = f"apply pid 4242 on host ci-7 since {datetime.now(UTC).isoformat()}"
    child = await spawn(LOCK_CHILD, backend.url, holder)
    try:
        assert await read_line(child) == "locked"
        started = time.monotonic()
        with pytest.raises(LockHeldError) as caught:
            async with store.lock("test waiter", timeout=0.5):
                pytest.fail("took a lock another process holds")
        assert time.monotonic() - started >= 0.5
        assert caught.value.holder == holder
        assert holder in str(caught.value)
        assert isinstance(caught.value, StateError)

        await kill(child)
        # The kernel (SQLite: flock) or the server (PostgreSQL: session ends) dropped the lock.
        started = time.monotonic()
        async with store.lock("test after kill", timeout=10):
            pass
        assert time.monotonic() - started < 5
    finally:
        await kill(child)


async def test_lock_within_one_process(backend: Backend, store: StateStore) -> None:
    async with store.lock("first", timeout=1):
        # A second holder in the same process waits and fails rather than nesting or hanging.
        with pytest.raises(LockHeldError) as caught:
            async with store.lock("second", timeout=0.2):
                pytest.fail("nested lock acquired")
        assert caught.value.holder == "first"
        other = await backend.open()
        try:
            with pytest.raises(LockHeldError):
                async with other.lock("other store", timeout=0.2):
                    pytest.fail("second store acquired the lock")
        finally:
            await other.close()
    # Released on exit: take it again at once.
    async with store.lock("again", timeout=0.2):
        pass

    # close() while the lock is held releases it and does not hang.
    other = await backend.open()
    async with other.lock("closing", timeout=1):
        await asyncio.wait_for(other.close(), timeout=5)
        async with store.lock("after close", timeout=1):
            pass


# -- durability -----------------------------------------------------------------------------------


async def test_acknowledged_writes_survive_sigkill_of_writer(backend: Backend) -> None:
    async with await backend.open():
        pass  # create and migrate first so the child only writes
    child = await spawn(WRITER_CHILD, backend.url)
    try:
        acked = [int(await read_line(child)) for _ in range(40)]
    finally:
        await kill(child)
    assert child.stdout is not None
    acked += [int(line) for line in (await child.stdout.read()).decode().split()]
    assert acked == list(range(len(acked)))

    if backend.path is not None:
        assert backend.raw("PRAGMA journal_mode") == [("wal",)]
        assert backend.raw("PRAGMA integrity_check") == [("ok",)]
    async with await backend.open() as store:
        records = await store.all()
        for i in acked:
            record = records[f"m{i}"]
            assert record.training["i"] == i
            assert [e.detail for e in await store.history(f"m{i}")] == [{"i": i}]


# -- backend specifics ------------------------------------------------------------------------------


async def test_sqlite_pragmas(tmp_path: Path) -> None:
    store = await open_state(f"sqlite:///{tmp_path}/state.db")
    try:
        conn = store._conn  # type: ignore[attr-defined]
        for pragma, expected in (("journal_mode", "wal"), ("synchronous", 2)):
            async with conn.execute(f"PRAGMA {pragma}") as cur:
                assert (await cur.fetchone())[0] == expected
        async with conn.execute("PRAGMA busy_timeout") as cur:
            assert (await cur.fetchone())[0] > 0
    finally:
        await store.close()


async def test_sqlite_relative_url_is_relative_to_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    async with await open_state("sqlite:///.reconciler/state.db") as store:
        assert store.created
    assert (tmp_path / ".reconciler" / "state.db").is_file()


def _not_a_database(tmp_path: Path) -> Path:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not a database" * 100)
    return path


def _a_directory(tmp_path: Path) -> Path:
    path = tmp_path / "state.db"
    path.mkdir()
    return path


def _parent_is_a_file(tmp_path: Path) -> Path:
    (tmp_path / "file").write_text("x")
    return tmp_path / "file" / "state.db"


@pytest.mark.parametrize(
    ("prepare", "match"),
    [
        (_not_a_database, "not a reconciler SQLite database"),
        (_a_directory, "unable to open"),
        (_parent_is_a_file, "cannot create the folder"),
    ],
)
async def test_sqlite_unusable_file_is_a_state_error(
    tmp_path: Path, prepare: Callable[[Path], Path], match: str
) -> None:
    path = prepare(tmp_path)
    with pytest.raises(StateError, match=match) as caught:
        await open_state(f"sqlite:///{path}")
    assert str(path.parent if prepare is _parent_is_a_file else path) in str(caught.value)
    assert "--state" in str(caught.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
async def test_sqlite_read_only_folder_is_a_state_error(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(StateError, match="writable") as caught:
            await open_state(f"sqlite:///{folder}/state.db")
        assert str(folder) in str(caught.value)
    finally:
        folder.chmod(0o700)


async def test_postgres_connection_failure_names_host_not_password() -> None:
    with pytest.raises(StateError) as caught:
        await open_state("postgresql://alice:s3cr3t-pw@127.0.0.1:1/proddb?connect_timeout=2")
    message = str(caught.value)
    assert "127.0.0.1:1" in message and "'proddb'" in message and "alice" in message
    assert "s3cr3t-pw" not in message and "RECONCILER_STATE" in message
    assert "s3cr3t-pw" not in repr(caught.value.__cause__)  # libpq does not echo it either


def test_redact_url() -> None:
    assert redact_url("postgresql://u:pw@h:5/db?sslmode=require") == ("postgresql://u:***@h:5/db?sslmode=require")
    assert redact_url("postgresql://h/db?password=pw&user=u") == ("postgresql://h/db?password=***&user=u")
    assert redact_url("postgresql://u@h/db") == "postgresql://u@h/db"


async def test_postgres_store_url_is_redacted(backend: Backend) -> None:
    if backend.name != "postgres":
        pytest.skip("PostgreSQL only")
    async with await backend.open() as store:
        assert store.url == redact_url(backend.url)
        assert store.created is False


async def test_postgres_missing_schema_is_a_state_error(postgres_url: str) -> None:
    url = with_search_path(postgres_url, f"missing_{uuid.uuid4().hex[:8]}")
    with pytest.raises(StateError, match="no schema"):
        await open_state(url)
