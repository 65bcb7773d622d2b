"""The daemon's parts in-process: the work queue, the manifest tracker, and the HTTP app over the
plans it shows (`/status` and the `reconciler_models` gauge read one snapshot). No sleeps, no processes."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from reconciler.daemon import DaemonOptions
from reconciler.daemon.app import build_app
from reconciler.daemon.lifecycle import Daemon
from reconciler.daemon.queue import WorkQueue, batch_trigger
from reconciler.daemon.tracker import ManifestTracker
from reconciler.domain import DesiredModel
from reconciler.engine import ApplyResult
from reconciler.logs import Redactor
from reconciler.plan import Action, ModelPlan, Reason

MODEL = """\
apiVersion: reconciler/v1
kind: TrainedModel
metadata: {{name: {name}}}
spec:
  provider: roboflow
  model: {{workspace: acme, project: {name}}}
  training: {{version: 3, model_type: rfdetr-nano, epochs: {epochs}}}
"""


def write(folder: Path, name: str, epochs: int = 10) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(MODEL.format(name=name, epochs=epochs))
    return path


def daemon_with(tmp_path: Path, *names: str) -> Daemon:
    specs = tmp_path / "specs"
    specs.mkdir(exist_ok=True)
    for name in names:
        write(specs, name)
    opts = DaemonOptions(paths=[str(specs)], state_url=f"sqlite:///{tmp_path / 'state.db'}", resync=timedelta(hours=1))
    d = Daemon(opts, env={})
    d._load("startup")
    d.loaded = True
    return d


# ---------------------------------------------------------------- queue


async def test_queue_coalesces_by_name_and_keeps_the_most_urgent_trigger() -> None:
    q = WorkQueue()
    q.put(["a", "b"], "resync")
    q.put(["a"], "change")
    q.put(["a", "c"], "poll")  # less urgent than change: a stays "change"
    q.put(["b"], "webhook")
    assert q.pending == {"a": "change", "b": "webhook", "c": "poll"} and len(q) == 3
    batch = await q.take()
    assert batch == {"a": "change", "b": "webhook", "c": "poll"} and q.pending == {}
    assert batch_trigger(batch) == "webhook"

    q.wakeup.clear()
    q.put([], "change")  # nothing queued: no wakeup
    assert not q.wakeup.is_set()
    q.close()
    q.put(["a"], "change")  # no new work during shutdown
    assert q.pending == {} and await q.take() == {}


async def test_queue_take_waits_for_work() -> None:
    q = WorkQueue()
    taking = asyncio.create_task(q.take())
    await asyncio.sleep(0)  # let it wait
    assert not taking.done()
    q.put(["m"], "retry")
    assert await taking == {"m": "retry"}


# ---------------------------------------------------------------- tracker


def test_tracker_keeps_a_broken_files_last_good_version_and_reports_changes(tmp_path: Path) -> None:
    specs = tmp_path / "specs"
    specs.mkdir()
    write(specs, "alpha")
    beta = write(specs, "beta")
    t = ManifestTracker([str(specs)], Redactor({}))
    first = t.load()
    assert first is not None and sorted(first.touched) == ["alpha", "beta"] and first.gone == []
    assert t.load() is None  # nothing changed on disk

    beta.write_text("apiVersion: reconciler/v1\nkind: TrainedModel\nmetadata: {name: beta\n")
    assert t.load() is None  # broken: the models stay as they were
    assert t.manifests.models["beta"].training.model_dump()["epochs"] == 10
    assert [p.file for p in t.problems] == [str(beta)]

    write(specs, "beta", epochs=20)
    fixed = t.load()
    assert fixed is not None and fixed.touched == ["beta"] and t.problems == []
    assert t.manifests.models["beta"].training.model_dump()["epochs"] == 20

    beta.write_text("# a comment\n" + MODEL.format(name="beta", epochs=20))
    cosmetic = t.load()  # only its source lines moved: nothing to reconcile
    assert cosmetic is not None and cosmetic.touched == [] and cosmetic.gone == []

    beta.unlink()
    gone = t.load()
    assert gone is not None and gone.gone == ["beta"] and gone.touched == []
    assert sorted(t.manifests.models) == ["alpha"]


# ---------------------------------------------------------------- app: one snapshot for /status and the gauge


def client(d: Daemon) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=build_app(d)), base_url="http://daemon")


async def scrape(d: Daemon) -> tuple[dict[str, str], dict[tuple[str, str], float]]:
    """Each model's action in /status, and the reconciler_models samples in /metrics."""
    async with client(d) as c:
        status = (await c.get("/status")).json()
        text = (await c.get("/metrics")).text
    actions = {m["name"]: m["action"] for m in status["models"]}
    gauge = {
        (provider, action): float(value)
        for action, provider, value in re.findall(
            r'^reconciler_models\{action="([^"]+)",provider="([^"]+)"\} (\S+)$', text, re.M
        )
    }
    return actions, gauge


def counted(actions: dict[str, str]) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for action in actions.values():
        out[("roboflow", action)] = out.get(("roboflow", action), 0) + 1
    return out


def plans(d: Daemon, action: Action, *names: str) -> list[ModelPlan]:
    return [ModelPlan(d.manifests.models[n], action) for n in names]


async def test_status_and_models_gauge_read_the_same_plans(tmp_path: Path) -> None:
    d = daemon_with(tmp_path, "alpha", "beta", "gamma")
    assert await scrape(d) == ({}, {})
    d.plans.settle([*plans(d, Action.NONE, "alpha", "beta"), *plans(d, Action.WAIT, "gamma")])
    actions, gauge = await scrape(d)
    assert actions == {"alpha": "none", "beta": "none", "gamma": "wait"}
    assert gauge == counted(actions) == {("roboflow", "none"): 2.0, ("roboflow", "wait"): 1.0}

    # a model leaving the manifests leaves both at once
    (tmp_path / "specs" / "gamma.yaml").unlink()
    d._load("change")
    actions, gauge = await scrape(d)
    assert actions == {"alpha": "none", "beta": "none"} and gauge == counted(actions)


class BlockingEngine:
    """Plans TRAIN for every model it is given; `apply` waits until released (or fails)."""

    def __init__(self, fail: bool = False) -> None:
        self.applying = asyncio.Event()
        self.release = asyncio.Event()
        self.fail = fail
        self.others: list[str] = []

    async def plan(self, models: Sequence[DesiredModel], *, others: Iterable[ModelPlan] = ()) -> list[ModelPlan]:
        self.others = sorted(p.name for p in others)
        return [ModelPlan(m, Action.TRAIN, [Reason("spec-changed")]) for m in models]

    async def apply(self, plans: Sequence[ModelPlan], *, fence: Any = None) -> ApplyResult:
        self.applying.set()
        await self.release.wait()
        if self.fail:
            raise RuntimeError("state unreachable")
        return ApplyResult(list(plans))

    async def persist_refresh(self, plans: Sequence[ModelPlan]) -> None:
        pass


async def run_batch(d: Daemon, engine: BlockingEngine, batch: dict[str, str]) -> asyncio.Task[Any]:
    d.engine = engine  # type: ignore[assignment]
    d._engine_stale = False
    task = asyncio.create_task(d._reconcile(batch, engine))  # type: ignore[arg-type]
    await engine.applying.wait()
    return task


@pytest.mark.parametrize("fail", [False, True])
async def test_a_batch_decision_is_shown_while_it_is_applied(tmp_path: Path, fail: bool) -> None:
    """The cause of the old gauge-vs-/status flake: while a batch triggered a training, /status still
    showed the model's previous (in sync) plan, so a reader took the edit as done."""
    d = daemon_with(tmp_path, "alpha", "beta")
    d.plans.settle(plans(d, Action.NONE, "alpha", "beta"))
    engine = BlockingEngine(fail=fail)
    task = await run_batch(d, engine, {"alpha": "change"})
    assert engine.others == ["beta"]  # the concurrency limit sees the rest of the daemon's plans
    actions, gauge = await scrape(d)
    assert actions == {"alpha": "train", "beta": "none"}
    assert gauge == counted(actions)
    engine.release.set()
    await task
    actions, gauge = await scrape(d)
    # a failed batch leaves its models with their previous plans, retried later
    assert actions == {"alpha": "none" if fail else "train", "beta": "none"}
    assert gauge == counted(actions)
    assert ("alpha" in d.schedule.wake_at) is fail


# ---------------------------------------------------------------- lanes (issue 14)


async def test_a_change_is_taken_in_its_own_lane_beside_a_resync() -> None:
    q = WorkQueue()
    q.put(["a", "b", "c"], "resync")
    q.put(["b"], "change")
    q.put(["d"], "webhook")
    assert await q.take("urgent") == {"b": "change", "d": "webhook"}
    assert await q.take("bulk") == {"a": "resync", "c": "resync"}
    waiting = asyncio.create_task(q.take("urgent"))
    q.put(["e"], "poll")  # not for the urgent lane
    await asyncio.sleep(0)
    assert not waiting.done()
    q.put(["a"], "change")
    assert await waiting == {"a": "change"} and q.pending == {"e": "poll"}


def test_two_batches_in_flight_are_both_shown_and_each_settles_its_own(tmp_path: Path) -> None:
    from reconciler.daemon.plans import PlanBook

    d = daemon_with(tmp_path, "m1", "m2", "m3")
    resync = plans(d, Action.NONE, "m1", "m2")
    change = plans(d, Action.TRAIN, "m3")
    book = PlanBook()
    book.decide(resync)
    book.decide(change)
    known = {"m1", "m2", "m3"}
    assert [p.action for p in book.current(known)] == [Action.NONE, Action.NONE, Action.TRAIN]
    # the change's training counts against the limits of the resync batch, and the other way round
    assert [p.name for p in book.others({"m1", "m2"}, known)] == ["m3"]
    book.settle(change)
    assert [p.name for p in book.current(known)] == ["m1", "m2", "m3"] and set(book.deciding) == {"m1", "m2"}
    book.abandon(["m1", "m2"])
    assert book.deciding == {} and [p.name for p in book.current(known)] == ["m3"]
