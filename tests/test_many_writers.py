"""Many writers, one truth (issue 10; design.md "Many writers"; docs/guarantees.md maps each fault).

- compare-and-set on both stores: a lost race returns False and writes nothing;
- the 409 (not-started) path never writes an older record over another writer's;
- three applies (in-process engines: the process boundary proves nothing there) and two daemons
  (processes: their leases are sessions) on one PostgreSQL state, random latency at the
  simulator, 20 drifts: one train call for each;
- `pg_terminate_backend` on every session of the leader, and kill -9 of the leader: the standby
  takes over within 15 s, nothing is trained twice;
- a daemon and an apply at once on SQLite.

PostgreSQL tests use a fresh database per test (conftest `postgres_url`) and skip without a server.
Every wait is on a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from helpers import DaemonProcess, Workspace, run_sql
from helpers import wait_until as wait_for
from test_daemon import HARDHATS, PROVIDER, start

from reconciler.domain import HistoryEvent, ModelRecord, RecordStatus
from reconciler.engine import Engine
from reconciler.outcomes import ApplyResult
from reconciler.plan import Action
from reconciler.report.exits import apply_exit_code
from reconciler.sandbox.faults import Fault, LoggedRequest
from reconciler.sandbox.server import Sandbox
from reconciler.spec import load_manifests
from reconciler.state import StateStore, open_state

NAME = "hardhat-detector"
MODEL = PROVIDER + "---\n" + HARDHATS  # Roboflow polled every second


def write_model(specs: Path, epochs: int) -> None:
    specs.mkdir(parents=True, exist_ok=True)
    (specs / "model.yaml").write_text(MODEL.replace("EPOCHS", str(epochs)))


def train_calls(sb: Sandbox, epochs: int | None = None) -> list[LoggedRequest]:
    calls = [r for r in sb.requests("roboflow", method="POST") if r.path.endswith("/train")]
    return [r for r in calls if epochs is None or r.json().get("epochs") == epochs]


async def until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """The async `wait_for`: await `check()` until truthy, with a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        got = await check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def stores(state_url: str) -> AsyncIterator[list[StateStore]]:
    """Two stores on one state: two writers."""
    opened = [await open_state(state_url), await open_state(state_url)]
    try:
        yield opened
    finally:
        for s in opened:
            await s.close()


def record(fingerprint: str = "f1", status: RecordStatus = RecordStatus.INTENT) -> ModelRecord:
    return ModelRecord(NAME, "roboflow", fingerprint, {"epochs": 1}, status)


async def events(store: StateStore) -> list[str]:
    return [e.event for e in await store.history(NAME)]


# ====================================================================== compare-and-set


async def test_save_if_writes_only_on_the_version_it_read(stores: list[StateStore]) -> None:
    a, b = stores
    mine = record("f1")
    assert await a.save_if(mine, None, HistoryEvent(NAME, "intent")) and mine.version == 1
    # another writer that also read "no record" loses: False, nothing written
    theirs = record("f2")
    lost = HistoryEvent(NAME, "intent")
    assert not await b.save_if(theirs, None, lost)
    assert theirs.version == 0 and lost.id is None
    got = await b.get(NAME)
    assert got is not None and got.fingerprint == "f1" and got.version == 1
    assert await events(b) == ["intent"]

    # on the version read: written, version + 1; on an older one: nothing
    acked = dataclasses.replace(got, status=RecordStatus.TRAINING)
    assert await b.save_if(acked, 1, HistoryEvent(NAME, "triggered")) and acked.version == 2
    stale = dataclasses.replace(mine, status=RecordStatus.FAILED)
    assert not await a.save_if(stale, 1, HistoryEvent(NAME, "refused"))
    got = await a.get(NAME)
    assert got is not None and got.status is RecordStatus.TRAINING and got.version == 2
    assert await events(a) == ["intent", "triggered"]

    # an unconditional save bumps the version too: a plan made before it loses
    await a.save(dataclasses.replace(acked, handle="h"))
    assert not await b.save_if(dataclasses.replace(acked), 2)
    assert not await b.delete_if(NAME, 2, HistoryEvent(NAME, "not-started"))
    assert await b.get(NAME) is not None and await events(b) == ["intent", "triggered"]
    assert await b.delete_if(NAME, 3, HistoryEvent(NAME, "not-started"))
    assert await b.get(NAME) is None and await events(b) == ["intent", "triggered", "not-started"]
    assert not await a.delete_if(NAME, 3)


async def test_concurrent_compare_and_set_has_one_winner(state_url: str) -> None:
    writers = [await open_state(state_url) for _ in range(5)]
    try:
        first = [record(f"f{i}") for i in range(5)]
        won = await asyncio.gather(
            *(
                w.save_if(r, None, HistoryEvent(NAME, "intent", detail={"i": i}))
                for i, (w, r) in enumerate(zip(writers, first, strict=True))
            )
        )
        assert sum(won) == 1
        winner = first[won.index(True)]
        stored = await writers[0].get(NAME)
        assert stored is not None and stored.fingerprint == winner.fingerprint
        assert len(await writers[0].history(NAME)) == 1
        # all read version 1, all write on it: again one winner
        nxt = [dataclasses.replace(winner, handle=f"h{i}") for i in range(5)]
        won = await asyncio.gather(*(w.save_if(r, 1) for w, r in zip(writers, nxt, strict=True)))
        assert sum(won) == 1
        stored = await writers[0].get(NAME)
        assert stored is not None and stored.version == 2 and stored.handle == nxt[won.index(True)].handle
    finally:
        for w in writers:
            await w.close()


async def test_existing_rows_get_version_1(state_url: str) -> None:
    async with await open_state(state_url) as store:
        await store.save(record())
    # back to the first release's schema: no version column, schema version 1
    prefix = "" if state_url.startswith("sqlite") else "reconciler_"
    statements = [
        f"ALTER TABLE {prefix}models DROP COLUMN version",
        f"ALTER TABLE {prefix}models DROP COLUMN provider_model",  # a later migration's column
        f"UPDATE {prefix}meta SET value = '1' WHERE key = 'schema_version'",
    ]
    run_sql(state_url, *statements)
    async with await open_state(state_url) as store:
        got = await store.get(NAME)
        assert got is not None and got.version == 1
        assert await store.save_if(dataclasses.replace(got, status=RecordStatus.TRAINING), 1)


# ====================================================================== the engine


@dataclasses.dataclass
class Project:
    specs: Path
    sandbox: Sandbox
    url: str

    def engine(self, state: StateStore) -> Engine:
        endpoints = {t: (self.sandbox.base_url(t), self.sandbox.sim(t).api_key) for t in self.sandbox.served}
        return Engine(load_manifests([self.specs]), state, env={}, endpoints=endpoints)

    async def apply_once(self) -> ApplyResult:
        """One in-process `apply`: its own store (a writer of its own), plan, apply."""
        async with await open_state(self.url) as state, self.engine(state) as engine:
            return await engine.apply(await engine.plan(list(engine.manifests.models.values())))


async def test_the_409_path_never_overwrites_a_newer_record(sandbox: Sandbox, tmp_path: Path, state_url: str) -> None:
    project = Project(tmp_path / "specs", sandbox, state_url)
    write_model(project.specs, 10)
    # our train call is held 1 s, then refused with 409 (nothing started); meanwhile another writer
    # (one that saw the training at the provider) moves the record on from our intent
    sandbox.inject(Fault(provider="roboflow", method="POST", path=r"/train$", delay=1.0, status=409))
    async with await open_state(state_url) as mine, await open_state(state_url) as other:

        async def another_writer() -> None:
            async def intent() -> ModelRecord | None:
                rec = await other.get(NAME)
                return rec if rec is not None and rec.status is RecordStatus.INTENT else None

            seen = await until(intent, 10, "our intent")
            newer = dataclasses.replace(seen, status=RecordStatus.TRAINING, handle="the-other-writer")
            assert await other.save_if(newer, seen.version, HistoryEvent(NAME, "settled"))

        async with project.engine(mine) as engine:
            plans = await engine.plan(list(engine.manifests.models.values()))
            assert plans[0].action is Action.TRAIN
            racing = asyncio.create_task(another_writer())
            result = await engine.apply(plans)
            await racing
        assert not result.outcomes[NAME].started
        got = await other.get(NAME)
        assert got is not None and got.status is RecordStatus.TRAINING and got.handle == "the-other-writer"
        # our call's fate is in the history, after the other writer's event; the record is theirs
        assert await events(other) == ["intent", "settled", "not-started"]


async def test_a_writer_whose_intent_loses_replans_and_never_trains(sandbox: Sandbox, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    project = Project(tmp_path / "specs", sandbox, url)
    write_model(project.specs, 10)
    async with await open_state(url) as a, await open_state(url) as b:
        async with project.engine(a) as first, project.engine(b) as second:
            models = list(first.manifests.models.values())
            plans_a, plans_b = await first.plan(models), await second.plan(models)
            assert plans_a[0].action is plans_b[0].action is Action.TRAIN
            won = await first.apply(plans_a)
            lost = await second.apply(plans_b)
        assert won.outcomes[NAME].started and apply_exit_code(plans_b, lost.outcomes.values()) == 0
        outcome = lost.outcomes[NAME]
        assert not outcome.started and outcome.superseded and "another writer" in outcome.detail
        # re-planned in place: it sees the first's training
        assert plans_b[0].action in (Action.WAIT, Action.HOLD)
    assert len(train_calls(sandbox)) == 1


# ====================================================================== daemons


def role(d: DaemonProcess) -> str | None:
    """The daemon's `/status` role, None while it does not answer."""
    try:
        return str(d.status()["role"])
    except httpx.HTTPError:
        return None


def ready(d: DaemonProcess) -> bool:
    try:
        return d.get("/readyz").status_code == 200
    except httpx.HTTPError:
        return False


def pg_daemon(ws: Workspace, url: str, name: str, daemons: list[DaemonProcess]) -> DaemonProcess:
    """A daemon on the PostgreSQL state whose sessions carry `application_name=name`."""
    named = f"{url}{'&' if '?' in url else '?'}application_name={name}"
    env = {"RECONCILER_STATE": named}  # `start` polls every 0.2 s
    return start(daemons, ws, env=env, name=name)


def in_sync(sb: Sandbox, url: str, epochs: int) -> Callable[[], bool]:
    """True once the state records a succeeded training of `epochs`."""

    async def read() -> bool:
        async with await open_state(url) as state:
            rec = await state.get(NAME)
        return (
            rec is not None
            and rec.status is RecordStatus.SUCCEEDED
            and rec.training.get("training", {}).get("epochs") == epochs
        )

    return lambda: asyncio.run(read())


def leader_and_standby(ws: Workspace, url: str, daemons: list[DaemonProcess]) -> tuple[DaemonProcess, DaemonProcess]:
    """Two daemons on `url`: the first leads and has trained the first drift (epochs 10), the
    second stands by (alive, not ready, polling nothing)."""
    ws.sandbox.sim("roboflow").training_seconds = 0.3
    write_model(ws.specs, 10)
    a = pg_daemon(ws, url, "daemon-a", daemons)
    a.wait_ready(30)
    wait_for(in_sync(ws.sandbox, url, 10), 30, "the first drift trained")
    b = pg_daemon(ws, url, "daemon-b", daemons)
    wait_for(lambda: role(b) == "standby" and "standing by" in b.stderr(), 30, "the second daemon to stand by")
    assert role(a) == "leader"
    assert b.get("/readyz").status_code == 503 and b.get("/healthz").status_code == 200
    return a, b


def test_three_applies_and_two_daemons_train_each_drift_once(
    workspace: Workspace, postgres_url: str, daemons: list[DaemonProcess]
) -> None:
    ws, sb = workspace, workspace.sandbox
    leader_and_standby(ws, postgres_url, daemons)
    project = Project(ws.specs, sb, postgres_url)
    rng = random.Random(10)
    lost_races = 0
    started = time.monotonic()
    for epochs in range(11, 31):  # 20 drifts
        for _ in range(4):  # random latency on reads and train calls, different for each request
            sb.inject(Fault(provider="roboflow", method="GET", delay=rng.uniform(0, 0.2)))
            sb.inject(Fault(provider="roboflow", method="POST", path=r"/train$", delay=rng.uniform(0, 0.3)))
        write_model(ws.specs, epochs)  # the daemons' watcher sees it too

        async def race() -> list[ApplyResult]:
            async def one(delay: float) -> ApplyResult:
                await asyncio.sleep(delay)
                return await project.apply_once()

            return await asyncio.gather(*(one(rng.uniform(0, 0.15)) for _ in range(3)))

        results = asyncio.run(race())
        assert all(o.started or o.superseded for r in results for o in r.outcomes.values())
        lost_races += sum(1 for r in results for o in r.outcomes.values() if o.superseded)
        wait_for(in_sync(sb, postgres_url, epochs), 20, f"the drift to epochs {epochs} trained")
        assert len(train_calls(sb, epochs)) == 1, f"epochs {epochs}: {len(train_calls(sb, epochs))} train calls"
    assert time.monotonic() - started < 60
    assert len(train_calls(sb)) == 21  # the first drift, then one per round
    assert lost_races > 0  # the writers did race for intents (and the losers sent nothing)


def terminate_sessions(url: str, application_name: str) -> int:
    with psycopg.connect(url, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", (application_name,)
        ).fetchall()
    return len(rows)


def test_terminated_sessions_make_the_leader_step_down_and_the_standby_take_over(
    workspace: Workspace, postgres_url: str, daemons: list[DaemonProcess]
) -> None:
    ws, sb = workspace, workspace.sandbox
    a, b = leader_and_standby(ws, postgres_url, daemons)
    write_model(ws.specs, 11)  # a drift, mid-run
    assert terminate_sessions(postgres_url, "daemon-a") >= 2  # its queries' session and its lease's
    # generous waits: on a loaded 2-core host the processes are slow to be scheduled; the 15 s
    # takeover figure itself is measured by benchmarks/failover.py
    wait_for(lambda: "lost the leader lease" in a.stderr(), 30, "the old leader to log the lost lease")
    wait_for(lambda: not ready(a), 15, "the old leader's /readyz to answer 503")
    wait_for(lambda: ready(b), 30, "the standby to take over")
    assert role(b) == "leader" and role(a) == "standby"
    wait_for(in_sync(sb, postgres_url, 11), 60, "the drift trained")
    assert len(train_calls(sb, 11)) == 1
    # the old leader keeps standing by and triggers nothing; the next drift is the new leader's
    write_model(ws.specs, 12)
    wait_for(in_sync(sb, postgres_url, 12), 60, "the next drift trained")
    assert len(train_calls(sb, 12)) == 1 and role(a) == "standby"


def test_kill_9_of_the_leader_the_standby_triggers_within_15_s(
    workspace: Workspace, postgres_url: str, daemons: list[DaemonProcess]
) -> None:
    ws, sb = workspace, workspace.sandbox
    a, b = leader_and_standby(ws, postgres_url, daemons)
    a.proc.send_signal(signal.SIGKILL)
    killed = time.time()
    a.proc.wait(timeout=5)
    write_model(ws.specs, 11)
    (call,) = wait_for(lambda: train_calls(sb, 11), 20, "the standby's first train call")
    assert call.at - killed < 15
    wait_for(in_sync(sb, postgres_url, 11), 20, "the drift trained")
    assert role(b) == "leader" and len(train_calls(sb, 11)) == 1


def test_a_daemon_and_an_apply_at_once_on_sqlite(workspace: Workspace, daemons: list[DaemonProcess]) -> None:
    ws, sb = workspace, workspace.sandbox
    sb.sim("roboflow").training_seconds = 0.3
    write_model(ws.specs, 10)
    d = start(daemons, ws)
    d.wait_ready(30)
    wait_for(in_sync(sb, ws.state_url, 10), 30, "the first drift trained")
    for epochs in (11, 12, 13):
        write_model(ws.specs, epochs)  # the daemon and the apply see the drift at once
        started = time.monotonic()
        res = ws.run("apply", "--lock-timeout", "1s")
        assert res.code == 0, res.output  # never waits for the daemon (no lock), never fails
        assert time.monotonic() - started < 15
        wait_for(in_sync(sb, ws.state_url, epochs), 20, f"the drift to epochs {epochs} trained")
        assert len(train_calls(sb, epochs)) == 1
    assert role(d) == "leader"
    shown = ws.run("status", "--output", "json")
    assert shown.code == 0 and shown.json()["role"] == "cli", shown.output
