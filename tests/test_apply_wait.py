"""`apply --wait` with max_concurrent_trainings: held models start as slots free, in one apply;
its progress as a live table on a terminal and as throttled lines in CI (a fake clock, no sleeps)."""

from __future__ import annotations

import asyncio
import io
import itertools
import threading
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from helpers import Workspace, roboflow_model, train_calls, write_text
from test_report import AT, Captured, record, tick

from reconciler import runtime
from reconciler.domain import Observation, RecordStatus, TrainingStatus
from reconciler.engine import Engine
from reconciler.outcomes import ApplyResult, TriggerOutcome
from reconciler.plan import Action
from reconciler.report.commands import ApplyReport
from reconciler.report.exits import apply_exit_code
from reconciler.report.progress import Lines, LiveTable
from reconciler.sandbox.faults import Fault
from reconciler.sandbox.server import Sandbox
from reconciler.slots import Phase, Tick, WaitResult, wait_for_all
from reconciler.spec import load_manifests
from reconciler.state import open_state
from reconciler.state.base import StateStore

ONE_AT_A_TIME = """\
apiVersion: reconciler/v1
kind: Provider
metadata: {name: roboflow}
spec: {type: roboflow, requests_per_second: 1000, max_concurrent_trainings: 1}
"""
#: three Roboflow models, one per project of workspace acme (`with_pallets` adds the third)
THREE = {
    "alpha": roboflow_model("alpha", project="hardhats", version=3),
    "bravo": roboflow_model("bravo", project="pallets", version=2),
    "charlie": roboflow_model("charlie", project="forklifts", version=2),
}


def with_pallets(sandbox: Sandbox) -> None:
    sandbox.sim("roboflow").add_project("acme", "pallets", versions=2)  # type: ignore[attr-defined]


def three_models_one_slot(ws: Workspace) -> None:
    with_pallets(ws.sandbox)
    ws.write("provider.yaml", ONE_AT_A_TIME)
    for name, text in THREE.items():
        ws.write(f"{name}.yaml", text)


def test_one_apply_wait_trains_three_models_through_one_slot(workspace: Workspace) -> None:
    ws = workspace
    three_models_one_slot(ws)
    code, doc = ws.plan_json()
    assert code == 2
    assert {m["name"]: m["action"] for m in doc["models"]} == {"alpha": "train", "bravo": "hold", "charlie": "hold"}

    applied = ws.run("apply", "--wait")
    assert applied.code == 0, applied.output
    assert len(train_calls(ws.sandbox)) == 3  # every model trained, each once
    for name in THREE:
        assert ws.story(name) == ["intent", "triggered", "succeeded"], name
        assert f"{name}: succeeded" in applied.stderr
    assert "bravo: waiting for a slot (1 trainings in flight at roboflow" in applied.stderr
    # never two at once: each training started after the one before it had ended
    spans = sorted(
        (min(e["at"] for e in events if e["event"] == "intent"), max(e["at"] for e in events))
        for events in (ws.events(n) for n in THREE)
    )
    assert all(later[0] >= earlier[1] for earlier, later in itertools.pairwise(spans)), spans

    code, doc = ws.plan_json()
    assert code == 0, doc  # no hold left for a second apply
    assert {m["action"] for m in doc["models"]} == {"none"}


def test_with_wait_the_models_held_for_a_slot_count_towards_max_trainings(workspace: Workspace) -> None:
    """--max-trainings is the blast radius of one apply: with --wait, that apply also starts the
    models held at max_concurrent_trainings, so 1 train + 2 holds is 3 > 2 and it starts none."""
    ws = workspace
    three_models_one_slot(ws)
    refused = ws.run("apply", "--wait", "--max-trainings", "2", "--output", "json")
    assert refused.code == 1, refused.output
    assert refused.json()["max_trainings"] == {"would_start": 3, "limit": 2}
    assert "nothing was started" in refused.stderr
    assert train_calls(ws.sandbox) == []
    assert ws.run("apply", "--wait", "--max-trainings", "3").code == 0
    assert len(train_calls(ws.sandbox)) == 3


def test_a_model_still_waiting_for_a_slot_at_the_timeout_fails_the_apply(workspace: Workspace) -> None:
    ws = workspace
    ws.sandbox.sim("roboflow").training_seconds = 60  # the one slot stays taken
    three_models_one_slot(ws)
    applied = ws.run("apply", "--wait", "--timeout", "0.3s", "--output", "json")
    assert applied.code == 1, applied.output
    outcomes = applied.json()["outcomes"]
    assert outcomes["alpha"]["started"] is True
    for name in ("bravo", "charlie"):
        assert outcomes[name]["started"] is False
        assert "no slot at roboflow freed before the --timeout came" in outcomes[name]["detail"]
        assert "the next apply starts it" in applied.stderr
    assert len(train_calls(ws.sandbox)) == 1


def test_a_model_the_provider_refuses_for_now_is_started_once_one_of_ours_ends(workspace: Workspace) -> None:
    """A 429 on a train call (the provider counts trainings its own way): with --wait, that model
    is tried again when a followed training at the same provider ends, in the same apply."""
    ws = workspace
    with_pallets(ws.sandbox)
    ws.write("alpha.yaml", THREE["alpha"])
    ws.write("bravo.yaml", THREE["bravo"])
    ws.sandbox.inject(Fault(provider="roboflow", method="POST", path="/pallets/2/train$", status=429, retry_after=0))
    applied = ws.run("apply", "--wait")
    assert applied.code == 0, applied.output
    lines = applied.stderr.splitlines()
    held = next(i for i, line in enumerate(lines) if line.startswith("bravo: held by the provider"))
    assert held < lines.index("alpha: succeeded") < lines.index("bravo: training started")
    assert [r.status for r in train_calls(ws.sandbox) if "/pallets/" in r.path] == [429, 200]
    assert ws.story("bravo") == ["intent", "not-started", "intent", "triggered", "succeeded"]


async def test_a_held_model_another_writer_starts_first_is_followed_never_trained_twice(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """The slot frees; between this run's new plan of the held model and its intent, another
    writer starts that model. The intent's compare-and-set fails: it re-plans, follows the other
    writer's training and never sends a second train call."""
    specs = tmp_path / "specs"
    with_pallets(sandbox)
    write_text(specs / "provider.yaml", ONE_AT_A_TIME)
    for name in ("alpha", "bravo"):
        write_text(specs / f"{name}.yaml", THREE[name])
    url = f"sqlite:///{tmp_path / 'state.db'}"
    endpoints = {t: (sandbox.base_url(t), sandbox.sim(t).api_key) for t in sandbox.served}

    def engine(state: StateStore) -> Engine:
        return Engine(
            load_manifests([specs]), state, env={}, endpoints=endpoints, poll_interval=timedelta(seconds=0.05)
        )

    async def other_writer() -> None:  # its own process, as it were: its own loop and store
        async with await open_state(url) as state, engine(state) as other:
            bravo = other.manifests.models["bravo"]
            result = await other.apply(await other.plan([bravo]))
            assert result.outcomes["bravo"].started

    class RaceWhenTheSlotFrees:
        def ticks(self, ticks: Sequence[Tick]) -> None:
            if any(t.name == "alpha" and t.phase is Phase.ENDED for t in ticks):
                assert not any(t.name == "bravo" for t in ticks)  # about to be started by this run
                racer = threading.Thread(target=lambda: asyncio.run(other_writer()))
                racer.start()
                racer.join()

        def started(self, outcome: TriggerOutcome) -> None:
            pass

    async with await open_state(url) as state, engine(state) as mine:
        plans = await mine.plan(list(mine.manifests.models.values()))
        assert [p.action for p in plans] == [Action.TRAIN, Action.HOLD]
        result = await mine.apply(plans)
        waited = await wait_for_all(mine, plans, result, listener=RaceWhenTheSlotFrees())
    bravo = waited.outcomes["bravo"]
    assert not bravo.started and bravo.superseded and "another writer changed the record first" in bravo.detail
    assert waited.followed == ["alpha", "bravo"]
    assert {n: r.status if r else None for n, r in waited.final.items()} == {
        "alpha": RecordStatus.SUCCEEDED,
        "bravo": RecordStatus.SUCCEEDED,
    }
    assert apply_exit_code(plans, [*result.outcomes.values(), *waited.outcomes.values()], waited.final.values()) == 0
    assert len(train_calls(sandbox)) == 2  # one per model: the other writer's for bravo


def test_lines_say_each_change_and_progress_at_most_every_30_seconds() -> None:
    said: list[str] = []
    lines = Lines(said.append)
    rec = record("a", RecordStatus.TRAINING, triggered_at=AT)

    def at(seconds: float, progress: float | None, state: str = "training") -> None:
        obs = Observation(TrainingStatus.RUNNING, provider_state=state, progress=progress)
        lines.ticks([tick("a", Phase.RUNNING, obs, rec, AT + timedelta(seconds=seconds))])

    at(0, 0.10)
    at(10, 0.20)  # progress only, 10 s after the last line: not said
    at(29.9, 0.30)
    at(30, 0.40)  # 30 s: said
    at(31, 0.40, "evaluating")  # the state changed: said at once
    at(32, 0.50, "evaluating")
    at(33, 0.50, "evaluating")
    at(62, 0.90, "evaluating")
    lines.ticks([tick("a", Phase.ENDED, Observation(TrainingStatus.SUCCEEDED), record("a", RecordStatus.SUCCEEDED))])
    queued = tick("b", Phase.QUEUED, None, None, AT, detail="1 trainings in flight at roboflow")
    lines.ticks([queued, queued])  # the same line is never repeated
    assert said == [
        "a: training 10%",
        "a: training 40%",
        "a: evaluating 40%",
        "a: evaluating 90%",
        "a: succeeded",
        "b: waiting for a slot (1 trainings in flight at roboflow)",
    ]


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_live_table_is_redrawn_in_place_on_a_terminal() -> None:
    tty = FakeTty()
    con = Captured()
    report = ApplyReport("text", con, wait=True, terminal=tty, width=200)
    assert isinstance(report.view, LiveTable)
    report.applied(ApplyResult([], {"a": TriggerOutcome("a", True, "training started")}))
    running = Observation(TrainingStatus.RUNNING, provider_state="training", progress=0.25)
    started = record("a", RecordStatus.TRAINING, triggered_at=AT)
    queued = tick("b", Phase.QUEUED, None, None, AT, since=AT, detail="1 trainings in flight at roboflow")
    report.ticks([tick("a", Phase.RUNNING, running, started, AT + timedelta(seconds=5), since=AT), queued])
    first = tty.getvalue()
    assert first == (
        "MODEL  PROVIDER  STATE               PROGRESS  ELAPSED\n"
        "a      roboflow  training            25%       5s\n"
        "b      roboflow  waiting for a slot  -         0s\n"
    )
    report.started(TriggerOutcome("b", True, "training started"))  # said above the table
    done = record("a", RecordStatus.SUCCEEDED, triggered_at=AT)
    later = AT + timedelta(seconds=65)
    report.ticks(
        [
            tick("a", Phase.ENDED, Observation(TrainingStatus.SUCCEEDED), done, later, since=AT),
            tick("b", Phase.RUNNING, running, started, later, since=AT + timedelta(seconds=60)),
        ]
    )
    up = "\x1b[3A\r\x1b[J"  # back to the table's first line, erase it and what is below
    assert tty.getvalue()[len(first) :] == (
        up
        + "b: training started\n"
        + "MODEL  PROVIDER  STATE               PROGRESS  ELAPSED\n"
        + "a      roboflow  training            25%       5s\n"
        + "b      roboflow  waiting for a slot  -         0s\n"
        + up
        + "MODEL  PROVIDER  STATE      PROGRESS  ELAPSED\n"
        + "a      roboflow  succeeded  -         1m05s\n"
        + "b      roboflow  training   25%       5s\n"
    )
    drawn = tty.getvalue()
    report.waited(WaitResult(followed=["a", "b"], final={"a": done, "b": done}))
    assert tty.getvalue() == drawn  # the last table stays on the screen
    assert report.finish() == 0
    assert con.stderr == ["a: training started"]  # the rest was drawn on the terminal


def test_live_table_rows_are_cut_to_the_terminal_width() -> None:
    table = LiveTable(FakeTty(), width=40)
    error = Observation(TrainingStatus.RUNNING, provider_state="x" * 100)
    table.ticks([tick("a", Phase.RUNNING, error, None, AT)])
    assert all(len(line) <= 39 for line in table.render())


def test_progress_is_drawn_live_only_on_a_terminal_outside_ci() -> None:
    tty, pipe = FakeTty(), io.StringIO()
    assert runtime.live_terminal(tty, {}) is tty
    assert runtime.live_terminal(pipe, {}) is None
    assert runtime.live_terminal(tty, {"CI": "true"}) is None
    assert runtime.live_terminal(tty, {"TERM": "dumb"}) is None
    assert isinstance(ApplyReport("text", Captured(), wait=True).view, Lines)
