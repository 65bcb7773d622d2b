"""Spend guards (issue 12; design.md "Spend guards"): no runaway paid trainings.

- blast radius: `apply --max-trainings N` (or `RECONCILER_MAX_TRAININGS`) over the limit starts
  nothing (the simulator's request log shows no train call) and exits 1 saying how to raise it;
  `plan` shows the count in text, JSON and Markdown;
- the daemon's rate: `--max-trainings-per-hour` holds with reason `budget` on an injected clock;
- a provider's `max_trainings_per_day`, shared by two writers racing on one PostgreSQL (or
  SQLite) state: exactly the budget's trainings, the rest `hold budget`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from helpers import Gate, Workspace, by_name, codes, train_calls
from test_daemon_parts import MODEL

from reconciler.budget import DAY, Limits
from reconciler.daemon import DaemonOptions
from reconciler.daemon.lifecycle import Daemon
from reconciler.domain import RecordStatus
from reconciler.engine import Engine
from reconciler.outcomes import ApplyResult
from reconciler.plan import Action, Budget, ModelPlan, Reason, limit_budget
from reconciler.sandbox.roboflow.simulator import RoboflowSimulator
from reconciler.sandbox.server import Sandbox
from reconciler.seams import Seams
from reconciler.spec import load_manifests
from reconciler.state import open_state

# `state_url` (conftest): SQLite and a fresh PostgreSQL schema
SANDBOX_TRAINING_SECONDS = 30  # trainings stay in flight: nothing ends during a test

PROVIDER = """\
apiVersion: reconciler/v1
kind: Provider
metadata: {{name: roboflow}}
spec: {{type: roboflow, requests_per_second: 1000, max_concurrent_trainings: 100{extra}}}
"""


def names(n: int) -> list[str]:
    return [f"model-{i:02d}" for i in range(n)]


def manifests(specs: Path, n: int, *, per_day: int | None = None) -> list[str]:
    """`n` Roboflow models (a project each) under one Provider manifest, in `specs/models.yaml`."""
    extra = f", max_trainings_per_day: {per_day}" if per_day is not None else ""
    text = PROVIDER.format(extra=extra) + "".join("---\n" + MODEL.format(name=name, epochs=10) for name in names(n))
    specs.mkdir(parents=True, exist_ok=True)
    (specs / "models.yaml").write_text(text)
    return names(n)


def write_models(specs: Path, sb: Sandbox, n: int, *, per_day: int | None = None) -> list[str]:
    """`n` never-trained Roboflow models, their projects created at the simulator."""
    rf = sb.sim("roboflow")
    assert isinstance(rf, RoboflowSimulator)
    for name in names(n):
        rf.add_project("acme", name, versions=3)
    return manifests(specs, n, per_day=per_day)


# ====================================================================== blast radius


def test_apply_over_max_trainings_starts_nothing_and_says_how_to_raise_it(workspace: Workspace) -> None:
    write_models(workspace.specs, workspace.sandbox, 5)
    res = workspace.run("apply", "--max-trainings", "4")
    assert res.code == 1, res.output
    assert train_calls(workspace) == []
    assert "apply refused: this plan would start 5 trainings, more than --max-trainings 4" in res.stderr
    assert "--max-trainings 5" in res.stderr and "RECONCILER_MAX_TRAININGS=5" in res.stderr
    # nothing was written either: a plan still shows all five as train
    code, doc = workspace.plan_json("--max-trainings", "5")
    assert code == 2 and doc["summary"] == {"train": 5} and "max_trainings" not in doc
    # the same from the environment, and JSON says it too
    env = workspace.env(RECONCILER_MAX_TRAININGS="2")
    res = workspace.run("apply", "--output", "json", env=env)
    assert res.code == 1 and train_calls(workspace) == []
    assert res.json()["max_trainings"] == {"would_start": 5, "limit": 2} and res.json()["outcomes"] == {}
    # at the limit, apply goes ahead
    res = workspace.run("apply", env=workspace.env(RECONCILER_MAX_TRAININGS="5"))
    assert res.code == 0, res.output
    assert len(train_calls(workspace)) == 5


def test_apply_default_limit_is_20(workspace: Workspace) -> None:
    write_models(workspace.specs, workspace.sandbox, 21)
    res = workspace.run("apply")
    assert res.code == 1 and "more than --max-trainings 20" in res.stderr
    assert train_calls(workspace) == []


def test_plan_shows_that_apply_would_refuse_in_text_json_and_markdown(workspace: Workspace) -> None:
    write_models(workspace.specs, workspace.sandbox, 3)
    env = workspace.env(RECONCILER_MAX_TRAININGS="2")
    text = workspace.run("plan", env=env)
    assert text.code == 2, text.output
    first, *rest = text.stdout.splitlines()
    assert first.startswith("apply would refuse: this plan would start 3 trainings, more than --max-trainings 2")
    assert "RECONCILER_MAX_TRAININGS=3" in first and rest[0] == "train (3):"
    code, doc = workspace.plan_json(env=env)
    assert code == 2 and doc["max_trainings"] == {"would_start": 3, "limit": 2}
    assert {m["action"] for m in doc["models"]} == {"train"}
    md = workspace.run("plan", "--output", "markdown", "--max-trainings", "1")
    assert md.code == 2 and "**apply would refuse**: this plan would start 3 trainings" in md.stdout
    assert "`--max-trainings` 1" in md.stdout
    # within the limit nothing is said
    within = workspace.run("plan", "--max-trainings", "3")
    assert within.code == 2 and "apply would refuse" not in within.stdout
    assert "max_trainings" not in workspace.plan_json("--max-trainings", "3")[1]


def test_a_bad_max_trainings_variable_is_a_clear_error(workspace: Workspace) -> None:
    write_models(workspace.specs, workspace.sandbox, 1)
    res = workspace.run("apply", env=workspace.env(RECONCILER_MAX_TRAININGS="lots"))
    assert res.code == 1 and "RECONCILER_MAX_TRAININGS must be a whole number" in res.stderr
    assert train_calls(workspace) == []


# ====================================================================== the pure budget


NOW = datetime(2026, 1, 2, 12, 0, tzinfo=UTC)


def test_limit_budget_counts_the_window_and_says_when_the_next_is_allowed(tmp_path: Path) -> None:
    manifests(tmp_path, 5)
    models = load_manifests([tmp_path])
    actions = [Action.TRAIN, Action.TRAIN, Action.RETRY, Action.WAIT, Action.TRAIN]
    plans = [ModelPlan(models.models[n], a, [Reason("never-trained")]) for n, a in zip(names(5), actions, strict=True)]
    started = [NOW - timedelta(hours=30), NOW - timedelta(hours=5), NOW - timedelta(hours=2)]
    budget = Budget(3, timedelta(hours=24), started, "at p in the last 24 h", "raise it")
    # the last model spends from another budget (none): unlimited
    limit_budget(plans, {"p": budget}, lambda p: "q" if p.name == names(5)[4] else "p", NOW)
    got = [p.action for p in plans]
    # two started inside the window (the 30 h old one is out): one more allowed, in name order
    assert got == [Action.TRAIN, Action.HOLD, Action.HOLD, Action.WAIT, Action.TRAIN]
    b = plans[1]
    assert b.reasons[-1].code == "budget" and b.not_before == NOW - timedelta(hours=5) + timedelta(hours=24)
    assert "3 trainings started at p in the last 24 h, the limit is 3" in b.reasons[-1].detail
    assert "raise it" in b.reasons[-1].detail and "2026-01-03T07:00:00+00:00" in b.reasons[-1].detail


# ====================================================================== the daemon's hourly rate


class SetClock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def hourly(tmp_path: Path, sandbox: Sandbox) -> Iterator[tuple[Daemon, SetClock, list[str]]]:
    specs = tmp_path / "specs"
    models = write_models(specs, sandbox, 3)
    opts = DaemonOptions(
        paths=[str(specs)],
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        resync=timedelta(hours=1),
        max_trainings_per_hour=2,
    )
    clock = SetClock()
    d = Daemon(opts, env={}, seams=Seams(clock=clock))
    d._load("startup")
    d.loaded = d.locked = True
    d.sandbox = sandbox
    yield d, clock, models


async def test_daemon_holds_beyond_max_trainings_per_hour_until_the_rolling_hour_allows(
    hourly: tuple[Daemon, SetClock, list[str]], sandbox: Sandbox
) -> None:
    d, clock, models = hourly

    async def fence() -> bool:
        return True

    d.fence = fence  # type: ignore[method-assign]
    d.state = await open_state(d.opts.state_url)
    try:
        await d._refresh_engine()
        await d._reconcile(dict.fromkeys(models, "startup"))
        settled = d.plans.settled
        assert [settled[n].action for n in models] == [Action.TRAIN, Action.TRAIN, Action.HOLD]
        held = settled[models[2]]
        detail = held.reasons[-1].detail
        assert held.reasons[-1].code == "budget"
        assert "2 trainings started by the daemons on this state in the last hour, the limit is 2" in detail
        assert "--max-trainings-per-hour" in detail
        assert held.not_before == clock.now + timedelta(hours=1)
        assert (clock.now + timedelta(hours=1)).isoformat(timespec="seconds") in detail
        assert d.schedule.wake_at[models[2]] == held.not_before
        assert len(train_calls(sandbox)) == 2

        clock.now += timedelta(minutes=59)  # still inside the hour: held
        await d._reconcile({models[2]: "retry"})
        assert d.plans.settled[models[2]].action is Action.HOLD and len(train_calls(sandbox)) == 2
        clock.now += timedelta(minutes=1, seconds=1)  # the first two left the rolling hour
        await d._reconcile({models[2]: "retry"})
        assert d.plans.settled[models[2]].action is Action.TRAIN and len(train_calls(sandbox)) == 3
    finally:
        if d.engine is not None:
            await d.engine.aclose()
        await d.state.close()


# ====================================================================== the provider's daily budget


@dataclass
class Project:
    specs: Path
    sandbox: Sandbox
    url: str

    def engine(self, state: object, writer: str = "apply") -> Engine:
        endpoints = {t: (self.sandbox.base_url(t), self.sandbox.sim(t).api_key) for t in self.sandbox.served}
        return Engine(load_manifests([self.specs]), state, env={}, endpoints=endpoints, limits=Limits(writer))  # type: ignore[arg-type]


async def test_two_writers_racing_never_exceed_a_provider_budget(
    sandbox: Sandbox, tmp_path: Path, state_url: str
) -> None:
    """Both plan from the same count (nothing started yet), on disjoint models, then apply at once:
    only the state's atomic count-and-insert at the intent keeps them to the budget."""
    project = Project(tmp_path / "specs", sandbox, state_url)
    models = write_models(project.specs, sandbox, 6, per_day=3)
    halves = (models[:3], models[3:])
    gate = Gate(sandbox, ("roboflow",), r"/train$")  # train calls held in flight: the race stays open
    async with await open_state(state_url) as a, await open_state(state_url) as b:
        async with project.engine(a) as first, project.engine(b, "daemon") as second:
            plans = []
            for engine, half in zip((first, second), halves, strict=True):
                ps = await engine.plan([engine.manifests.models[n] for n in half])
                assert [p.action for p in ps] == [Action.TRAIN] * 3
                plans.append(ps)
            applying = [asyncio.create_task(e.apply(ps)) for e, ps in zip((first, second), plans, strict=True)]
            await asyncio.to_thread(lambda: wait_gate(gate, 3))
            gate.open()
            results: list[ApplyResult] = list(await asyncio.gather(*applying))
        started = [n for r in results for n, o in r.outcomes.items() if o.started]
        held = [n for r in results for n, o in r.outcomes.items() if o.over_budget]
        assert len(started) == 3 and len(held) == 3, results
        assert len(train_calls(sandbox)) == 3
        for r in results:
            for p in r.plans:
                if p.name in held:
                    assert p.action is Action.HOLD and codes_of(p) == ["never-trained", "budget"]
        # a later plan, by a third writer, holds the rest too
        async with project.engine(a) as third:
            again = await third.plan(list(third.manifests.models.values()))
        assert sorted(p.name for p in again if p.action is Action.HOLD) == sorted(held)
        assert len(await a.starts_since(datetime.now(UTC) - timedelta(hours=1))) == 3
    gate.remove()


def wait_gate(gate: Gate, n: int) -> None:
    from helpers import wait_until

    # the first writer's three train calls reach the simulator; the second's intents were refused
    wait_until(lambda: gate.count("roboflow") >= n, 20, f"{n} train calls at the gate")


def codes_of(p: ModelPlan) -> list[str]:
    return [r.code for r in p.reasons]


def test_two_apply_processes_share_a_provider_budget(workspace: Workspace, state_url: str) -> None:
    """Two real `apply` processes at once on one state (PostgreSQL, SQLite), with latency at the
    simulator: exactly the budget's train calls between them, the rest `hold budget`."""
    write_models(workspace.specs, workspace.sandbox, 6, per_day=3)
    workspace.sandbox.latency = 0.05
    env = workspace.env(RECONCILER_STATE=state_url)
    procs = [workspace.start_process("apply", "--output", "json", env=env) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert len(train_calls(workspace)) == 3
    code, doc = workspace.plan_json(env=env)
    models = by_name(doc)
    held = [n for n, m in models.items() if m["action"] == "hold"]
    assert code == 0 and len(held) == 3 and all(codes(models[n])[-1] == "budget" for n in held)
    assert "max_trainings_per_day of Provider 'roboflow'" in models[held[0]]["reasons"][-1]["detail"]


async def test_a_train_call_that_started_nothing_spends_no_budget(tmp_path: Path, sandbox: Sandbox) -> None:
    from reconciler.sandbox.faults import Fault

    url = f"sqlite:///{tmp_path / 'state.db'}"
    project = Project(tmp_path / "specs", sandbox, url)
    write_models(project.specs, sandbox, 2, per_day=1)
    sandbox.inject(Fault(provider="roboflow", method="POST", path=r"/train$", status=429, times=1))
    async with await open_state(url) as state, project.engine(state) as engine:
        first = await engine.apply(await engine.plan(list(engine.manifests.models.values())))
        assert [o.held for o in first.outcomes.values()] == [True]  # the provider said 429: nothing started
        assert await state.starts_since(datetime.now(UTC) - timedelta(hours=1)) == []
        second = await engine.apply(await engine.plan(list(engine.manifests.models.values())))
        assert [o.started for o in second.outcomes.values()] == [True]
        rec = await state.get(names(2)[0])
        assert rec is not None and rec.status is RecordStatus.TRAINING


def test_provider_schema_has_max_trainings_per_day(tmp_path: Path) -> None:
    from reconciler.schema import json_schema

    prop = json_schema()["$defs"]["ProviderSpecBody"]["properties"]["max_trainings_per_day"]
    assert prop["anyOf"][0]["minimum"] == 1
    bad = tmp_path / "p.yaml"
    bad.write_text(PROVIDER.format(extra=", max_trainings_per_day: 0"))
    from reconciler.errors import ManifestError

    with pytest.raises(ManifestError) as info:
        load_manifests([bad])
    assert any("max_trainings_per_day" in str(p) for p in info.value.problems)


async def test_count_and_insert_is_atomic_across_many_writers(state_url: str) -> None:
    """Ten writers (connections of their own) write intents of ten models at once under a budget
    of 3: exactly 3 are written, with their starts; the others write nothing."""
    from reconciler.domain import HistoryEvent, ModelRecord

    writers = [await open_state(state_url) for _ in range(10)]
    try:
        now = datetime.now(UTC)
        intents = [ModelRecord(f"m{i}", "roboflow", "f", {}, RecordStatus.INTENT, triggered_at=now) for i in range(10)]
        won = await asyncio.gather(
            *(
                w.save_intent(r, None, HistoryEvent(r.name, "intent"), writer="apply", daily_limit=3)
                for w, r in zip(writers, intents, strict=True)
            )
        )
        assert sum(won) == 3
        starts = await writers[0].starts_since(now - timedelta(hours=24))
        assert sorted(s.model for s in starts) == sorted(r.name for r, w in zip(intents, won, strict=True) if w)
        assert len(await writers[0].all()) == 3
        # a start released (its call started nothing) gives its slot back
        released = starts[0]
        await writers[1].release_start(released.model, released.at)
        late = ModelRecord("late", "roboflow", "f", {}, RecordStatus.INTENT, triggered_at=now)
        assert await writers[2].save_intent(late, None, writer="daemon", daily_limit=3)
        another = ModelRecord("another", "roboflow", "f", {}, RecordStatus.INTENT, triggered_at=now)
        assert not await writers[3].save_intent(another, None, writer="daemon", daily_limit=3)
        # other providers and older starts do not count
        other = ModelRecord("other", "lucid", "f", {}, RecordStatus.INTENT, triggered_at=now)
        assert await writers[3].save_intent(other, None, writer="apply", daily_limit=1)
        tomorrow = ModelRecord("tomorrow", "roboflow", "f", {}, RecordStatus.INTENT, triggered_at=now + DAY)
        assert await writers[4].save_intent(tomorrow, None, writer="apply", daily_limit=3)
    finally:
        for w in writers:
            await w.close()


def test_daemon_flag_sets_the_hourly_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    import reconciler.daemon.command as command

    seen: list[DaemonOptions] = []

    def run(opts: DaemonOptions) -> int:
        seen.append(opts)
        return 0

    monkeypatch.setattr(command, "run_daemon", run)
    runner = CliRunner()
    assert runner.invoke(command.daemon, ["specs", "--max-trainings-per-hour", "5"]).exit_code == 0
    assert runner.invoke(command.daemon, ["specs"]).exit_code == 0
    assert [o.max_trainings_per_hour for o in seen] == [5, 20]
    refused = runner.invoke(command.daemon, ["specs", "--max-trainings-per-hour", "0"])
    assert refused.exit_code != 0 and "--max-trainings-per-hour" in refused.output
