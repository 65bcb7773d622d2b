"""The PredictHQ simulator against PredictHQ's own OpenAPI spec (`openapi/forecasts-api.yaml` in
predicthq/api-specs, as issue 13 lists it), Saved Locations in the documented shape, and the
`predicthq` package's generic calls through a simulator's own port.

The spec file is not in the repository (nor in CI), so these tests check its facts one by one;
`tools/openapi_check.py` runs schemathesis against the file itself when you have it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from helpers import Clock, one_simulator, sim

from reconciler.sandbox.predicthq.simulator import PredictHQSimulator
from reconciler.sandbox.predicthq.state import SEED_LOCATION_ID, SEED_MODEL_ID
from reconciler.sandbox.registry import SANDBOX_API_KEYS
from reconciler.sandbox.server import Sandbox

KEY = SANDBOX_API_KEYS["predicthq"]
MODELS = "/v1/forecasts/models"
LOCATIONS = "/v1/saved-locations"


@pytest.fixture
def sb(tmp_path: Path, clock: Clock) -> Iterator[Sandbox]:
    with one_simulator(tmp_path / "sim", "predicthq", clock=clock) as sandbox:
        yield sandbox


@pytest.fixture
def api(sb: Sandbox) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sb.base_url("predicthq"), headers={"Authorization": f"Bearer {KEY}"}) as c:
        yield c


def phq(sb: Sandbox) -> PredictHQSimulator:
    return sim(sb, "predicthq", PredictHQSimulator)


def model_of(api: httpx.Client, model_id: str) -> dict[str, Any]:
    resp = api.get(f"{MODELS}/{model_id}")
    assert resp.status_code == 200, resp.text
    return cast(dict[str, Any], resp.json()["model"])


def trained(sb: Sandbox, clock: Clock, api: httpx.Client, model_id: str) -> None:
    assert api.post(f"{MODELS}/{model_id}/train").status_code == 204
    clock.now += 101
    assert model_of(api, model_id)["readiness"]["status"] == "ready"


def fields(resp: httpx.Response) -> dict[str, str]:
    assert resp.status_code == 400, resp.text
    return {d["field"]: d["type"] for d in resp.json()["details"]}


def test_ndjson_demand_as_one_json_quoted_string(api: httpx.Client, sb: Sandbox) -> None:
    mid = phq(sb).add_model(demand_days=0)
    lines = '{"date": "2024-01-01", "demand": 3}\n{"date": "2024-01-02", "demand": 4}\n'
    resp = api.post(
        f"{MODELS}/{mid}/demand", content=json.dumps(lines), headers={"Content-Type": "application/x-ndjson"}
    )
    assert resp.status_code == 201, resp.text
    assert model_of(api, mid)["metrics"]["demand_data"] == {"date_range": {"start": "2024-01-01", "end": "2024-01-02"}}


def test_demand_input_refuses_extras_its_schema_forbids(api: httpx.Client, sb: Sandbox) -> None:
    mid = phq(sb).add_model(demand_days=0)
    body = {"demand": [{"date": "2024-01-01", "demand": 3, "store": "x"}]}
    assert fields(api.post(f"{MODELS}/{mid}/demand", json=body)) == {"body.demand[0].store": "extra_forbidden"}
    ndjson = '{"date": "2024-01-01", "demand": 3, "note": 1}\n'
    resp = api.post(f"{MODELS}/{mid}/demand", content=ndjson, headers={"Content-Type": "application/x-ndjson"})
    assert fields(resp) == {"body.demand[0].note": "extra_forbidden"}
    assert model_of(api, mid)["metrics"] is None  # nothing stored


def test_forecast_applies_and_validates_the_date_filters(api: httpx.Client, sb: Sandbox, clock: Clock) -> None:
    mid = phq(sb).add_model(demand_end="2023-11-10", demand_days=30)
    trained(sb, clock, api, mid)
    url = f"{MODELS}/{mid}/forecast"
    page = api.get(url, params={"date.gte": "2023-11-12", "date.lt": "2023-11-15"}).json()
    assert [r["date"] for r in page["results"]] == ["2023-11-12", "2023-11-13", "2023-11-14"]
    assert [
        r["date"] for r in api.get(url, params={"date.gt": "2023-11-16", "date.lte": "2023-11-17"}).json()["results"]
    ] == ["2023-11-17"]
    bad = api.get(url, params={"date.lte": "17/11/2023"})
    assert bad.status_code == 400
    assert bad.json() == {
        "error": [
            {
                "field": "date.lte",
                "msg": "Input should be a valid date in the format YYYY-MM-DD",
                "type": "date_parsing",
            }
        ]
    }


def test_patch_accepts_the_nulls_of_update_model_request(api: httpx.Client) -> None:
    url = f"{MODELS}/{SEED_MODEL_ID}"
    before = model_of(api, url.rsplit("/", 1)[1])
    body = {"algo": None, "forecast_window": None, "location": None, "name": None}
    assert api.patch(url, json=body).status_code == 204
    after = model_of(api, SEED_MODEL_ID)
    kept = ("algo", "forecast_window", "location", "name")
    assert {k: after[k] for k in kept} == {k: before[k] for k in kept}
    assert after["readiness"]["status"] == "created"  # nothing training-relevant changed
    assert api.patch(url, json={"external_id": None, "label": None}).status_code == 204
    assert (model_of(api, SEED_MODEL_ID)["external_id"], model_of(api, SEED_MODEL_ID)["label"]) == (None, None)
    assert fields(api.patch(url, json={"generate_baseline": None})) == {"body.generate_baseline": "bool_type"}


def test_create_refuses_a_null_external_id_and_empty_strings(api: httpx.Client) -> None:
    base = {"name": "m", "location": {"saved_location_id": SEED_LOCATION_ID}}
    assert fields(api.post(MODELS, json={**base, "external_id": None})) == {"body.external_id": "string_type"}
    # CreateModelRequest has no nullable field (PATCH and PUT do: demand_type, label)
    assert fields(api.post(MODELS, json={**base, "demand_type": None, "label": None})) == {
        "body.demand_type": "model_attributes_type",
        "body.label": "list_type",
    }
    assert fields(api.post(MODELS, json={**base, "external_id": ""})) == {"body.external_id": "string_too_short"}
    assert fields(api.post(MODELS, json={**base, "label": [""]})) == {"body.label[0]": "string_too_short"}
    url = f"{MODELS}/{SEED_MODEL_ID}"
    assert fields(api.patch(url, json={"external_id": "", "label": ["ok", ""]})) == {
        "body.external_id": "string_too_short",
        "body.label[1]": "string_too_short",
    }
    model = model_of(api, SEED_MODEL_ID)
    assert model["external_id"] == "downtown-covers" and model["label"] == ["quickstart"]  # never served back invalid


def test_demand_type_industry_is_optional_and_nested_extras_are_permitted(api: httpx.Client) -> None:
    body = {
        "name": "m",
        "location": {"saved_location_id": SEED_LOCATION_ID, "note": "spec allows extra keys here"},
        "demand_type": {"interval": "day", "unit": "covers"},
    }
    created = api.post(MODELS, json=body)
    assert created.status_code == 201, created.text
    model = model_of(api, created.json()["model_id"])
    assert model["demand_type"] == {"interval": "day", "industry": None}
    assert model["location"] == {"saved_location_id": SEED_LOCATION_ID}
    # the top level stays closed (additionalProperties: false)
    assert fields(api.post(MODELS, json={**body, "colour": "red"})) == {"body.colour": "extra_forbidden"}


def test_repeated_array_parameters_are_all_used(api: httpx.Client, sb: Sandbox, clock: Clock) -> None:
    other = phq(sb).add_model(demand_end="2023-11-10", demand_days=30)
    trained(sb, clock, api, other)
    both = api.get(MODELS, params=[("readiness_status", "created"), ("readiness_status", "ready")]).json()
    assert both["count"] == 2
    assert api.get(MODELS, params=[("readiness_status", "ready")]).json()["count"] == 1
    forecast = api.get(
        f"{MODELS}/{other}/forecast",
        params=[("include", "phq_explainability"), ("include", "phq_features"), ("limit", 1)],
    ).json()
    (row,) = forecast["results"]
    assert "phq_explainability" in row and "phq_features" in row


def test_training_data_is_null_until_trained(api: httpx.Client, sb: Sandbox, clock: Clock) -> None:
    mid = phq(sb).add_model(demand_end="2023-11-10", demand_days=30)
    assert api.post(f"{MODELS}/{mid}/train").status_code == 204
    clock.now += 50
    metrics = model_of(api, mid)["metrics"]
    assert metrics["training_data"] is None and metrics["accuracy"] is None
    clock.now += 51
    assert model_of(api, mid)["metrics"]["training_data"]["date_range"]["end"] == "2023-11-10"


def test_limit_zero_is_accepted(api: httpx.Client) -> None:
    page = api.get(MODELS, params={"limit": 0})
    assert page.status_code == 200, page.text
    assert page.json()["count"] == 1 and page.json()["results"] == [] and page.json()["next"] is None
    assert api.get(f"{MODELS}/{SEED_MODEL_ID}/demand", params={"limit": 0}).json()["results"] == []


def test_405_answers_carry_an_allow_header(api: httpx.Client) -> None:
    resp = api.post(f"{MODELS}/{SEED_MODEL_ID}")
    assert resp.status_code == 405 and resp.headers["allow"] == "DELETE, GET, HEAD, PATCH, PUT"
    resp = api.delete(MODELS)
    assert resp.status_code == 405 and resp.headers["allow"] == "GET, HEAD, POST"


def test_saved_locations_in_the_documented_shape(api: httpx.Client) -> None:
    feature = {"type": "Feature", "geometry": {"type": "Point", "coordinates": [174.77, -36.85]}}
    created = api.post(LOCATIONS, json={"name": "Auckland CBD", "geojson": feature, "labels": ["nz"]})
    assert created.status_code == 201, created.text
    location_id = created.json()["location_id"]
    listing = api.get(LOCATIONS, params={"location_id": location_id}).json()
    assert set(listing) == {"count", "next", "previous", "locations"} and listing["count"] == 1
    (found,) = listing["locations"]
    assert found == api.get(f"{LOCATIONS}/{location_id}").json()
    assert found["geojson"] == feature and found["status"] == "active" and found["labels"] == ["nz"]
    assert {"create_dt", "update_dt", "location_id", "name"} <= set(found)
    seeded = api.get(f"{LOCATIONS}/{SEED_LOCATION_ID}").json()
    assert seeded["geojson"]["geometry"]["type"] == "Point" and seeded["status"] == "active"

    bad = api.post(LOCATIONS, json={"name": "x", "geojson": {"type": "Point", "coordinates": [1, 2]}})
    assert fields(bad) == {"body.geojson.type": "literal_error"}
    assert api.put(f"{LOCATIONS}/{location_id}", json={"name": "Auckland", "geojson": feature}).status_code == 204
    assert api.get(f"{LOCATIONS}/{location_id}").json()["name"] == "Auckland"
    assert api.delete(f"{LOCATIONS}/{location_id}").status_code == 204
    assert api.get(f"{LOCATIONS}/{location_id}").status_code == 404


def test_each_simulator_also_answers_at_the_root_of_its_own_port(sb: Sandbox) -> None:
    root = sb.root_url("predicthq")
    assert root != sb.base_url("predicthq") and root.count("/") == 2  # no path prefix
    resp = httpx.get(f"{root}{MODELS}/{SEED_MODEL_ID}", headers={"Authorization": f"Bearer {KEY}"})
    assert resp.status_code == 200 and resp.json()["model"]["model_id"] == SEED_MODEL_ID
    (logged,) = sb.requests("predicthq", path=f"^{MODELS}/{SEED_MODEL_ID}$")
    assert logged.status == 200  # logged, and subject to faults, like a prefixed request
    assert httpx.get(f"{root}/_sandbox").status_code == 401  # the control API stays on the main port


def test_the_predicthq_package_through_its_own_port(sb: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("predicthq", reason="needs the sdk extra")
    from predicthq import Client
    from predicthq.config import config

    # the client joins "/v1/..." onto ENDPOINT_URL, dropping any path: the root of the own port
    monkeypatch.setitem(config._config, "ENDPOINT_URL", sb.root_url("predicthq"))
    phq_client = Client(access_token=KEY)
    model = phq_client.get(f"{MODELS}/{SEED_MODEL_ID}")
    assert model["model"]["model_id"] == SEED_MODEL_ID
    created = phq_client.post(MODELS, json={"name": "sdk", "location": {"saved_location_id": SEED_LOCATION_ID}})
    assert len(created["model_id"]) == 22
    assert phq_client.patch(f"{MODELS}/{created['model_id']}", json={"forecast_window": "14d"}) is None  # 204

    feature = {"type": "Feature", "geometry": {"type": "Point", "coordinates": [-122.33, 47.61]}}
    made = phq_client.saved_locations.create(name="Seattle", geojson=feature)
    got = phq_client.saved_locations.get(location_id=made.location_id)
    assert got.location_id == made.location_id and got.status == "active" and got.geojson is not None
    listed = phq_client.saved_locations.search()
    assert {loc.location_id for loc in listed} == {SEED_LOCATION_ID, made.location_id}


def test_a_null_industry_is_refused(api: httpx.Client) -> None:
    # InputDemandType.industry is an Industry, not nullable (only the whole demand_type is, on PATCH)
    body = {"name": "m", "location": {"saved_location_id": SEED_LOCATION_ID}}
    created = api.post(MODELS, json={**body, "demand_type": {"interval": "day", "industry": None}})
    assert fields(created) == {"body.demand_type.industry": "enum"}
    url = f"{MODELS}/{SEED_MODEL_ID}"
    assert fields(api.patch(url, json={"demand_type": {"industry": None}})) == {"body.demand_type.industry": "enum"}
    assert api.patch(url, json={"demand_type": None}).status_code == 204


@pytest.mark.parametrize("method", ["TRACE", "QUERY"])
def test_trace_and_query_are_methods_not_allowed(api: httpx.Client, method: str) -> None:
    # http.server answers a method without a do_<METHOD> with an HTML 501; the API answers 405
    resp = api.request(method, f"{MODELS}/{SEED_MODEL_ID}/train")
    assert resp.status_code == 405 and resp.headers["allow"] == "POST"
    assert resp.json() == {"error": "Method Not Allowed"}


def test_demand_dates_stay_in_the_window_of_beams_upload(api: httpx.Client, sb: Sandbox) -> None:
    # [I] as Beam's upload docs say: 2017-01-01 to a year after today (the clock is 2023-11-14);
    # without it, two rows 0001-01-01 and 9999-12-31 made train list 3.6 million missing dates
    mid = phq(sb).add_model(demand_days=0)
    url = f"{MODELS}/{mid}/demand"
    rows = [{"date": d, "demand": 1} for d in ("2016-12-31", "2017-01-01", "2024-11-13", "2024-11-14")]
    assert fields(api.post(url, json={"demand": rows})) == {
        "body.demand[0].date": "value_error",
        "body.demand[3].date": "value_error",
    }
    assert api.post(url, json={"demand": rows[1:3]}).status_code == 201
    resp = api.post(url, content="date,demand\n0001-01-01,1\n", headers={"Content-Type": "text/csv"})
    assert resp.json()["details"][0]["msg"] == "Date should be between 2017-01-01 and 2024-11-13"
