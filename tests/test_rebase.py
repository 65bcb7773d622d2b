"""Rebase Energy: the manifest schema, the simulator against providers.md §2, and the real CLI
against the simulator, asserting on the request log (batched train calls, bodies, auth header)."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import helpers
import httpx
import pytest
from helpers import Clock, Workspace, by_name, codes, one_simulator, wait_until

from reconciler.domain import TrainingStatus
from reconciler.errors import ManifestError
from reconciler.providers.rebase.adapter import RebaseAdapter, format_date, train_body
from reconciler.providers.rebase.schema import RebaseTraining
from reconciler.sandbox.faults import Fault, LoggedRequest
from reconciler.sandbox.rebase.simulator import LOAD_SITE, SOLAR_SITE, WIND_SITE, RebaseSimulator
from reconciler.sandbox.rebase.validation import INVALID_KEY_BODY, MISSING_KEY_BODY
from reconciler.sandbox.registry import SANDBOX_API_KEYS
from reconciler.sandbox.server import Sandbox
from reconciler.spec import load_manifests

KEY = SANDBOX_API_KEYS["rebase"]
TRAIN = "/platform/v2/sites/models/train"

# poll fast (trainings take 1 s in the sandbox) and do not throttle the tests' few requests
PROVIDER = """\
apiVersion: reconciler/v1
kind: Provider
metadata: {name: rebase}
spec: {type: rebase, poll_interval: 0.2s, requests_per_second: 200}
"""

SPLITS = '[{start_date: "2023-01-01T00:00Z", end_date: "2023-12-31T23:00Z"}]'


def site(name: str, site_id: str, splits: str = SPLITS, backtest: str = "false", policy: str = "") -> str:
    text = f"""\
    apiVersion: reconciler/v1
    kind: TrainedModel
    metadata: {{name: {name}}}
    spec:
      provider: rebase
      model: {{site_id: "{site_id}"}}
      training:
        splits: {splits}
        output_backtest_data: {backtest}
    """
    text = textwrap.dedent(text)
    if policy:
        text += f"  policy: {policy}\n"
    return text


def sim(ws: Workspace | Sandbox) -> RebaseSimulator:
    return helpers.sim(ws, "rebase", RebaseSimulator)


def train_calls(ws: Workspace) -> list[LoggedRequest]:
    return helpers.train_calls(ws, "rebase", path=f"^{TRAIN}$")


def reasons(doc: dict[str, Any]) -> dict[str, list[str]]:
    return {name: codes(m) for name, m in by_name(doc).items()}


def actions(doc: dict[str, Any]) -> dict[str, str]:
    return {m["name"]: m["action"] for m in doc["models"]}


def two_sites(ws: Workspace, wind_splits: str = SPLITS, policy: str = "") -> None:
    ws.write("provider.yaml", PROVIDER)
    ws.write("solar.yaml", site("solar", SOLAR_SITE, policy=policy))
    ws.write("wind.yaml", site("wind", WIND_SITE, splits=wind_splits, policy=policy))


# -- manifest schema ------------------------------------------------------------------------------


def test_splits_normalise_and_are_sent_in_the_documented_format() -> None:
    a = RebaseTraining.model_validate({"splits": [{"start_date": "2022-01-01T00:00Z", "end_date": "2022-12-31"}]})
    b = RebaseTraining.model_validate(
        {"splits": [{"start_date": "2022-01-01T01:00:00+01:00", "end_date": "2022-12-31T00:00:00+00:00"}]}
    )
    assert a == b and a.model_dump(mode="json") == b.model_dump(mode="json")
    assert train_body(["s1", "s2"], a) == {
        "site_ids": ["s1", "s2"],
        "splits": [{"start_date": "2022-01-01T00:00Z", "end_date": "2022-12-31T00:00Z"}],
        "output_backtest_data": False,
    }
    # omitted splits mean "all data" at Rebase: the key is left out, not sent empty
    assert train_body(["s1"], RebaseTraining()) == {"site_ids": ["s1"], "output_backtest_data": False}
    assert format_date(b.splits[0].start_date.replace(second=30)) == "2022-01-01T00:00:30Z"  # type: ignore[index]


def test_validate_rejects_bad_splits_with_positions(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        site("solar", SOLAR_SITE, splits='[{start_date: "2023-06-01T00:00Z", end_date: "2023-01-01T00:00Z"}]')
        + "---\n"
        + site("wind", WIND_SITE, splits='[{start_date: "soon", end_date: "2023-01-01T00:00Z"}]', backtest='"yes"')
        + "---\n"
        + site("load", LOAD_SITE, splits="[]")
    )
    with pytest.raises(ManifestError) as err:
        load_manifests([bad])
    text = str(err.value)
    assert "must be before end_date" in text
    assert "'soon' is not an ISO 8601 date-time" in text
    assert "output_backtest_data" in text
    assert "splits: List should have at least 1 item" in text
    assert f"{bad}:8:" in text  # the line of the reversed split


# -- the simulator --------------------------------------------------------------------------------


@pytest.fixture
def fake_sandbox(tmp_path: Path, clock: Clock) -> Iterator[Sandbox]:
    with one_simulator(tmp_path / "world", "rebase", clock=clock) as sb:
        yield sb


@pytest.fixture
def api(fake_sandbox: Sandbox) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake_sandbox.base_url("rebase"), headers={"Authorization": KEY}, timeout=5) as c:
        yield c


def models_of(api: httpx.Client, site_id: str) -> list[dict[str, Any]]:
    resp = api.get(f"/platform/v2/sites/{site_id}/models", params={"model_type": "ai"})
    assert resp.status_code == 200, resp.text
    return cast(list[dict[str, Any]], resp.json())


def test_sim_auth_is_the_raw_key_in_authorization(fake_sandbox: Sandbox) -> None:
    base = fake_sandbox.base_url("rebase")
    assert httpx.get(f"{base}/platform/v2/sites").json() == MISSING_KEY_BODY
    for header in ("wrong", f"Bearer {KEY}"):
        resp = httpx.get(f"{base}/platform/v2/sites", headers={"Authorization": header})
        assert resp.status_code == 401 and resp.json() == INVALID_KEY_BODY
    resp = httpx.post(f"{base}{TRAIN}", json={"site_ids": [SOLAR_SITE]}, headers={"Authorization": "wrong"})
    assert resp.status_code == 401
    assert sim(fake_sandbox).jobs() == []
    ok = httpx.get(f"{base}/platform/v2/sites", headers={"Authorization": KEY})
    assert ok.status_code == 200
    assert {s["id"] for s in ok.json()} == {SOLAR_SITE, WIND_SITE, LOAD_SITE}


def test_sim_sites_actuals_and_models(api: httpx.Client, clock: Clock) -> None:
    solar = models_of(api, SOLAR_SITE)
    assert [m["name"] for m in solar] == ["LightGBM", "Neural network"]
    assert set(solar[0]) == {"id", "name", "label", "version", "priority", "state", "display_name", "output_types"}
    assert solar[0]["version"] == 0 and solar[0]["state"][0]["status"] == "untrained"
    physical = api.get(f"/platform/v2/sites/{SOLAR_SITE}/models", params={"model_type": "physical"}).json()
    assert [m["name"] for m in physical] == ["Physical PV"]
    assert models_of(api, LOAD_SITE) == []  # no actuals yet, so no models
    missing = api.get("/platform/v2/sites/nope/models")
    assert missing.status_code == 404 and missing.json() == {"detail": "Site not found"}
    assert api.get("/platform/v2/nothing").json() == {"detail": "Not Found"}

    clock.now += 60
    body = {"type": "power", "data": [{"valid_time": "2024-05-16T13:00:00Z", "value": 140.0}]}
    resp = api.post(f"/platform/v2/sites/{LOAD_SITE}/actual", json=body)
    assert resp.status_code == 200 and resp.json() == {"message": "Actuals uploaded successfully"}
    load = models_of(api, LOAD_SITE)
    assert len(load) == 2 and all(m["state"][0]["status"] == "untrained" for m in load)
    assert load[0]["state"][0]["actuals_updated_timestamp_utc"].startswith("2023-11-14T22:14:20")
    bad = api.post(f"/platform/v2/sites/{LOAD_SITE}/actual", json={"data": [{"valid_time": "x", "value": "y"}]})
    assert bad.status_code == 400
    assert {e["field"] for e in bad.json()["errors"]} == {"data.0.valid_time", "data.0.value"}

    created = api.post(
        "/platform/v2/sites",
        json={"type": "wind", "name": "New farm", "latitude": 60.0, "longitude": 20.0, "assets": []},
    )
    assert created.status_code == 200
    new_id = created.json()["site_id"]
    assert new_id in {s["id"] for s in api.get("/platform/v2/sites").json()}
    assert api.post("/platform/v2/sites", json={"type": "tidal", "name": "x", "latitude": 99}).status_code == 400
    assert api.delete(f"/platform/v2/sites/{new_id}").json() == {"message": "Site deleted successfully"}
    assert api.get(f"/platform/v2/sites/{new_id}/models").status_code == 404


def test_sim_train_state_machine(api: httpx.Client, fake_sandbox: Sandbox, clock: Clock) -> None:
    body = {
        "site_ids": [SOLAR_SITE, WIND_SITE],
        "splits": [{"start_date": "2023-01-01T00:00Z", "end_date": "2023-12-31T23:00Z"}],
        "output_backtest_data": True,
    }
    resp = api.post(TRAIN, json=body)
    assert resp.status_code == 200 and resp.json() == {"message": "Training started"}
    (job,) = sim(fake_sandbox).jobs()
    assert job["site_ids"] == [SOLAR_SITE, WIND_SITE] and job["splits"] == body["splits"]
    for site_id in (SOLAR_SITE, WIND_SITE):
        state = models_of(api, site_id)[0]["state"][0]
        assert state["status"] == "training" and state["started_timestamp_utc"] is not None
    again = api.post(TRAIN, json={"site_ids": [WIND_SITE]})
    assert again.status_code == 409 and "already in progress" in again.json()["detail"]

    clock.now += 50
    model = models_of(api, SOLAR_SITE)[0]
    assert model["state"][0]["status"] == "training" and 0 < model["state"][0]["progress"] < 1
    clock.now += 51
    model = models_of(api, SOLAR_SITE)[0]
    assert model["version"] == 1 and model["state"][0]["status"] == "trained"
    assert model["state"][0]["trained_timestamp_utc"] is not None

    sim(fake_sandbox).fail_next_trainings(1, "not enough data in split")
    assert api.post(TRAIN, json={"site_ids": [SOLAR_SITE]}).status_code == 200
    clock.now += 101
    failed = models_of(api, SOLAR_SITE)[0]
    assert failed["version"] == 1  # a failed training keeps the last version
    assert failed["state"][0]["status"] == "failed" and failed["state"][0]["message"] == "not enough data in split"
    assert models_of(api, WIND_SITE)[0]["state"][0]["status"] == "trained"  # not in that call
    assert api.post(TRAIN, json={"site_ids": [SOLAR_SITE]}).status_code == 200  # no splits: all data
    clock.now += 101
    assert models_of(api, SOLAR_SITE)[0]["version"] == 2


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({}, {"site_ids"}),
        ({"site_ids": []}, {"site_ids"}),
        ({"site_ids": ["nope", LOAD_SITE]}, {"site_ids.0", "site_ids.1"}),
        (
            {
                "site_ids": [SOLAR_SITE],
                "splits": [{"start_date": "2023-02-01T00:00Z", "end_date": "2023-01-01T00:00Z"}],
            },
            {"splits.0"},
        ),
        ({"site_ids": [SOLAR_SITE], "splits": [{"start_date": "2023-02-01"}]}, {"splits.0.end_date"}),
        ({"site_ids": [SOLAR_SITE], "output_backtest_data": "yes"}, {"output_backtest_data"}),
    ],
)
def test_sim_train_validation_response(
    api: httpx.Client, fake_sandbox: Sandbox, body: dict[str, Any], fields: set[str]
) -> None:
    resp = api.post(TRAIN, json=body)
    assert resp.status_code == 400
    assert {e["field"] for e in resp.json()["errors"]} == fields
    assert all(e["message"] for e in resp.json()["errors"])
    assert sim(fake_sandbox).jobs() == []


# -- the adapter's reading of List Site Models ------------------------------------------------------


def _state(status: str, **extra: Any) -> dict[str, Any]:
    return {"id": extra.pop("id", "m1"), "version": extra.pop("version", 1), "state": [{"status": status, **extra}]}


def test_observation_aggregates_the_site_models() -> None:
    adapter = RebaseAdapter.__new__(RebaseAdapter)
    obs = adapter._observation([_state("trained", id="a"), _state("training", id="b", progress=0.5)], None)
    assert obs.status is TrainingStatus.RUNNING and obs.progress == 0.5
    obs = adapter._observation([_state("trained", id="a"), _state("failed", id="b", message="boom")], None)
    assert obs.status is TrainingStatus.FAILED and "boom" in obs.message
    obs = adapter._observation([_state("trained", id="a"), _state("untrained", id="b", version=0)], None)
    assert obs.status is TrainingStatus.SUCCEEDED and obs.stale is not None
    assert adapter._observation([_state("untrained", version=0)], None).status is TrainingStatus.NONE
    assert adapter._observation([_state("reticulating")], None).status is TrainingStatus.UNKNOWN
    # a bare status word as the state item is understood too
    assert adapter._observation([{"id": "x", "version": 2, "state": ["trained"]}], None).status is (
        TrainingStatus.SUCCEEDED
    )
    before = adapter._observation([_state("trained", version=1)], None).marker
    assert adapter._observation([_state("training", version=1)], None).marker != before
    assert adapter._observation([_state("trained", version=2)], None).marker != before


# -- the CLI against the sandbox ------------------------------------------------------------------


def test_identical_params_train_in_one_call_then_in_sync(workspace: Workspace) -> None:
    ws = workspace
    two_sites(ws)
    plan = ws.run("plan", "--output", "json")
    assert plan.code == 2, plan.output
    assert reasons(plan.json()) == {"solar": ["never-trained"], "wind": ["never-trained"]}
    assert train_calls(ws) == []

    applied = ws.run("apply", "--wait")
    assert applied.code == 0, applied.output
    (call,) = train_calls(ws)
    assert call.json() == {
        "site_ids": [SOLAR_SITE, WIND_SITE],
        "splits": [{"start_date": "2023-01-01T00:00Z", "end_date": "2023-12-31T23:00Z"}],
        "output_backtest_data": False,
    }
    assert call.headers["authorization"] == KEY  # the raw key: no "Bearer"
    assert call.headers["content-type"] == "application/json"
    assert all(r.headers["authorization"] == KEY for r in ws.sandbox.requests("rebase"))
    (job,) = sim(ws).jobs()
    assert job["phase"] == "succeeded"

    ws.sandbox.clear_requests()
    again = ws.run("plan", "--output", "json")
    assert again.code == 0, again.output
    assert actions(again.json()) == {"solar": "none", "wind": "none"}
    reads = ws.sandbox.requests("rebase")
    assert sorted(r.path for r in reads) == sorted(f"/platform/v2/sites/{s}/models" for s in (SOLAR_SITE, WIND_SITE))
    assert all(r.query == {"model_type": ["ai"]} for r in reads)
    assert ws.run("apply").code == 0
    assert train_calls(ws) == []


def test_different_params_train_in_separate_calls(workspace: Workspace) -> None:
    ws = workspace
    two_sites(ws, wind_splits='[{start_date: "2023-06-01T00:00Z", end_date: "2023-12-31T23:00Z"}]')
    applied = ws.run("apply")
    assert applied.code == 0, applied.output
    calls = sorted((c.json() for c in train_calls(ws)), key=lambda b: b["site_ids"])
    assert [c["site_ids"] for c in calls] == sorted([[SOLAR_SITE], [WIND_SITE]])
    by_site = {c["site_ids"][0]: c["splits"] for c in calls}
    assert by_site[WIND_SITE] == [{"start_date": "2023-06-01T00:00Z", "end_date": "2023-12-31T23:00Z"}]
    assert by_site[SOLAR_SITE] == [{"start_date": "2023-01-01T00:00Z", "end_date": "2023-12-31T23:00Z"}]


def test_spec_changed_on_new_splits_but_not_on_a_respelling(workspace: Workspace) -> None:
    ws = workspace
    two_sites(ws)
    assert ws.run("apply", "--wait").code == 0
    # the same instants spelled differently: not a change
    respelled = '[{start_date: "2023-01-01T01:00:00+01:00", end_date: "2023-12-31T23:00:00Z"}]'
    ws.write("solar.yaml", site("solar", SOLAR_SITE, splits=respelled))
    same = ws.run("plan", "--output", "json")
    assert same.code == 0, same.output
    assert actions(same.json()) == {"solar": "none", "wind": "none"}

    ws.write("solar.yaml", site("solar", SOLAR_SITE, splits=SPLITS.replace("2023-12-31T23:00Z", "2024-06-30T23:00Z")))
    plan = ws.run("plan", "--output", "json")
    assert plan.code == 2, plan.output
    doc = plan.json()
    assert reasons(doc) == {"solar": ["spec-changed"], "wind": []}
    (change,) = next(m for m in doc["models"] if m["name"] == "solar")["changes"]
    assert change["path"] == "training.splits"
    assert change["before"] == [{"start_date": "2023-01-01T00:00:00+00:00", "end_date": "2023-12-31T23:00:00+00:00"}]
    assert change["after"][0]["end_date"] == "2024-06-30T23:00:00+00:00"

    ws.sandbox.clear_requests()
    assert ws.run("apply", "--wait").code == 0
    (call,) = train_calls(ws)
    assert call.json()["site_ids"] == [SOLAR_SITE]
    assert call.json()["splits"] == [{"start_date": "2023-01-01T00:00Z", "end_date": "2024-06-30T23:00Z"}]
    assert ws.run("plan").code == 0


def test_data_changed_after_an_actuals_upload(workspace: Workspace) -> None:
    ws = workspace
    two_sites(ws)
    assert ws.run("apply", "--wait").code == 0
    sim(ws).upload_actuals(WIND_SITE)
    plan = ws.run("plan", "--output", "json")
    assert plan.code == 2, plan.output
    assert reasons(plan.json()) == {"solar": [], "wind": ["data-changed"]}
    detail = next(m for m in plan.json()["models"] if m["name"] == "wind")["reasons"][0]["detail"]
    assert "actuals uploaded at" in detail

    ws.sandbox.clear_requests()
    assert ws.run("apply", "--wait").code == 0
    assert [c.json()["site_ids"] for c in train_calls(ws)] == [[WIND_SITE]]
    assert ws.run("plan").code == 0


def test_training_failed_is_retried_then_succeeds(workspace: Workspace) -> None:
    ws = workspace
    two_sites(ws, policy="{retry_backoff: 0s}")
    sim(ws).fail_next_trainings(1, "not enough data in split")
    failed = ws.run("apply", "--wait")
    assert failed.code == 1, failed.output
    assert "did not succeed" in failed.stderr
    plan = ws.run("plan", "--output", "json")
    assert plan.code == 2, plan.output
    doc = plan.json()
    assert actions(doc) == {"solar": "retry", "wind": "retry"}
    assert reasons(doc) == {"solar": ["training-failed"], "wind": ["training-failed"]}

    ws.sandbox.clear_requests()
    assert ws.run("apply", "--wait").code == 0
    (call,) = train_calls(ws)  # the retry is batched too
    assert call.json()["site_ids"] == [SOLAR_SITE, WIND_SITE]
    assert ws.run("plan").code == 0


def test_a_failed_training_nobody_recorded_is_training_failed(workspace: Workspace) -> None:
    ws = workspace
    ws.write("provider.yaml", PROVIDER)
    ws.write("solar.yaml", site("solar", SOLAR_SITE))
    headers = {"Authorization": KEY}
    sim(ws).fail_next_trainings(1, "bad data")
    url = ws.sandbox.base_url("rebase") + TRAIN
    assert httpx.post(url, json={"site_ids": [SOLAR_SITE]}, headers=headers).status_code == 200
    sim(ws).mark_trained(WIND_SITE)  # trained by hand in the dashboard
    ws.write("wind.yaml", site("wind", WIND_SITE))
    wait_until(  # the sandbox's trainings take 1 s
        lambda: not any(j["phase"] in ("queued", "running") for j in sim(ws).jobs()), 10, "the training to end"
    )
    plan = ws.run("plan", "--output", "json")
    assert plan.code == 2, plan.output
    doc = plan.json()
    assert reasons(doc)["solar"] == ["training-failed"]
    assert actions(doc)["wind"] == "hold" and reasons(doc)["wind"] == ["unknown-baseline"]


def test_validation_response_and_retried_reads(workspace: Workspace) -> None:
    ws = workspace
    two_sites(ws)
    ws.sandbox.inject(Fault(provider="rebase", method="GET", path="/models$", status=503, times=2))
    ws.sandbox.inject(Fault(provider="rebase", method="GET", path="/models$", status=429, retry_after=0.1))
    ws.sandbox.inject(
        Fault(
            provider="rebase",
            method="POST",
            path=f"^{TRAIN}$",
            status=400,
            body={"errors": [{"field": "splits.0.end_date", "message": "no actuals in the split"}]},
        )
    )
    applied = ws.run("apply", "--output", "json")
    assert applied.code == 1, applied.output
    outcomes = applied.json()["outcomes"]
    assert not outcomes["solar"]["started"] and not outcomes["wind"]["started"]
    assert "splits.0.end_date: no actuals in the split" in outcomes["solar"]["detail"]
    assert len(train_calls(ws)) == 1  # a refused train call is never resent
    reads = ws.sandbox.requests("rebase", method="GET")
    assert [r.status for r in reads].count(200) == 2 and len(reads) == 5  # 3 faults retried
    plan = ws.run("plan", "--output", "json")
    assert reasons(plan.json()) == {"solar": ["training-failed", "backoff"], "wind": ["training-failed", "backoff"]}


def test_lost_train_answer_is_settled_by_observing_not_resent(workspace: Workspace) -> None:
    ws = workspace
    two_sites(ws)
    ws.sandbox.inject(Fault(provider="rebase", method="POST", path=f"^{TRAIN}$", drop=True, after_handling=True))
    applied = ws.run("apply", "--output", "json")
    assert applied.code == 1
    assert applied.json()["outcomes"]["solar"]["ambiguous"]
    assert len(sim(ws).jobs()) == 1  # the provider did start it
    plan = ws.run("plan", "--output", "json")
    assert plan.code == 0, plan.output
    assert set(actions(plan.json()).values()) <= {"wait", "none"}
    assert len(train_calls(ws)) == 1


def test_missing_sites_and_wrong_key_are_errors(workspace: Workspace) -> None:
    ws = workspace
    ws.write("provider.yaml", PROVIDER)
    ws.write("load.yaml", site("load", LOAD_SITE))
    ws.write("ghost.yaml", site("ghost", "0000-no-such-site"))
    ws.write("hostile.yaml", site("hostile", "../x?y"))
    plan = ws.run("plan", "--output", "json")
    assert plan.code == 1, plan.output
    doc = plan.json()
    assert reasons(doc) == {"ghost": ["not-found"], "hostile": ["not-found"], "load": ["not-found"]}
    details = {m["name"]: m["reasons"][0]["detail"] for m in doc["models"]}
    assert "no ML models yet" in details["load"]
    assert "not found" in details["ghost"]
    paths = [r.path for r in ws.sandbox.requests("rebase")]
    assert "/platform/v2/sites/../x?y/models" in paths  # one encoded segment, not another path
    assert paths.count("/platform/v2/sites") == 1  # asked once, only to explain the empty list

    wrong = ws.run("plan", "--output", "json", env=ws.env(REBASE_API_KEY=f"Bearer {KEY}"))
    assert wrong.code == 1
    assert set(reasons(wrong.json())["load"]) == {"auth-failed"}
    assert "Invalid API key" in wrong.json()["models"][0]["reasons"][0]["detail"]
