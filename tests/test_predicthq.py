"""PredictHQ: the simulator over HTTP (providers.md section 1), the adapter's observations, and the
real CLI against the simulator (request log, plan reasons, retries, error shapes)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from helpers import ROOT, Clock, Workspace, codes, one_simulator, sim, train_paths

from reconciler.domain import DesiredModel, ModelRecord, RecordStatus, TrainingStatus
from reconciler.plan import Action, plan_model
from reconciler.providers.base import ProviderContext
from reconciler.providers.http import HttpClient
from reconciler.providers.predicthq.adapter import PredictHQAdapter
from reconciler.providers.predicthq.schema import PredictHQModel, PredictHQTraining
from reconciler.providers.wire import error_message
from reconciler.sandbox.faults import Fault, LoggedRequest
from reconciler.sandbox.predicthq.simulator import PredictHQSimulator
from reconciler.sandbox.predicthq.state import SEED_DEMAND_DAYS, SEED_LOCATION_ID, SEED_MODEL_ID
from reconciler.sandbox.predicthq.validation import INVALID_DATA, NO_DEMAND_MESSAGE, UNAUTHORIZED_BODY
from reconciler.sandbox.registry import SANDBOX_API_KEYS
from reconciler.sandbox.server import Sandbox
from reconciler.spec import load_manifests

KEY = SANDBOX_API_KEYS["predicthq"]
MODELS = "/v1/forecasts/models"


def phq(sb: Sandbox) -> PredictHQSimulator:
    return sim(sb, "predicthq", PredictHQSimulator)


# ================================================================================================
# The simulator, over HTTP, on a clock moved by hand (trainings take 100 s of that clock)
# ================================================================================================


@pytest.fixture
def sim_sandbox(tmp_path: Path, clock: Clock) -> Iterator[Sandbox]:
    with one_simulator(tmp_path / "sim", "predicthq", clock=clock) as sb:
        yield sb


@pytest.fixture
def api(sim_sandbox: Sandbox) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=sim_sandbox.base_url("predicthq"), headers=headers, timeout=5) as c:
        yield c


def model_of(api: httpx.Client, model_id: str) -> dict[str, Any]:
    resp = api.get(f"{MODELS}/{model_id}")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["errors"] == [] and body["warnings"] == []
    return cast(dict[str, Any], body["model"])


def status_of(api: httpx.Client, model_id: str) -> str:
    return str(model_of(api, model_id)["readiness"]["status"])


def test_auth_needs_the_bearer_token(sim_sandbox: Sandbox) -> None:
    url = sim_sandbox.base_url("predicthq") + f"{MODELS}/{SEED_MODEL_ID}"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"Authorization": f"Token {KEY}"}):
        resp = httpx.get(url, headers=headers)
        assert resp.status_code == 401 and resp.json() == UNAUTHORIZED_BODY
    resp = httpx.post(url + "/train", headers={"Authorization": "Bearer wrong"})
    assert resp.status_code == 401
    assert phq(sim_sandbox).readiness(SEED_MODEL_ID) == "created"  # the refused call changed nothing
    assert httpx.get(url, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def test_create_model_validation_and_not_found(api: httpx.Client) -> None:
    loc = api.post(
        "/v1/saved-locations",
        json={
            "name": "Pike Place",
            "origin_geojson": {"type": "Feature", "geometry": {"type": "Point", "coordinates": [-122.34, 47.61]}},
            "industry": "restaurants",
        },
    )
    assert loc.status_code == 201, loc.text
    location_id = loc.json()["location_id"]
    created = api.post(
        MODELS,
        json={
            "name": "Pike Place covers",
            "location": {"saved_location_id": location_id},
            "algo": "phq-xgboost",
            "forecast_window": "14d",
            "demand_type": {"industry": "restaurants"},
        },
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert set(body) == {"model_id", "errors", "warnings"} and len(body["model_id"]) == 22
    model = model_of(api, body["model_id"])
    assert model["readiness"] == {"status": "created"}
    assert model["train_dt"] is None and model["metrics"] is None
    assert model["demand_type"] == {"industry": "restaurants", "interval": "day"}
    assert model["location"] == {"saved_location_id": location_id} and model["forecast_window"] == "14d"

    bad = api.post(MODELS, json={"name": "x", "forecast_window": "5d", "epochs": 3, "demand_type": {"industry": "pub"}})
    assert bad.status_code == 400
    assert bad.json()["error"] == INVALID_DATA
    by_field = {d["field"]: d["type"] for d in bad.json()["details"]}
    assert by_field == {
        "body.epochs": "extra_forbidden",
        "body.location": "missing",
        "body.forecast_window": "enum",
        "body.demand_type.industry": "enum",
    }
    gone = api.post(MODELS, json={"name": "x", "location": {"saved_location_id": "nope"}})
    assert (gone.status_code, gone.json()) == (400, {"error": "Saved Location not found"})
    missing = api.get(f"{MODELS}/doesNotExist")
    assert (missing.status_code, missing.json()) == (404, {"error": "Model not found"})


def test_readiness_state_machine_and_its_guards(api: httpx.Client, sim_sandbox: Sandbox, clock: Clock) -> None:
    mid = phq(sim_sandbox).add_model(demand_end="2023-11-10", demand_days=30)
    assert api.post(f"{MODELS}/{mid}/train").status_code == 204
    model = model_of(api, mid)
    assert model["readiness"]["status"] == "preparing"
    # [D] metrics.training_data is null until trained (issue 13); the range shows once ready, below
    assert model["metrics"]["training_data"] is None
    again = api.post(f"{MODELS}/{mid}/train")
    assert again.status_code == 400
    assert again.json() == {
        "error": "Current model readiness state is 'preparing', which doesn't allow triggering training"
    }

    clock.now += 20
    assert status_of(api, mid) == "training"
    blocked = api.patch(f"{MODELS}/{mid}", json={"forecast_window": "14d"})
    assert blocked.status_code == 400 and "'training'" in blocked.json()["error"]
    assert api.patch(f"{MODELS}/{mid}", json={"name": "renamed"}).status_code == 204  # not training-relevant
    upload = api.post(f"{MODELS}/{mid}/demand", json={"demand": [{"date": "2023-11-11", "demand": 5}]})
    assert upload.json() == {
        "error": "Current model readiness state is 'training', which doesn't allow demand data upload"
    }
    assert api.post(f"{MODELS}/{mid}/train").json()["error"].startswith("Current model readiness state is 'training'")

    clock.now += 65
    assert status_of(api, mid) == "forecasting"
    deleting = api.delete(f"{MODELS}/{mid}")
    assert deleting.json() == {"error": "Current model readiness state is 'forecasting', which doesn't allow deletion"}

    clock.now += 20
    model = model_of(api, mid)
    assert model["readiness"] == {"status": "ready"} and model["name"] == "renamed"
    assert datetime.fromisoformat(model["train_dt"]) == datetime.fromtimestamp(1_700_000_100, tz=UTC)
    assert set(model["metrics"]["accuracy"]) == {"mape", "mae", "rmse", "wape"}
    # the training captured the demand range it trained on
    assert model["metrics"]["training_data"]["date_range"] == {"start": "2023-10-12", "end": "2023-11-10"}
    assert model["metrics"]["training_data"]["missing_pct"] == 0
    forecast = api.get(f"{MODELS}/{mid}/forecast", params={"limit": 7})
    assert [r["date"] for r in forecast.json()["results"]][:2] == ["2023-11-11", "2023-11-12"]

    assert api.patch(f"{MODELS}/{mid}", json={"label": ["x"], "external_id": "e"}).status_code == 204
    assert status_of(api, mid) == "ready"
    assert api.patch(f"{MODELS}/{mid}", json={"forecast_window": "7d"}).status_code == 204  # same value
    assert status_of(api, mid) == "ready"
    assert api.patch(f"{MODELS}/{mid}", json={"forecast_window": "14d"}).status_code == 204
    assert status_of(api, mid) == "stale"
    assert api.post(f"{MODELS}/{mid}/train").status_code == 204  # retraining a stale model
    assert status_of(api, mid) == "preparing"


def test_training_needs_demand_and_can_fail(api: httpx.Client, sim_sandbox: Sandbox, clock: Clock) -> None:
    mid = phq(sim_sandbox).add_model(demand_days=0)
    refused = api.post(f"{MODELS}/{mid}/train")
    assert (refused.status_code, refused.json()) == (400, {"error": NO_DEMAND_MESSAGE})
    rows = [{"date": f"2023-10-{d:02d}", "demand": 10 + d} for d in range(1, 31)]
    assert api.post(f"{MODELS}/{mid}/demand", json={"demand": rows}).status_code == 201

    phq(sim_sandbox).fail_next_trainings(1, "not enough history")
    assert api.post(f"{MODELS}/{mid}/train").status_code == 204
    clock.now += 90
    assert status_of(api, mid) == "training"  # a failing run never reaches forecasting
    clock.now += 20
    model = model_of(api, mid)
    assert model["readiness"] == {
        "status": "failed",
        "error_code": "training_failed",
        "error_message": "not enough history",
    }
    assert model["train_dt"] is None and model["metrics"]["accuracy"] is None
    assert api.post(f"{MODELS}/{mid}/train").status_code == 204  # retrying a failed model is allowed


def test_demand_uploads_in_three_formats(api: httpx.Client, sim_sandbox: Sandbox) -> None:
    mid = phq(sim_sandbox).add_model(demand_days=0)
    csv_body = "date,demand\n2024-01-01,10\n2024-01-02,12.5\n"
    ndjson_body = '{"date": "2024-01-03", "demand": 7}\n{"date": "2024-01-01", "demand": 11}\n'
    assert api.post(f"{MODELS}/{mid}/demand", content=csv_body, headers={"Content-Type": "text/csv"}).status_code == 201
    resp = api.post(f"{MODELS}/{mid}/demand", content=ndjson_body, headers={"Content-Type": "application/x-ndjson"})
    assert resp.status_code == 201
    page = api.get(f"{MODELS}/{mid}/demand", params={"date.gte": "2024-01-01", "limit": 2}).json()
    assert page["count"] == 3 and page["next"] is not None
    # re-uploading a date replaces its value
    assert page["results"] == [{"date": "2024-01-01", "demand": 11.0}, {"date": "2024-01-02", "demand": 12.5}]
    as_csv = api.get(f"{MODELS}/{mid}/demand", headers={"Accept": "text/csv"})
    assert as_csv.text.splitlines()[0] == "date,demand" and len(as_csv.text.splitlines()) == 4
    assert model_of(api, mid)["metrics"]["demand_data"] == {"date_range": {"start": "2024-01-01", "end": "2024-01-03"}}

    bad = api.post(
        f"{MODELS}/{mid}/demand",
        json={"demand": [{"date": "2024-01-05", "demand": 1}, {"date": "05/01/2024", "demand": -1}]},
    )
    assert bad.status_code == 400 and bad.json()["error"] == INVALID_DATA
    assert {(d["field"], d["type"]) for d in bad.json()["details"]} == {
        ("body.demand[1].date", "date_parsing"),
        ("body.demand[1].demand", "greater_than_equal"),
    }
    dup = api.post(f"{MODELS}/{mid}/demand", json={"demand": [{"date": "2024-02-01", "demand": 1}] * 2})
    assert dup.json()["details"][0]["field"] == "body.demand[1].date"
    assert api.post(f"{MODELS}/{mid}/demand", json={"demand": []}).json()["details"][0]["type"] == "too_short"
    assert model_of(api, mid)["metrics"]["demand_data"]["date_range"]["end"] == "2024-01-03"  # nothing stored


def test_list_models_paginates_and_validates_its_query(api: httpx.Client, sim_sandbox: Sandbox) -> None:
    sim = phq(sim_sandbox)
    for i in range(3):
        sim.add_model(name=f"Store {i}", external_id=f"store-{i}")
    first = api.get(MODELS, params={"limit": 2}).json()
    assert first["count"] == 4 and len(first["results"]) == 2 and first["previous"] is None
    assert "offset=2" in first["next"]
    second = httpx.get(first["next"], headers={"Authorization": f"Bearer {KEY}"}).json()
    assert len(second["results"]) == 2 and second["next"] is None and second["previous"] is not None
    ids = [m["model_id"] for m in first["results"] + second["results"]]
    assert len(set(ids)) == 4 and SEED_MODEL_ID in ids

    assert api.get(MODELS, params={"readiness_status": "created,ready"}).json()["count"] == 4
    assert api.get(MODELS, params={"readiness_status": "ready"}).json()["count"] == 0
    assert api.get(MODELS, params={"status": "created"}).json()["count"] == 4  # the pre-2026-05-14 name
    found = api.get(MODELS, params={"q": "store-1"}).json()
    assert [m["external_id"] for m in found["results"]] == ["store-1"]

    bad = api.get(MODELS, params={"readiness_status": "done"})
    assert bad.status_code == 400
    (err,) = bad.json()["error"]  # QueryValidationError: the list is in "error"
    assert err["field"] == "readiness_status" and err["type"] == "enum"
    assert err["msg"].startswith("Input should be 'created', 'preparing'")
    deep = api.get(MODELS, params={"limit": 500, "offset": 600})
    assert deep.status_code == 400 and deep.json()["details"][0]["field"] == "query.limit/offset"


def test_put_replaces_and_patch_alone_sets_generate_baseline(api: httpx.Client) -> None:
    url = f"{MODELS}/{SEED_MODEL_ID}"
    missing = api.put(url, json={"forecast_window": "7d"})
    assert {d["field"] for d in missing.json()["details"]} == {"body.name", "body.location"}
    extra = api.put(
        url, json={"name": "n", "location": {"saved_location_id": SEED_LOCATION_ID}, "generate_baseline": True}
    )
    assert extra.json()["details"] == [
        {"field": "body.generate_baseline", "msg": "Extra inputs are not permitted", "type": "extra_forbidden"}
    ]
    assert api.patch(url, json={"generate_baseline": True}).status_code == 204
    assert status_of(api, SEED_MODEL_ID) == "stale"
    full = {"name": "Covers", "location": {"saved_location_id": SEED_LOCATION_ID}, "forecast_window": "28d"}
    assert api.put(url, json=full).status_code == 204
    model = model_of(api, SEED_MODEL_ID)
    assert (model["name"], model["forecast_window"], model["demand_type"], model["label"]) == (
        "Covers",
        "28d",
        None,
        None,
    )


def test_seed_serves_the_quickstart_manifest(sim_sandbox: Sandbox) -> None:
    (desired,) = load_manifests([ROOT / "specs" / "predicthq.yaml"]).models.values()
    model: Any = desired.model
    training: Any = desired.training
    seeded = phq(sim_sandbox).model(SEED_MODEL_ID)
    assert model.model_id == SEED_MODEL_ID == seeded["model_id"]
    assert training.location.saved_location_id == seeded["location"]["saved_location_id"] == SEED_LOCATION_ID
    assert training.forecast_window == seeded["forecast_window"]
    assert training.demand_type.industry == seeded["demand_type"]["industry"]
    rng = seeded["metrics"]["demand_data"]["date_range"]
    assert (date.fromisoformat(rng["end"]) - date.fromisoformat(rng["start"])).days + 1 == SEED_DEMAND_DAYS
    assert len(load_manifests([ROOT / "examples" / "predicthq"]).models) == 2


# ================================================================================================
# Error bodies and the adapter's observations
# ================================================================================================


def test_error_message_understands_the_three_shapes() -> None:
    assert error_message({"error": "Model not found"}) == "Model not found"
    validation = {
        "error": "Request contains invalid data",
        "details": [{"field": "body.location.saved_location_id", "msg": "Field required", "type": "missing"}],
    }
    assert (
        error_message(validation) == "Request contains invalid data (body.location.saved_location_id: Field required)"
    )
    query = {"error": [{"field": "readiness_status", "msg": "Input should be 'created' or 'ready'", "type": "enum"}]}
    assert error_message(query) == "readiness_status: Input should be 'created' or 'ready'"


def desired(tmp_path: Path, model_id: str, window: str = "7d") -> DesiredModel[PredictHQModel, PredictHQTraining]:
    path = tmp_path / "m.yaml"
    path.write_text(manifest(model_id, window))
    return load_manifests([path]).models["covers"].typed(PredictHQModel, PredictHQTraining)


async def test_observations_markers_and_a_crash_between_patch_and_train(
    sim_sandbox: Sandbox, clock: Clock, tmp_path: Path
) -> None:
    sim = phq(sim_sandbox)
    mid = sim.add_model(demand_end="2023-11-10", demand_days=30)
    m = desired(tmp_path, mid, "14d")
    cfg = load_manifests([tmp_path / "m.yaml"]).providers["predicthq"]
    http = HttpClient(
        "predicthq", sim_sandbox.base_url("predicthq"), api_key=KEY, auth=PredictHQAdapter.auth, requests_per_second=0
    )
    adapter = PredictHQAdapter(ProviderContext(config=cfg, http=http))
    try:
        before = await adapter.observe(m, None)
        assert (before.status, before.marker, before.provider_state) == (TrainingStatus.NONE, "-/created", "created")
        assert [(c.path, c.before, c.after) for c in before.config_changes] == [
            ("training.forecast_window", "7d", "14d")
        ]
        assert before.data_marker == {"start": "2023-10-12", "end": "2023-11-10"}

        # the engine records its intent with this marker, prepare PATCHes, and the process dies
        now = datetime.fromtimestamp(clock.now, tz=UTC)
        intent = ModelRecord(
            "covers",
            "predicthq",
            m.fingerprint,
            m.snapshot,
            RecordStatus.INTENT,
            triggered_at=now,
            marker=before.marker,
        )
        await adapter.prepare(m, before)
        assert sim.readiness(mid) == "stale" and sim.model(mid)["forecast_window"] == "14d"
        after_patch = await adapter.observe(m, intent)
        assert after_patch.marker == intent.marker and after_patch.config_changes == []
        assert after_patch.status is TrainingStatus.NONE  # stale, but never trained
        replan = plan_model(m, intent, after_patch, now)
        assert replan.action is Action.TRAIN  # the train call never happened: trigger it now

        await adapter.train([m])
        running = await adapter.observe(m, intent)
        assert running.status is TrainingStatus.RUNNING and running.marker == "-/preparing"
        assert plan_model(m, intent, running, now).action is Action.WAIT  # the intent is settled

        clock.now += 101
        done = await adapter.observe(m, intent)
        assert done.status is TrainingStatus.SUCCEEDED and done.marker != intent.marker
        assert done.trained_at == datetime.fromtimestamp(clock.now - 1, tz=UTC)
        assert done.stale is None and done.data_changed is None
        assert done.observed_training["forecast_window"] == "14d"

        trained = ModelRecord(
            "covers", "predicthq", m.fingerprint, m.snapshot, RecordStatus.SUCCEEDED, data_marker=before.data_marker
        )
        sim.upload_demand(mid, "2023-11-13")
        newer = await adapter.observe(m, trained)
        assert newer.data_changed == (
            "demand data now ends 2023-11-13, the demand recorded at the last training ended 2023-11-10"
        )
        assert (await adapter.observe(m, None)).data_changed is not None  # against metrics.training_data
        sim.make_stale(mid)
        stale = await adapter.observe(m, trained)
        assert stale.status is TrainingStatus.SUCCEEDED and stale.stale and "stale" in stale.stale
        assert stale.marker != done.marker  # only an INTENT keeps its marker through a PATCH
    finally:
        await http.aclose()


# ================================================================================================
# The real CLI against the simulator (trainings take 1 s unless a test ends them by hand)
# ================================================================================================


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    """Only the PredictHQ simulator, so other providers' simulators cannot affect these tests."""
    with one_simulator(tmp_path / "world", "predicthq", training_seconds=1.0) as sb:
        yield sb


def manifest(model_id: str, window: str = "7d", *, provider: str = "predicthq") -> str:
    return f"""\
apiVersion: reconciler/v1
kind: TrainedModel
metadata:
  name: covers
  labels: {{team: forecasting}}
spec:
  provider: {provider}
  model: {{model_id: "{model_id}"}}
  training:
    forecast_window: {window}
    demand_type: {{industry: restaurants}}
    location: {{saved_location_id: "{SEED_LOCATION_ID}"}}
  policy: {{retry_backoff: 0s}}
"""


#: a Provider whose poll interval suits 1-second trainings, for `apply --wait`
FAST_PROVIDER = """\
apiVersion: reconciler/v1
kind: Provider
metadata: {name: phq-fast}
spec: {type: predicthq, poll_interval: 200ms}
"""


def log(ws: Workspace, method: str | None = None) -> list[LoggedRequest]:
    return ws.sandbox.requests("predicthq", method=method)


def train_calls(ws: Workspace) -> list[str]:
    return train_paths(ws, "predicthq")


def finish(ws: Workspace, model_id: str) -> str:
    """The running training ends now (instead of waiting for it): its readiness afterwards."""
    return phq(ws.sandbox).finish_training(model_id)


def plan_entry(ws: Workspace, expect: int) -> dict[str, Any]:
    res = ws.run("plan", "--output", "json")
    assert res.code == expect, res.output
    (entry,) = res.json()["models"]
    return cast(dict[str, Any], entry)


def trained_model(ws: Workspace, window: str = "7d") -> str:
    """A model trained once by `apply` (the training has ended); the request log is cleared."""
    mid = phq(ws.sandbox).add_model()
    ws.write("covers.yaml", manifest(mid, window))
    applied = ws.run("apply")
    assert applied.code == 0, applied.output
    assert finish(ws, mid) == "ready"
    ws.sandbox.clear_requests()
    return mid


def test_never_trained_is_trained_once_then_in_sync(workspace: Workspace) -> None:
    ws = workspace
    phq(ws.sandbox).training_seconds = 60  # in flight for sure while the second plan runs
    mid = phq(ws.sandbox).add_model()
    ws.write("covers.yaml", manifest(mid))
    entry = plan_entry(ws, 2)
    assert entry["action"] == "train" and codes(entry) == ["never-trained"]
    assert [(r.method, r.path) for r in log(ws)] == [("GET", f"{MODELS}/{mid}")]  # one read, no write

    assert ws.run("apply").code == 0
    assert train_calls(ws) == [f"{MODELS}/{mid}/train"]
    assert log(ws, "PATCH") == []  # the model already had the declared configuration
    assert log(ws, "POST")[0].body == b""
    assert all(r.headers.get("authorization") == f"Bearer {KEY}" for r in log(ws))

    waiting = plan_entry(ws, 0)
    assert waiting["action"] == "wait" and codes(waiting) == ["in-flight"]
    assert "preparing" in waiting["reasons"][0]["detail"]
    assert finish(ws, mid) == "ready"
    ws.sandbox.clear_requests()
    again = ws.run("apply")
    assert again.code == 0 and "none (1):" in again.stdout, again.output
    assert train_calls(ws) == [] and len(log(ws)) == 1  # in sync: one read, nothing else
    status = ws.run("status", "--output", "json")
    assert '"state": "ready"' in status.stdout, status.output


def test_spec_change_patches_only_the_changed_field_then_trains(workspace: Workspace) -> None:
    ws = workspace
    mid = trained_model(ws)
    ws.write("covers.yaml", manifest(mid, "14d"))
    entry = plan_entry(ws, 2)
    assert codes(entry) == ["spec-changed"]
    assert entry["changes"] == [{"path": "training.forecast_window", "before": "7d", "after": "14d"}]
    text = ws.run("plan")
    assert text.code == 2 and "forecast_window: 7d -> 14d" in text.stdout

    ws.sandbox.clear_requests()
    assert ws.run("apply").code == 0
    writes = [r for r in log(ws) if r.method != "GET"]
    assert [(r.method, r.path) for r in writes] == [("PATCH", f"{MODELS}/{mid}"), ("POST", f"{MODELS}/{mid}/train")]
    assert writes[0].json() == {"forecast_window": "14d"}
    assert finish(ws, mid) == "ready"
    assert phq(ws.sandbox).model(mid)["forecast_window"] == "14d"
    assert plan_entry(ws, 0)["action"] == "none"

    # someone changes the industry at PredictHQ by hand: the spec wins again
    resp = httpx.patch(
        ws.sandbox.base_url("predicthq") + f"{MODELS}/{mid}",
        json={"demand_type": {"industry": "retail"}},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert resp.status_code == 204
    ws.sandbox.clear_requests()
    applied = ws.run("apply", "--output", "json")
    assert applied.code == 0, applied.output
    (entry,) = applied.json()["models"]
    assert codes(entry) == ["spec-changed", "provider-stale"]
    assert entry["changes"] == [{"path": "training.demand_type.industry", "before": "retail", "after": "restaurants"}]
    assert log(ws, "PATCH")[0].json() == {"demand_type": {"industry": "restaurants", "interval": "day"}}
    assert len(train_calls(ws)) == 1


def test_provider_stale_trains_without_patching(workspace: Workspace) -> None:
    ws = workspace
    mid = trained_model(ws)
    phq(ws.sandbox).make_stale(mid)
    entry = plan_entry(ws, 2)
    assert codes(entry) == ["provider-stale"] and "stale" in entry["reasons"][0]["detail"]
    assert ws.run("apply").code == 0
    assert train_calls(ws) == [f"{MODELS}/{mid}/train"] and log(ws, "PATCH") == []
    assert finish(ws, mid) == "ready"
    assert plan_entry(ws, 0)["action"] == "none"


def test_new_demand_is_data_changed(workspace: Workspace) -> None:
    ws = workspace
    mid = trained_model(ws)
    end = date.fromisoformat(phq(ws.sandbox).model(mid)["metrics"]["demand_data"]["date_range"]["end"])
    new_end = (end + timedelta(days=7)).isoformat()
    phq(ws.sandbox).upload_demand(mid, new_end)
    entry = plan_entry(ws, 2)
    assert codes(entry) == ["data-changed"] and new_end in entry["reasons"][0]["detail"]
    assert ws.run("apply").code == 0
    assert len(train_calls(ws)) == 1
    assert finish(ws, mid) == "ready"
    assert plan_entry(ws, 0)["action"] == "none"  # the new training recorded the new demand


def test_failed_training_is_retried_and_followed(workspace: Workspace) -> None:
    ws = workspace
    mid = phq(ws.sandbox).add_model()
    ws.write("provider.yaml", FAST_PROVIDER)
    ws.write("covers.yaml", manifest(mid, provider="phq-fast"))
    phq(ws.sandbox).training_seconds = 0.4  # followed to its end, not finished by hand
    phq(ws.sandbox).fail_next_trainings(1, "demand too sparse")
    failed = ws.run("apply", "--wait")
    assert failed.code == 1 and "training did not succeed (failed)" in failed.stderr, failed.output
    entry = plan_entry(ws, 2)
    assert entry["action"] == "retry" and codes(entry) == ["training-failed"]
    retried = ws.run("apply", "--wait")
    assert retried.code == 0 and "covers: succeeded" in retried.stderr, retried.output
    assert len(train_calls(ws)) == 2
    history = ws.run("history", "covers", "--output", "json").json()
    events = [e["event"] for e in history["events"]]
    assert events == ["intent", "triggered", "failed", "intent", "triggered", "succeeded"]


def test_failure_seen_without_a_record_and_a_hand_trained_model(workspace: Workspace) -> None:
    ws = workspace
    sim = phq(ws.sandbox)
    mid = sim.add_model()
    ws.write("covers.yaml", manifest(mid))
    sim.fail_next_trainings(1, "demand too sparse")
    sim.start_training(mid)
    assert finish(ws, mid) == "failed"
    entry = plan_entry(ws, 2)
    assert codes(entry) == ["training-failed"] and "demand too sparse" in entry["reasons"][0]["detail"]

    sim.mark_trained(mid)
    entry = plan_entry(ws, 0)
    assert entry["action"] == "hold" and codes(entry) == ["unknown-baseline"]
    assert "forecast_window=7d" in entry["reasons"][0]["detail"]
    assert ws.run("adopt", "covers").code == 0
    assert plan_entry(ws, 0)["action"] == "none"
    assert train_calls(ws) == []


def test_reads_retry_429_then_succeed(workspace: Workspace) -> None:
    ws = workspace
    mid = phq(ws.sandbox).add_model()
    ws.write("covers.yaml", manifest(mid))
    ws.sandbox.inject(Fault(provider="predicthq", method="GET", path=f"^{MODELS}/", status=429, times=2))
    assert codes(plan_entry(ws, 2)) == ["never-trained"]
    assert [r.status for r in log(ws)] == [429, 429, 200]


def test_persistent_5xx_gives_up_after_three_retries(workspace: Workspace) -> None:
    ws = workspace
    mid = phq(ws.sandbox).add_model()
    ws.write("covers.yaml", manifest(mid))
    ws.sandbox.inject(Fault(provider="predicthq", method="GET", status=503, times=-1))
    entry = plan_entry(ws, 1)
    assert entry["action"] == "error" and codes(entry) == ["provider-unavailable"]
    assert [r.status for r in log(ws)] == [503] * 4


def test_train_429_is_not_resent_and_a_later_apply_trains(workspace: Workspace) -> None:
    ws = workspace
    mid = phq(ws.sandbox).add_model()
    ws.write("covers.yaml", manifest(mid))
    ws.sandbox.inject(Fault(provider="predicthq", method="POST", path="/train$", status=429))
    held = ws.run("apply")  # a 429 on train means "not now": nothing started, not an error
    assert held.code == 0 and "HTTP 429" in held.stderr, held.output
    assert train_calls(ws) == [f"{MODELS}/{mid}/train"]  # never resent within the run
    assert phq(ws.sandbox).readiness(mid) == "created"
    history = ws.run("history", "covers", "--output", "json").json()
    assert [e["event"] for e in history["events"]] == ["intent", "not-started"]
    assert ws.run("apply").code == 0
    assert len(train_calls(ws)) == 2 and phq(ws.sandbox).readiness(mid) != "created"


def test_train_refused_by_readiness_state(workspace: Workspace) -> None:
    ws = workspace
    mid = phq(ws.sandbox).add_model()
    ws.write("covers.yaml", manifest(mid))
    message = "Current model readiness state is 'preparing', which doesn't allow triggering training"
    ws.sandbox.inject(Fault(provider="predicthq", method="POST", path="/train$", status=400, body={"error": message}))
    refused = ws.run("apply")
    assert refused.code == 1 and message in refused.stderr, refused.output
    history = ws.run("history", "covers", "--output", "json").json()
    assert [e["event"] for e in history["events"]] == ["intent", "refused"]
    entry = plan_entry(ws, 2)
    assert entry["action"] == "retry" and codes(entry) == ["training-failed"]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {
                "error": "Request contains invalid data",
                "details": [{"field": "body.location.saved_location_id", "msg": "Field required", "type": "missing"}],
            },
            "Request contains invalid data (body.location.saved_location_id: Field required)",
        ),
        (
            {"error": [{"field": "readiness_status", "msg": "Input should be 'created'", "type": "enum"}]},
            "readiness_status: Input should be 'created'",
        ),
        ({"error": "Bearer token scope insufficient"}, "Bearer token scope insufficient"),
    ],
)
def test_error_shapes_reach_the_plan(workspace: Workspace, body: dict[str, Any], expected: str) -> None:
    ws = workspace
    mid = phq(ws.sandbox).add_model()
    ws.write("covers.yaml", manifest(mid))
    status = 403 if isinstance(body["error"], str) and "scope" in body["error"] else 400
    ws.sandbox.inject(Fault(provider="predicthq", method="GET", status=status, body=body))
    entry = plan_entry(ws, 1)
    assert entry["action"] == "error" and expected in entry["reasons"][0]["detail"]
    assert codes(entry) == ["auth-failed" if status == 403 else "provider-error"]
    assert len(log(ws)) == 1  # a 4xx is never retried


def test_unknown_model_and_hostile_id(workspace: Workspace) -> None:
    ws = workspace
    ws.write("covers.yaml", manifest("Zz9NoSuchModel-000000x"))
    entry = plan_entry(ws, 1)
    assert codes(entry) == ["not-found"] and "Model not found" in entry["reasons"][0]["detail"]
    ws.sandbox.clear_requests()
    ws.write("covers.yaml", manifest("../x?y#z"))
    assert codes(plan_entry(ws, 1)) == ["not-found"]
    (req,) = log(ws)
    assert req.path == f"{MODELS}/../x?y#z" and req.query == {}  # stayed one encoded segment


def test_wrong_key_is_an_auth_error_without_leaking_it(workspace: Workspace) -> None:
    ws = workspace
    ws.write("covers.yaml", manifest(SEED_MODEL_ID))
    secret = "phq-live-very-secret-123"
    res = ws.run("plan", env=ws.env(PREDICTHQ_API_KEY=secret))
    assert res.code == 1
    assert "auth-failed" in res.stdout and "Authorization required" in res.stdout and "401" in res.stdout
    assert secret not in res.output
    assert [r.status for r in log(ws)] == [401]  # not retried


def test_validate_reports_bad_values_with_their_position(workspace: Workspace) -> None:
    ws = workspace
    text = manifest(SEED_MODEL_ID, "5d").replace("{industry: restaurants}", "{industry: bakery, interval: week}")
    path = ws.write("covers.yaml", text)
    res = ws.run("validate")
    assert res.code == 1
    lines = text.splitlines()
    window_line = next(i for i, line in enumerate(lines, 1) if "forecast_window" in line)
    demand_line = next(i for i, line in enumerate(lines, 1) if "demand_type" in line)
    assert f"covers.yaml:{window_line}:5: spec.training.forecast_window: Input should be '1d'" in res.stderr
    assert f"covers.yaml:{demand_line}:" in res.stderr
    assert "spec.training.demand_type.industry" in res.stderr and "spec.training.demand_type.interval" in res.stderr
    path.write_text(manifest(SEED_MODEL_ID).replace("forecast_window: 7d", "epochs: 3"))
    again = ws.run("validate")
    assert again.code == 1 and "unknown field 'spec.training.epochs'" in again.stderr
    assert "missing required field 'spec.training.forecast_window'" in again.stderr


def test_quickstart_manifest_trains_the_seeded_model(workspace: Workspace) -> None:
    ws = workspace
    shutil.copy(ROOT / "specs" / "predicthq.yaml", ws.specs / "predicthq.yaml")
    entry = plan_entry(ws, 2)
    assert entry["name"] == "downtown-covers" and codes(entry) == ["never-trained"]
    assert ws.run("apply").code == 0
    assert train_calls(ws) == [f"{MODELS}/{SEED_MODEL_ID}/train"] and log(ws, "PATCH") == []
    assert finish(ws, SEED_MODEL_ID) == "ready"
    assert plan_entry(ws, 0)["action"] == "none"
