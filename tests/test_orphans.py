"""Orphans, renames, retries (design.md): `plan`/`status` list records no manifest declares, a
renamed model is hinted, and `rename`, `forget`, `retry` edit the state by compare-and-set.

CLI tests run in-process against the sandbox over HTTP; the races run on both stores
(PostgreSQL in a fresh database, skipped when the server is not reachable).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from helpers import FAST_PROVIDER, Workspace, by_name, codes, roboflow_model, run_sql, train_calls, write_text
from hypothesis import given
from hypothesis import strategies as st

from reconciler.domain import DesiredModel, HistoryEvent, ModelRecord, RecordStatus
from reconciler.errors import RefusedError
from reconciler.orphans import find_orphans, model_identity, record_identity, rename_candidates
from reconciler.providers.catalog import CATALOG
from reconciler.spec import load_manifests
from reconciler.state import StateStore, open_state
from reconciler.state.postgres import SCHEMA_VERSION as PG_SCHEMA_VERSION
from reconciler.state.sqlite import SCHEMA_VERSION as SQLITE_SCHEMA_VERSION
from reconciler.state_commands import FEW_ORPHANS, forget, read_orphans, rename, retry

PROVIDER = FAST_PROVIDER.replace("TYPE", "roboflow")
OLD, NEW = "hardhat-detector", "helmet-detector"


def manifests(ws: Workspace, *models: str) -> None:
    """specs/models.yaml with exactly these TrainedModel documents (and the fast Provider)."""
    ws.write("models.yaml", PROVIDER + "---\n".join(models))


def forklifts(name: str = "forklift-detector", **kw: Any) -> str:
    return roboflow_model(name, project="forklifts", version=2, **kw)


def with_policy(manifest: str, policy: str) -> str:
    return manifest + f"  policy: {{{policy}}}\n"


def trained(ws: Workspace, *models: str) -> None:
    """Train these models (apply --wait) and check they are in sync."""
    manifests(ws, *models)
    res = ws.run("apply", "--wait")
    assert res.code == 0, res.output
    code, doc = ws.plan_json()
    assert code == 0 and {m["action"] for m in doc["models"]} == {"none"}, doc


# ====================================================================== identity (pure)


def test_every_type_names_its_provider_model_by_its_identity_fields() -> None:
    from reconciler.providers.roboflow.schema import RoboflowModel

    assert all(t.identity_fields for t in CATALOG.values())
    roboflow = CATALOG["roboflow"]
    assert roboflow.model_identity(RoboflowModel(workspace="acme", project="hardhats")) == "acme/hardhats"
    assert roboflow.model_identity(RoboflowModel(workspace="acme", project="forklifts")) != "acme/hardhats"


def declared(tmp_path: Path, *docs: str) -> dict[str, DesiredModel]:
    path = write_text(tmp_path / "specs" / "m.yaml", "---\n".join(docs))
    return load_manifests([path.parent]).models


def record_of(model: DesiredModel, name: str | None = None, **changes: Any) -> ModelRecord:
    rec = ModelRecord(
        name=name or model.name,
        provider=model.provider,
        fingerprint=model.fingerprint,
        training=model.snapshot,
        status=RecordStatus.SUCCEEDED,
        finished_at=datetime(2026, 1, 1, tzinfo=UTC),
        provider_model=model_identity(model),
    )
    return dataclasses.replace(rec, **changes)


def test_orphans_and_rename_candidates(tmp_path: Path) -> None:
    models = declared(tmp_path, roboflow_model(NEW), forklifts(), roboflow_model("kept", project="kept"))
    new, kept = models[NEW], models["kept"]
    records = {
        OLD: record_of(new, OLD),
        # a record older than `provider_model`: its identity is read from the recorded spec
        "older": record_of(new, "older", provider_model=None, finished_at=datetime(2025, 1, 1, tzinfo=UTC)),
        "gone": record_of(kept, "gone", provider_model="acme/elsewhere"),
        "kept": record_of(kept),
    }
    assert record_identity(records["older"]) == "acme/hardhats"
    # the most recently trained of two orphans of the same provider model
    assert rename_candidates(records, models, models.values()) == {NEW: OLD}
    orphans = find_orphans(records, models)
    assert [(o.name, o.rename_to, o.command) for o in orphans] == [
        ("gone", None, "reconciler forget gone"),
        (OLD, NEW, f"reconciler rename {OLD} {NEW}"),
        ("older", None, "reconciler forget older"),
    ]
    assert orphans[1].entry() == {
        "name": OLD,
        "provider": "roboflow",
        "last_training": "2026-01-01T00:00:00+00:00",
        "status": "succeeded",
        "rename_to": NEW,
        "command": f"reconciler rename {OLD} {NEW}",
    }
    # filtered: no declared model is an orphan, and only the orphans renamed to a selected model show
    assert [o.name for o in find_orphans(records, models, [new])] == [OLD]
    assert find_orphans(records, models, [kept]) == []
    # another provider instance is another provider model
    assert rename_candidates({OLD: record_of(new, OLD, provider="roboflow-eu")}, models, [new]) == {}


def roboflow(name: str, project: str, provider: str = "roboflow") -> DesiredModel:
    from reconciler.domain import Policy, Source
    from reconciler.providers.roboflow.schema import RoboflowModel, RoboflowTraining

    model, training = RoboflowModel(workspace="acme", project=project), RoboflowTraining(version=1)
    return DesiredModel(
        name=name,
        labels={},
        provider=provider,
        provider_type="roboflow",
        model=model,
        training=training,
        policy=Policy(),
        source=Source("m.yaml", 1),
        manifest_dir=Path("."),
        file="m.yaml",
    )


NAMES = st.sampled_from(["a", "b", "c", "d", "e"])
PROJECTS = st.sampled_from(["p1", "p2", "p3"])


@given(
    declared_models=st.dictionaries(NAMES, st.tuples(PROJECTS, st.sampled_from(["roboflow", "roboflow-eu"]))),
    recorded=st.dictionaries(NAMES, st.tuples(PROJECTS, st.booleans(), st.integers(1, 28))),
    selected=st.none() | st.sets(NAMES),
)
def test_orphans_properties(
    declared_models: dict[str, tuple[str, str]],
    recorded: dict[str, tuple[str, bool, int]],
    selected: set[str] | None,
) -> None:
    models = {n: roboflow(n, project, provider) for n, (project, provider) in declared_models.items()}
    records = {
        n: record_of(
            roboflow(n, project),
            provider_model=None if old else f"acme/{project}",  # old records: identity from the spec
            finished_at=datetime(2026, 1, day, tzinfo=UTC),
        )
        for n, (project, old, day) in recorded.items()
    }
    picked = None if selected is None else [m for n, m in models.items() if n in selected]
    orphans = find_orphans(records, models, picked)
    everything = find_orphans(records, models)
    # an orphan is exactly a record no manifest declares, whatever the filter
    assert {o.name for o in everything} == set(records) - set(models)
    assert set(orphans) <= set(everything)
    renames = rename_candidates(records, models, models.values())
    for o in everything:
        if o.rename_to is not None:
            new = models[o.rename_to]
            # only to a declared model without a record, of the same provider model
            assert o.rename_to not in records and new.provider == records[o.name].provider
            assert model_identity(new) == record_identity(records[o.name])
            assert renames[o.rename_to] == o.name
    if selected is not None:
        assert all(o.rename_to in selected for o in orphans)


# ====================================================================== the CLI against the sandbox


def test_rename_is_hinted_and_rename_makes_the_plan_in_sync(workspace: Workspace) -> None:
    ws = workspace
    trained(ws, roboflow_model(OLD))
    before = len(train_calls(ws))
    manifests(ws, roboflow_model(NEW))  # renamed in its manifest, nothing else changed

    code, doc = ws.plan_json()
    assert code == 0, doc  # orphans never change the exit code; the hold does not train
    entry = by_name(doc)[NEW]
    command = f"reconciler rename {OLD} {NEW}"
    assert (entry["action"], codes(entry)) == ("hold", ["unknown-baseline"])
    assert command in entry["reasons"][0]["detail"] and "reconciler adopt" not in entry["reasons"][0]["detail"]
    [orphan] = doc["orphans"]
    assert orphan["name"] == OLD and orphan["provider"] == "roboflow" and orphan["last_training"]
    assert (orphan["status"], orphan["rename_to"], orphan["command"]) == ("succeeded", NEW, command)

    text = ws.run("plan")
    assert "Orphans (1):" in text.stdout and f"looks renamed to {NEW}: run `{command}`" in text.stdout, text.output
    assert "Orphans (1):" in ws.run("status").stdout
    status = ws.run("status", "-o", "json").json()
    assert [o["name"] for o in status["orphans"]] == [OLD]
    markdown = ws.run("plan", "-o", "markdown").stdout
    assert "**Orphans**" in markdown and command in markdown

    res = ws.run("rename", OLD, NEW)
    assert res.code == 0, res.output
    assert f"{OLD}: renamed to {NEW}" in res.stdout

    code, doc = ws.plan_json()
    assert code == 0 and doc["orphans"] == [], doc
    assert (by_name(doc)[NEW]["action"], codes(by_name(doc)[NEW])) == ("none", [])
    assert ws.run("apply").code == 0
    assert len(train_calls(ws)) == before  # nothing trained again

    story = ws.story(NEW)
    assert story[-1] == "renamed" and {"intent", "triggered", "succeeded"} <= set(story[:-1]), story
    moved = ws.events(NEW)
    assert all(e["detail"].get("renamed_from") == OLD for e in moved[:-1])
    assert moved[-1]["detail"]["from"] == OLD and moved[-1]["reason"] == "renamed-by-hand"
    assert ws.story(OLD)[-1] == "renamed"  # the old name's history stays, and says where it went


def test_a_model_renamed_while_training_is_followed_to_its_end(workspace: Workspace) -> None:
    ws = workspace
    ws.sandbox.sim("roboflow").training_seconds = 3
    manifests(ws, roboflow_model(OLD))
    assert ws.run("apply").code == 0  # started, not followed: the record says training
    manifests(ws, roboflow_model(NEW))
    code, doc = ws.plan_json()
    assert doc["orphans"][0]["status"] == "training" and doc["orphans"][0]["rename_to"] == NEW
    assert f"reconciler rename {OLD} {NEW}" in by_name(doc)[NEW]["reasons"][0]["detail"]

    assert ws.run("rename", OLD, NEW).code == 0
    ws.sandbox.sim("roboflow").training_seconds = 0.2
    res = ws.run("apply", "--wait")
    assert res.code == 0, res.output
    code, doc = ws.plan_json()
    assert code == 0 and by_name(doc)[NEW]["action"] == "none" and doc["orphans"] == []
    assert ws.story(NEW)[-2:] == ["renamed", "succeeded"]
    assert len(train_calls(ws)) == 1


def test_an_old_record_without_provider_model_is_still_hinted(workspace: Workspace) -> None:
    ws = workspace
    trained(ws, roboflow_model(OLD))
    run_sql(ws.state_url, "UPDATE models SET provider_model = NULL")
    manifests(ws, roboflow_model(NEW))
    _, doc = ws.plan_json()
    assert doc["orphans"][0]["rename_to"] == NEW
    assert ws.run("rename", OLD, NEW).code == 0
    assert ws.plan_json()[0] == 0


def test_rename_refusals(workspace: Workspace) -> None:
    ws = workspace
    trained(ws, roboflow_model(OLD), forklifts())
    # OLD still declared
    res = ws.run("rename", OLD, NEW)
    assert res.code == 1 and f"cannot rename {OLD}: it is still declared at" in res.stderr, res.output
    manifests(ws, roboflow_model(NEW), forklifts(), roboflow_model("elsewhere", project="elsewhere"))
    cases = {
        ("nosuch", NEW): "the state has no record of it",
        (OLD, "nosuch"): "no manifest declares nosuch; declare it first",
        (OLD, "forklift-detector"): "forklift-detector already has a record (succeeded)",
        (OLD, "elsewhere"): "not the same model, so not a rename",
        (OLD, OLD): "to itself",
    }
    for (old, new), message in cases.items():
        res = ws.run("rename", old, new)
        assert res.code == 1 and message in res.stderr, (old, new, res.output)
        assert "Traceback" not in res.stderr
    assert OLD in {o["name"] for o in ws.plan_json()[1]["orphans"]}  # nothing moved


def test_forget_drops_an_orphan_and_refuses_a_declared_model(workspace: Workspace) -> None:
    ws = workspace
    trained(ws, roboflow_model(OLD), forklifts())
    manifests(ws, forklifts())
    _, doc = ws.plan_json()
    assert [(o["name"], o["rename_to"], o["command"]) for o in doc["orphans"]] == [
        (OLD, None, f"reconciler forget {OLD}")
    ]

    res = ws.run("forget", "forklift-detector")
    assert res.code == 1 and "it is still declared at" in res.stderr and "remove it" in res.stderr, res.output
    res = ws.run("forget", "nosuch")
    assert res.code == 1 and "the state has no record of it" in res.stderr, res.output

    res = ws.run("forget", OLD)
    assert res.code == 0 and f"{OLD}: record dropped" in res.stdout, res.output
    code, doc = ws.plan_json()
    assert code == 0 and doc["orphans"] == []
    assert "Orphans" not in ws.run("plan").stdout
    story = ws.story(OLD)
    assert story[-1] == "forgotten" and "succeeded" in story  # its history stays
    assert ws.run("forget", OLD).code == 1  # once


def test_retry_rearms_exhausted_retries(workspace: Workspace) -> None:
    ws = workspace
    model = with_policy(roboflow_model(OLD), "max_retries: 0, retry_backoff: 1s")
    manifests(ws, model)
    ws.sandbox.sim("roboflow").fail_next_trainings(1)
    assert ws.run("apply", "--wait").code == 1
    code, doc = ws.plan_json()
    assert (code, codes(by_name(doc)[OLD])) == (0, ["training-failed", "retries-exhausted"])

    res = ws.run("retry", OLD)
    assert res.code == 0 and f"{OLD}: retries re-armed (1 failed attempts reset to 0)" in res.stdout, res.output
    code, doc = ws.plan_json()
    entry = by_name(doc)[OLD]
    assert (code, entry["action"], codes(entry)) == (2, "retry", ["training-failed"]), doc
    assert "re-armed" in entry["reasons"][0]["detail"]
    assert ws.story(OLD)[-1] == "rearmed"

    assert ws.run("apply", "--wait").code == 0
    assert ws.plan_json()[0] == 0
    res = ws.run("retry", OLD)
    assert res.code == 1 and "its last training is succeeded, not failed" in res.stderr, res.output


def test_retry_refuses_when_retries_are_not_exhausted(workspace: Workspace) -> None:
    ws = workspace
    manifests(ws, with_policy(roboflow_model(OLD), "max_retries: 3, retry_backoff: 1h"))
    ws.sandbox.sim("roboflow").fail_next_trainings(1)
    assert ws.run("apply", "--wait").code == 1
    res = ws.run("retry", OLD)
    assert res.code == 1 and "its retries are not exhausted (1 failed attempts, policy.max_retries is 3)" in res.stderr
    assert "the next apply retries it after" in res.stderr
    assert ws.run("retry", "nosuch").code == 1
    assert ws.story(OLD)[-1] != "rearmed"


def test_a_filtered_plan_calls_no_declared_model_an_orphan(workspace: Workspace) -> None:
    ws = workspace
    trained(ws, roboflow_model(OLD), forklifts())

    async def orphan() -> None:  # the record of a model removed long ago
        async with await open_state(ws.state_url) as store:
            gone = await store.get("forklift-detector")
            assert gone is not None
            await store.save(dataclasses.replace(gone, name="gone", provider_model="acme/removed"))

    asyncio.run(orphan())
    manifests(ws, roboflow_model(NEW), forklifts())
    _, doc = ws.plan_json()
    assert [o["name"] for o in doc["orphans"]] == ["gone", OLD]
    _, doc = ws.plan_json("--target", "forklift-detector")
    assert doc["orphans"] == []
    _, doc = ws.plan_json("--target", NEW)
    assert [(o["name"], o["rename_to"]) for o in doc["orphans"]] == [(OLD, NEW)]


# ====================================================================== many writers, both stores


def all_at_once(stores: list[StateStore], method: str, *methods: str) -> None:
    """Make each store's write (`method`, or the store's own of `methods`) wait until every store
    reached its own: all of them read before any writes."""
    barrier = asyncio.Barrier(len(stores))
    for store, name in zip(stores, [method, *methods] if methods else [method] * len(stores), strict=True):
        original: Callable[..., Awaitable[bool]] = getattr(store, name)

        async def synced(*args: Any, _original: Callable[..., Awaitable[bool]] = original) -> bool:
            await barrier.wait()
            return await _original(*args)

        setattr(store, name, synced)


async def test_move_if_is_one_transaction_with_one_winner(state_url: str, tmp_path: Path) -> None:
    models = declared(tmp_path, roboflow_model(NEW))
    async with await open_state(state_url) as a, await open_state(state_url) as b:
        await a.save(record_of(models[NEW], OLD), HistoryEvent(OLD, "succeeded"))
        await a.record_upload("roboflow", OLD, "h1", "remote-1")
        assert await a.claim_notification(OLD, "fp", "held", {"model": OLD})
        old = await a.get(OLD)
        assert old is not None
        one, two = dataclasses.replace(old, name="one"), dataclasses.replace(old, name="two")
        won = await asyncio.gather(
            a.move_if(OLD, old.version, one, HistoryEvent("one", "renamed")),
            b.move_if(OLD, old.version, two, HistoryEvent("two", "renamed")),
        )
        assert sorted(won) == [False, True]
        winner = "one" if won[0] else "two"
        assert set(await a.all()) == {winner}
        assert await a.uploads("roboflow", winner) == {"h1": "remote-1"} and await a.uploads("roboflow", OLD) == {}
        # what was told under the old name is not told again under the new one; the old keeps its rows
        assert not await a.claim_notification(winner, "fp", "held", {"model": winner})
        assert [n.model for n in await a.notifications()] == sorted([OLD, winner])
        loser = "two" if won[0] else "one"
        assert await a.history(loser) == []
        # onto a name that has a record: nothing at all is written, OLD keeps its record
        await a.save(record_of(models[NEW], OLD))
        stored = await a.get(OLD)
        assert stored is not None
        assert not await a.move_if(
            OLD, stored.version, dataclasses.replace(stored, name=winner), HistoryEvent(OLD, "x")
        )
        assert set(await a.all()) == {OLD, winner} and [e.event for e in await a.history(OLD)] == ["succeeded"]


async def test_two_renames_at_once_one_wins_one_errors_cleanly(state_url: str, tmp_path: Path) -> None:
    # two checkouts (one provider model, one TrainedModel each: validate refuses two in one)
    mine = declared(tmp_path / "a", roboflow_model(NEW))
    theirs = declared(tmp_path / "b", roboflow_model("other", project="hardhats", version=2))
    async with await open_state(state_url) as a, await open_state(state_url) as b:
        await a.save(record_of(mine[NEW], OLD), HistoryEvent(OLD, "succeeded"))
        all_at_once([a, b], "move_if")
        results = await asyncio.gather(
            rename(a, mine, OLD, NEW), rename(b, theirs, OLD, "other"), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        assert len(errors) == 1 and isinstance(errors[0], RefusedError), results
        assert f"{OLD}'s record was removed meanwhile" in str(errors[0]) and "nothing was moved" in str(errors[0])
        [winner] = [n for n in (NEW, "other") if await a.get(n) is not None]
        assert await a.get(OLD) is None
        assert [e.event for e in await a.history(winner)] == ["succeeded", "renamed"]
        assert [e.event for e in await a.history(OLD)] == ["succeeded", "renamed"]
        # the same rename twice at once: the loser says the new name got a record meanwhile
        await a.save(record_of(mine[NEW], OLD))
        target = "other" if winner == NEW else NEW
        both = mine if target == NEW else theirs
        again = await asyncio.gather(rename(a, both, OLD, target), rename(b, both, OLD, target), return_exceptions=True)
        [lost] = [r for r in again if isinstance(r, BaseException)]
        assert isinstance(lost, RefusedError) and f"{target} got a record meanwhile" in str(lost), again


async def test_forget_and_rename_at_once(state_url: str, tmp_path: Path) -> None:
    models = declared(tmp_path, roboflow_model(NEW))
    async with await open_state(state_url) as a, await open_state(state_url) as b:
        await a.save(record_of(models[NEW], OLD))
        all_at_once([a, b], "move_if", "delete_if")
        results = await asyncio.gather(rename(a, models, OLD, NEW), forget(b, {}, OLD), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        assert len(errors) == 1 and isinstance(errors[0], RefusedError), results
        assert "meanwhile" in str(errors[0])
        assert await a.get(OLD) is None


async def test_retry_that_loses_to_another_writer_changes_nothing(state_url: str, tmp_path: Path) -> None:
    models = declared(tmp_path, with_policy(roboflow_model(OLD), "max_retries: 0"))
    failed = record_of(models[OLD], status=RecordStatus.FAILED, attempts=1)
    async with await open_state(state_url) as a, await open_state(state_url) as b:
        await a.save(failed)
        all_at_once([a, b], "save_if")
        results = await asyncio.gather(retry(a, models, OLD), retry(b, models, OLD), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        assert len(errors) == 1 and isinstance(errors[0], RefusedError) and "meanwhile" in str(errors[0])
        assert [e.event for e in await a.history(OLD)] == ["rearmed"]
        stored = await a.get(OLD)
        assert stored is not None and stored.attempts == 0


async def test_records_before_provider_model_read_back_as_none(state_url: str, tmp_path: Path) -> None:
    models = declared(tmp_path, roboflow_model(NEW))
    async with await open_state(state_url) as store:
        await store.save(record_of(models[NEW], OLD))
    # back to the schema before provider_model (the last migration, on both stores)
    assert SQLITE_SCHEMA_VERSION == PG_SCHEMA_VERSION
    prefix = "" if state_url.startswith("sqlite") else "reconciler_"
    statements = [
        f"ALTER TABLE {prefix}models DROP COLUMN provider_model",
        f"UPDATE {prefix}meta SET value = '{SQLITE_SCHEMA_VERSION - 1}' WHERE key = 'schema_version'",
    ]
    run_sql(state_url, *statements)
    async with await open_state(state_url) as store:
        got = await store.get(OLD)
        assert got is not None and got.provider_model is None
        assert record_identity(got) == "acme/hardhats"  # read from the recorded spec
        edited = await rename(store, models, OLD, NEW)
        assert edited.record.provider_model == "acme/hardhats"
        moved = await store.get(NEW)
        assert moved is not None and moved.provider_model == "acme/hardhats"


async def test_of_provider_models_reads_only_the_records_that_could_be_renamed(state_url: str, tmp_path: Path) -> None:
    models = declared(tmp_path, roboflow_model(NEW), forklifts())
    async with await open_state(state_url) as store:
        await store.save(record_of(models[NEW], OLD))
        await store.save(record_of(models["forklift-detector"]))
        await store.save(record_of(models[NEW], "older", provider_model=None))
        assert set(await store.of_provider_models({"acme/hardhats"})) == {OLD, "older"}
        assert set(await store.of_provider_models(set())) == {"older"}
        assert await store.names() == {OLD, "forklift-detector", "older"}  # without reading the records


async def test_read_orphans_reads_the_orphans_records_only(
    state_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`plan` and `status` list the orphans after a plan that read every record: they read the
    names and the orphans' records, not every record again; the list is find_orphans' over all."""
    models = declared(tmp_path, roboflow_model(NEW), forklifts())
    async with await open_state(state_url) as store:
        await store.save(record_of(models["forklift-detector"]))
        await store.save(record_of(models[NEW], OLD))
        await store.save(record_of(models[NEW], "older", provider_model=None))
        everything = await store.all()
        expected = find_orphans(everything, models)
        assert [o.name for o in expected] == [OLD, "older"] and NEW in {o.rename_to for o in expected}
        read_all = 0
        real_all = store.all

        async def counted_all() -> dict[str, ModelRecord]:
            nonlocal read_all
            read_all += 1
            return await real_all()

        monkeypatch.setattr(store, "all", counted_all)
        assert await read_orphans(store, models) == expected
        assert await read_orphans(store, models, [models[NEW]]) == find_orphans(everything, models, [models[NEW]])
        assert read_all == 0
        # many orphans: one read of every record instead of one read each, the same list
        for i in range(FEW_ORPHANS + 1):
            await store.save(record_of(models["forklift-detector"], f"gone-{i:02d}", provider_model=f"acme/gone-{i}"))
        many = await read_orphans(store, models)
        assert read_all == 1 and many == find_orphans(await real_all(), models) and len(many) == FEW_ORPHANS + 3
