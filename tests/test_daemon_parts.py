"""The daemon's parts in-process: the work queue, the manifest tracker, and the HTTP app over the
plans it shows (`/status` and the `reconciler_models` gauge read one snapshot). No sleeps, no processes."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from reconciler import runtime
from reconciler.daemon import DaemonOptions, lifecycle
from reconciler.daemon import tracker as tracker_module
from reconciler.daemon.app import build_app
from reconciler.daemon.lifecycle import Daemon
from reconciler.daemon.queue import WorkQueue, batch_trigger
from reconciler.daemon.tracker import ManifestTracker
from reconciler.domain import DesiredModel, ModelRecord, RecordStatus
from reconciler.logs import Redactor
from reconciler.orphans import model_identity
from reconciler.outcomes import ApplyResult
from reconciler.plan import Action, ModelPlan, Reason
from reconciler.spec import parse_file
from reconciler.state import open_state

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


def test_tracker_keeps_a_broken_files_last_good_version_and_reports_changes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    specs = tmp_path / "specs"
    specs.mkdir()
    write(specs, "alpha")
    beta = write(specs, "beta")
    t = ManifestTracker([str(specs)], Redactor({}))
    first = t.load()
    assert first is not None and sorted(first.touched) == ["alpha", "beta"] and first.gone == []
    assert t.load() is None  # nothing changed on disk

    beta.write_text("apiVersion: reconciler/v1\nkind: TrainedModel\nmetadata: {name: beta\n")
    with caplog.at_level(logging.ERROR, logger="reconciler"):
        assert t.load() is None  # broken: the models stay as they were
    assert [r.getMessage().endswith("; its last good version stays in use") for r in caplog.records] == [True]
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


PHOTO = """\
apiVersion: reconciler/v1
kind: TrainedModel
metadata: {{name: {name}}}
spec:
  provider: photogpt
  model: {{model_id: {name}}}
  training: {{input_images: "{folder}/*.png"}}
"""


def aged(*paths: Path) -> None:
    """Files written a minute ago: old enough for their stat to stand for their content."""
    for p in paths:
        os.utime(p, ns=(time.time_ns() - 60 * 10**9,) * 2)


def test_tracker_edit_reads_only_the_edited_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    specs = tmp_path / "specs"
    specs.mkdir()
    files = [write(specs, f"m{i}") for i in range(5)]
    images = specs / "faces"
    images.mkdir()
    for k in range(12):
        (images / f"{k:02d}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes([k]) * 8)
    (specs / "portrait.yaml").write_text(PHOTO.format(name="portrait", folder="faces"))
    aged(*specs.iterdir())
    parsed: list[str] = []
    hashed: list[str] = []

    def parse(path: Path, trust: Any, root: Path) -> Any:
        parsed.append(path.name)
        return parse_file(path, trust, root)

    real_digest = tracker_module._digest

    def digest(path: Path) -> str:
        hashed.append(path.name)
        return real_digest(path)

    monkeypatch.setattr(tracker_module, "_digest", digest)
    t = ManifestTracker([str(specs)], Redactor({}), parse=parse)
    assert t.load() is not None and len(t.manifests.models) == 6 and len(parsed) == 6
    untouched = dict(t.manifests.models)
    checks = t.local_checks.runs
    parsed.clear()
    hashed.clear()

    write(specs, "m2", epochs=11)
    t.files_changed({files[2]})
    change = t.load()
    assert change is not None and change.touched == ["m2"]
    assert parsed == ["m2.yaml"] and hashed == ["m2.yaml"]  # the other files are neither read nor parsed
    assert t.local_checks.runs == checks  # the images were not globbed nor hashed again
    # models from unchanged documents are the very objects of the last load (fingerprints kept)
    assert all(t.manifests.models[n] is m for n, m in untouched.items() if n != "m2")
    hashed.clear()
    aged(files[2])
    assert t.load() is None and parsed == ["m2.yaml"] and hashed == ["m2.yaml"]  # its stat changed once more


def test_tracker_a_change_in_an_image_folder_runs_the_cached_check_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    specs = tmp_path / "specs"
    specs.mkdir()
    for folder in ("faces", "pets"):
        (specs / folder).mkdir()
        for k in range(12):
            (specs / folder / f"{k:02d}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + folder.encode() + bytes([k]))
    (specs / "a.yaml").write_text(
        PHOTO.format(name="a", folder="faces") + "---\n" + PHOTO.format(name="b", folder="faces")
    )
    (specs / "c.yaml").write_text(PHOTO.format(name="c", folder="pets"))
    t = ManifestTracker([str(specs)], Redactor({}))
    assert t.load() is not None and sorted(t.manifests.models) == ["a", "b", "c"] and t.problems == []
    assert t.local_checks.runs == 2  # a and b share the faces folder: one check answers both
    assert t.load() is None and t.local_checks.runs == 2  # answered from the cache

    removed = specs / "faces" / "00.png"
    removed.unlink()
    t.files_changed({removed})
    with caplog.at_level(logging.ERROR, logger="reconciler"):
        change = t.load()
    # the version in use fails too: its models are left out, so the log must not say it stays in use
    assert len(caplog.records) == 2 and not any("stays in use" in r.getMessage() for r in caplog.records)
    assert change is not None and change.gone == ["a", "b"]
    assert {p.file for p in t.problems} == {str(specs / "a.yaml")}
    assert all("matches 11 files" in p.message for p in t.problems)
    assert t.local_checks.runs == 3  # the faces folder (a and b) checked again, once; c (pets) was not

    # a change nobody reported (a missed event): the resync's revalidation finds it by stat
    (specs / "pets" / "03.png").write_bytes(b"GIF89a not a png")
    assert t.load() is None and "c" in t.manifests.models
    t.revalidate()
    assert t.load() is not None and "c" not in t.manifests.models
    assert any(p.file == str(specs / "c.yaml") and "03.png: not a" in p.message for p in t.problems)


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


async def test_the_change_lane_asks_for_provider_request_slots_first_and_the_resync_lane_does_not(
    tmp_path: Path,
) -> None:
    from reconciler.providers.concurrency import URGENT

    d = daemon_with(tmp_path, "m1", "m2")
    d.locked = True
    asked: dict[str, bool] = {}
    engine = object()

    async def refresh() -> Any:
        return engine

    async def reconcile(batch: Mapping[str, str], _engine: Any = None) -> None:
        async def request() -> bool:  # a task the batch starts, as the engine's reads are
            return URGENT.get()

        for name in batch:
            asked[name] = await asyncio.create_task(request())
        if len(asked) == 2:
            d.request_stop()

    d._refresh_engine = refresh  # type: ignore[method-assign]
    d._reconcile = reconcile  # type: ignore[method-assign,assignment]
    d.enqueue(["m1"], "resync")
    d.enqueue(["m2"], "change")
    await asyncio.gather(d._worker("bulk"), d._worker("urgent"))
    assert asked == {"m1": False, "m2": True} and not URGENT.get()


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


async def test_status_lists_orphans_like_the_status_command(tmp_path: Path) -> None:
    """design.md: `/status` is JSON as `status`, which lists the orphans (and their renames)."""
    d = daemon_with(tmp_path, "alpha", "renamed")
    alpha, renamed = d.manifests.models["alpha"], d.manifests.models["renamed"]

    def record(model: DesiredModel, name: str) -> ModelRecord:
        return ModelRecord(
            name=name,
            provider=model.provider,
            fingerprint=model.fingerprint,
            training=model.snapshot,
            status=RecordStatus.SUCCEEDED,
            finished_at=datetime(2026, 1, 1, tzinfo=UTC),
            provider_model=model_identity(model),
        )

    d.state = await open_state(d.opts.state_url)
    try:
        await d.state.save(record(alpha, "alpha"))
        await d.state.save(record(renamed, "original"))  # its manifest renamed it
        await d.state.save(record(alpha, "retired"))  # alpha's provider model, but alpha has a record
        async with client(d) as c:
            orphans = (await c.get("/status")).json()["orphans"]
    finally:
        await d.state.close()
    assert [(o["name"], o["rename_to"], o["command"]) for o in orphans] == [
        ("original", "renamed", "reconciler rename original renamed"),
        ("retired", None, "reconciler forget retired"),
    ]


# ---------------------------------------------------------------- memory after big batches (issue 14)

OTHER_PROVIDER = """\
apiVersion: reconciler/v1
kind: Provider
metadata: {name: roboflow-b}
spec: {type: roboflow}
"""


def test_a_big_batch_runs_one_provider_at_a_time_and_a_small_one_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lifecycle, "TRIM_AFTER_MODELS", 3)
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "provider.yaml").write_text(OTHER_PROVIDER)
    for name in ("b1", "b2"):
        write(specs, name)
        (specs / f"{name}.yaml").write_text((specs / f"{name}.yaml").read_text().replace("roboflow\n", "roboflow-b\n"))
    d = daemon_with(tmp_path, "a1", "a2", "a3")
    assert {m.provider for m in d.manifests.models.values()} == {"roboflow", "roboflow-b"}
    batch = {"b1": "resync", "a1": "resync", "b2": "resync", "a2": "resync", "gone": "resync"}
    # sorted by provider; a model no longer in the manifests goes in a part of its own, first
    assert d._parts(batch) == [{"gone": "resync"}, {"a1": "resync", "a2": "resync"}, {"b1": "resync", "b2": "resync"}]
    assert d._parts({"b1": "change", "a1": "change"}) == [{"b1": "change", "a1": "change"}]
    one_provider = {"a1": "resync", "a2": "resync", "a3": "resync"}
    assert d._parts(one_provider) == [one_provider]  # nothing to split


async def test_freed_memory_is_released_after_each_big_part_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lifecycle, "TRIM_AFTER_MODELS", 2)
    d = daemon_with(tmp_path, "m1", "m2", "m3")
    d.locked = True
    events: list[str] = []
    monkeypatch.setattr(runtime, "release_freed_memory", lambda: events.append("released"))

    async def refresh() -> Any:
        return object()

    took = asyncio.Event()

    async def reconcile(batch: Mapping[str, str], _engine: Any = None) -> None:
        events.append(f"part of {len(batch)}")
        took.set()
        if len(batch) == 2:
            d.request_stop()  # the worker ends after this part

    d._refresh_engine = refresh  # type: ignore[method-assign]
    d._reconcile = reconcile  # type: ignore[method-assign,assignment]
    worker = asyncio.create_task(d._worker("bulk"))
    d.enqueue(["m1"], "resync")  # small: no release
    await took.wait()
    d.enqueue(["m2", "m3"], "resync")
    await asyncio.wait_for(worker, 10)
    assert events == ["part of 1", "part of 2", "released"]


def test_releasing_freed_memory_frees_new_cycles_without_walking_the_whole_heap() -> None:
    """A full collection at 10,000 models stopped the daemon's event loop for 0.13-0.2 s, five
    times a resync, to find a few dozen cycles (benchmarks/daemon_scale.py)."""
    import gc
    import weakref

    if runtime._malloc_trim() is None:
        pytest.skip("no malloc_trim here (not glibc): nothing is released")

    class Node:
        other: Node

    a, b = Node(), Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    del a, b
    generations: list[int] = []

    def seen(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            generations.append(info["generation"])

    gc.callbacks.append(seen)
    try:
        runtime.release_freed_memory()
    finally:
        gc.callbacks.remove(seen)
    assert gone() is None
    assert generations and max(generations) < 2
