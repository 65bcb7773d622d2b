"""Lucid: the real CLI against the Lucid simulator over HTTP, plus the simulator's own API."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helpers
import httpx
import pytest
from helpers import Workspace, codes, one_simulator, train_calls, wait_until

from reconciler import runtime
from reconciler.providers.lucid.schema import LucidModel, LucidTraining
from reconciler.sandbox.faults import Fault, LoggedRequest
from reconciler.sandbox.lucid.simulator import LucidSimulator
from reconciler.sandbox.lucid.validation import UNAUTHORIZED_BODY
from reconciler.sandbox.registry import SANDBOX_API_KEYS
from reconciler.sandbox.server import Sandbox
from reconciler.spec import load_manifests

KEY = SANDBOX_API_KEYS["lucid"]

# A named Provider only to poll fast: the base URL still comes from RECONCILER_LUCID_BASE_URL.
PROVIDER = """\
apiVersion: reconciler/v1
kind: Provider
metadata: {name: lucid-test}
spec: {type: lucid, poll_interval: 100ms}
"""

MODEL = """\
apiVersion: reconciler/v1
kind: TrainedModel
metadata: {name: NAME}
spec:
  provider: lucid-test
  model: {model_id: MODEL_ID}
  training:
    data_tags: TAGS
    maximum_interaction_age_days: 180
    data_filters: {entity_types: [product]}
  policy: {retry_backoff: 0s}
"""


def manifest(name: str = "shop-recs", model_id: str = "shop-recs", tags: str = "[shop]") -> str:
    return MODEL.replace("NAME", name).replace("MODEL_ID", model_id).replace("TAGS", tags)


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    """Only the Lucid simulator (trainings take 0.6 s), so other providers cannot interfere."""
    with one_simulator(tmp_path / "world", "lucid", training_seconds=0.6) as sb:
        yield sb


def sim(ws: Workspace | Sandbox) -> LucidSimulator:
    return helpers.sim(ws, "lucid", LucidSimulator)


def setup(ws: Workspace, *models: str) -> None:
    ws.write("provider.yaml", PROVIDER)
    for i, text in enumerate(models or (manifest(),)):
        ws.write(f"m{i}.yaml", text)


def plan_entry(ws: Workspace, name: str = "shop-recs") -> tuple[int, dict[str, Any]]:
    result = ws.run("plan", "--output", "json")
    entries = {m["name"]: m for m in result.json()["models"]}
    return result.code, entries[name]


def trains(ws: Workspace) -> list[LoggedRequest]:
    return train_calls(ws, "lucid", path=r"^/v1/recommender/train$")


# -- CLI against the sandbox ------------------------------------------------------------------


def test_never_trained_then_train_call_then_in_sync(workspace: Workspace) -> None:
    ws = workspace
    setup(ws)
    code, entry = plan_entry(ws)
    assert code == 2 and entry["action"] == "train"
    assert codes(entry) == ["never-trained"]

    reads = ws.sandbox.requests("lucid")
    assert {(r.method, r.path) for r in reads} == {
        ("GET", "/v1/recommender/status"),
        ("GET", "/v1/recommender/data_batch"),
    }
    status = next(r for r in reads if r.path.endswith("/status"))
    batches = next(r for r in reads if r.path.endswith("/data_batch"))
    assert status.status == 404 and status.query == {"model_id": ["shop-recs"]}
    assert batches.status == 200 and batches.query == {"tags": ["shop"]}
    for r in reads:
        assert r.headers["apikey"] == KEY
        assert r.headers["accept"] == "application/json"
    assert trains(ws) == []  # plan never writes to a provider

    sim(ws).training_seconds = 30  # still running when the second apply looks
    applied = ws.run("apply")
    assert applied.code == 0, applied.output
    (call,) = trains(ws)
    assert call.headers["apikey"] == KEY and call.headers["content-type"] == "application/json"
    assert call.json() == {
        "model_id": "shop-recs",
        "maximum_interaction_age_days": 180,
        "data_tags": ["shop"],
        "data_filters": {"entity_types": ["product"]},
    }
    (record,) = sim(ws).trainings("shop-recs")
    assert sorted(record["data_batch_ids"]) == sorted(sim(ws).batch_ids(["shop"]))

    again = ws.run("apply", "--output", "json")  # in flight: never a second training
    assert again.code == 0, again.output
    (entry,) = again.json()["models"]
    assert entry["action"] == "wait" and codes(entry) == ["in-flight"]
    assert len(trains(ws)) == 1


def test_models_of_several_data_tags_sets_share_one_batch_query(workspace: Workspace) -> None:
    ws = workspace
    setup(
        ws,
        manifest("recs-a", "recs-a", "[shop]"),
        manifest("recs-b", "recs-b", "[shop]"),
        manifest("recs-c", "recs-c", "[blog, interactions]"),
    )
    result = ws.run("plan", "--output", "json")
    assert result.code == 2 and result.json()["summary"] == {"train": 2, "hold": 1}  # max 2 in flight
    statuses = ws.sandbox.requests("lucid", path="/status$")
    batches = ws.sandbox.requests("lucid", path="/data_batch$")
    assert sorted(r.q("model_id") or "" for r in statuses) == ["recs-a", "recs-b", "recs-c"]
    # one unfiltered query answers every set: each batch shows its tags (issue 14: <= 1 request per model)
    assert [tuple(r.query.get("tags", [])) for r in batches] == [()]


def test_spec_changed_when_data_tags_change_not_when_reordered(workspace: Workspace) -> None:
    ws = workspace
    setup(ws, manifest(tags="[shop, interactions]"))
    applied = ws.run("apply", "--wait")
    assert applied.code == 0, applied.output
    trained = load_manifests([ws.specs]).models["shop-recs"].fingerprint
    ws.write("m0.yaml", manifest(tags="[interactions, shop, shop]"))
    assert load_manifests([ws.specs]).models["shop-recs"].fingerprint == trained  # same tags

    ws.write("m0.yaml", manifest(tags="[shop]"))
    code, entry = plan_entry(ws)
    assert code == 2 and entry["action"] == "train"
    # the other tags select other batches, but that is the spec change, not a data change
    assert codes(entry) == ["spec-changed"]
    assert entry["changes"] == [{"path": "training.data_tags", "before": ["interactions", "shop"], "after": ["shop"]}]
    assert ws.run("apply").code == 0
    assert [t.json()["data_tags"] for t in trains(ws)] == [["interactions", "shop"], ["shop"]]
    assert LucidTraining.model_validate({"data_tags": ["b", "a", "b"]}).data_tags == ["a", "b"]


def test_data_changed_names_new_and_removed_batches(workspace: Workspace) -> None:
    ws = workspace
    setup(ws)
    assert ws.run("apply", "--wait").code == 0
    trained = sim(ws).trainings("shop-recs")[0]["data_batch_ids"]

    unrelated = sim(ws).add_batch(["blog"])  # not tagged shop: not this model's data
    new = sim(ws).add_batch(["shop", "interactions"])
    old = trained[0]
    sim(ws).remove_batch(old)
    code, entry = plan_entry(ws)
    assert code == 2 and entry["action"] == "train"
    assert codes(entry) == ["data-changed"]
    detail = entry["reasons"][0]["detail"]
    assert f"1 new data batch ({new})" in detail and f"1 removed ({old})" in detail
    assert unrelated not in detail

    assert ws.run("apply").code == 0
    assert sorted(sim(ws).trainings("shop-recs")[-1]["data_batch_ids"]) == sorted([*trained[1:], new])


def test_training_failed_then_retried(workspace: Workspace) -> None:
    ws = workspace
    setup(ws)
    sim(ws).fail_next_trainings(1, "not enough interactions to train")
    applied = ws.run("apply", "--wait")
    assert applied.code == 1
    assert "shop-recs: failed: not enough interactions to train" in applied.stderr
    assert sim(ws).status_of("shop-recs")["status"] == "error"  # type: ignore[index]

    code, entry = plan_entry(ws)
    assert code == 2 and entry["action"] == "retry"
    assert codes(entry) == ["training-failed"]
    assert ws.run("apply").code == 0
    assert len(trains(ws)) == 2


def test_apply_wait_prints_progress_percentages(workspace: Workspace) -> None:
    ws = workspace
    setup(ws)
    applied = ws.run("apply", "--wait")
    assert applied.code == 0, applied.output
    progress = [int(p) for p in re.findall(r"^shop-recs: running (\d+)%$", applied.stderr, re.M)]
    assert progress, applied.stderr
    assert progress == sorted(progress) and all(0 <= p <= 100 for p in progress)
    assert applied.stderr.rstrip().endswith("shop-recs: succeeded")


def test_missing_base_url_is_a_clear_error(workspace: Workspace) -> None:
    ws = workspace
    ws.write("m0.yaml", manifest().replace("lucid-test", "lucid"))
    env = ws.env()
    del env["RECONCILER_LUCID_BASE_URL"]
    for command in (("plan",), ("apply",)):
        result = ws.run(*command, env=env)
        assert result.code == 1, result.output
        assert "RECONCILER_LUCID_BASE_URL" in result.output and "no public host" in result.output
    assert ws.sandbox.requests("lucid") == []


def test_wrong_key_is_an_auth_error(workspace: Workspace) -> None:
    ws = workspace
    setup(ws)
    result = ws.run("plan", "--output", "json", env=ws.env(LUCID_API_KEY="wrong-key"))
    assert result.code == 1
    (entry,) = result.json()["models"]
    assert entry["action"] == "error" and codes(entry) == ["auth-failed"]
    assert "Invalid or missing API key" in entry["reasons"][0]["detail"]
    assert "wrong-key" not in result.output
    assert {r.status for r in ws.sandbox.requests("lucid")} == {401}


def test_missing_status_route_is_an_error_not_never_trained(workspace: Workspace) -> None:
    ws = workspace
    setup(ws)
    # what a wrong status path looks like: FastAPI's bare 404, not a model-specific one
    ws.sandbox.inject(Fault(provider="lucid", path="/status$", status=404, body={"detail": "Not Found"}))
    code, entry = plan_entry(ws)
    assert code == 1 and entry["action"] == "error" and codes(entry) == ["not-found"]


def test_hostile_model_id_stays_in_the_query(workspace: Workspace) -> None:
    ws = workspace
    setup(ws, manifest(model_id="'../x?y#z'"))
    assert ws.run("plan").code == 2
    (status,) = ws.sandbox.requests("lucid", path="/status")
    assert status.path == "/v1/recommender/status" and status.query == {"model_id": ["../x?y#z"]}


def test_tags_matching_no_batch_are_an_error_not_a_training(workspace: Workspace) -> None:
    """Lucid would answer 422: the spec or the data is wrong, so nothing is sent (issue 13)."""
    ws = workspace
    setup(ws, manifest(tags="[shop, nosuch]"))
    code, entry = plan_entry(ws)
    assert (code, entry["action"], codes(entry)) == (1, "error", ["provider-error"])
    assert "no data batch carries every tag of data_tags ['nosuch', 'shop']" in entry["reasons"][0]["detail"]
    for _ in range(2):  # every run says so; none calls train
        applied = ws.run("apply")
        assert applied.code == 1 and "data_tags" in applied.stdout, applied.output
    assert trains(ws) == []
    sim(ws).add_batch(["shop", "nosuch"])
    assert plan_entry(ws)[1]["action"] == "train"


def test_lucid_422_on_train_is_a_permanent_error_not_an_attempt(workspace: Workspace) -> None:
    """The data goes away between observing and the train call: Lucid refuses it (422). That is
    reported with Lucid's message; no attempt is counted and no backoff set (issue 13)."""
    ws = workspace
    setup(ws)
    assert ws.run("apply", "--wait").code == 0
    new = sim(ws).add_batch(["shop"])
    code, entry = plan_entry(ws)
    assert (code, entry["action"], codes(entry)) == (2, "train", ["data-changed"])

    gate = helpers.Gate(ws.sandbox, ("lucid",), r"/train$")
    result: list[helpers.CliResult] = []
    try:
        applying = threading.Thread(target=lambda: result.append(ws.run("apply")))
        applying.start()
        wait_until(lambda: gate.count("lucid"), 30, "the train call to reach Lucid")
        for batch in [new, *sim(ws).batch_ids(["shop"])]:
            sim(ws).remove_batch(batch)
        gate.open()
        applying.join(30)
    finally:
        gate.remove()
    (applied,) = result
    assert applied.code == 1, applied.output
    assert trains(ws)[-1].status == 422
    assert "shop-recs: not started" in applied.stderr
    assert "HTTP 422: body.data_tags: no data batch matches all data_tags" in applied.stderr  # Lucid's words
    refused = ws.events("shop-recs")[-1]
    assert (refused["event"], refused["reason"]) == ("refused", "provider-error")
    assert "no data batch matches all data_tags" in refused["detail"]["message"]

    status = ws.run("status", "-o", "json")
    (model,) = status.json()["models"]
    last = model["last_training"]
    assert (last["status"], last["attempts"], last["next_attempt_at"]) == ("succeeded", 0, None)
    # the next runs report the missing data and call nothing
    assert (status.code, model["action"], codes(model)) == (1, "error", ["provider-error"])
    assert ws.run("apply").code == 1 and len(trains(ws)) == 2

    sim(ws).add_batch(["shop"])  # the data is back: trains at once, no backoff to wait out
    assert ws.run("apply").code == 0
    assert trains(ws)[-1].status == 200


def test_model_trained_by_hand_is_an_unknown_baseline(workspace: Workspace) -> None:
    ws = workspace
    setup(ws)
    sim(ws).mark_trained("shop-recs", ["shop"])
    code, entry = plan_entry(ws)
    assert (code, entry["action"], codes(entry)) == (0, "hold", ["unknown-baseline"])
    assert ws.run("adopt", "shop-recs").code == 0
    assert plan_entry(ws)[1]["action"] == "none"


def test_callback_url_is_sent_and_called_on_completion(workspace: Workspace) -> None:
    ws = workspace
    setup(ws)
    hook = ws.sandbox.url + "/lucid/hooks/lucid"  # logged by the sandbox like any request
    assert ws.run("apply", "--wait", env=ws.env(RECONCILER_LUCID_CALLBACK_URL=hook)).code == 0
    assert trains(ws)[0].json()["callback_url"] == hook
    wait_until(lambda: ws.sandbox.requests("lucid", path="^/hooks/lucid$"), 10, "the completion callback")
    (call,) = ws.sandbox.requests("lucid", path="^/hooks/lucid$")
    assert call.method == "POST" and call.json()["status"] == "completed"
    assert call.json()["model_id"] == "shop-recs" and call.json()["progress"] == 100


def test_invalid_training_fields_are_rejected_offline(workspace: Workspace) -> None:
    ws = workspace
    bad = manifest().replace("maximum_interaction_age_days: 180", "maximum_interaction_age_days: 0")
    setup(ws, bad.replace("data_tags: [shop]", "data_tags: [shop, '']"))
    result = ws.run("validate")
    assert result.code == 1
    lines = result.stderr.splitlines()
    assert any(line.startswith("specs/m0.yaml:8:") and "data_tags.1" in line for line in lines), result.stderr
    assert any(line.startswith("specs/m0.yaml:9:") and "maximum_interaction_age_days" in line for line in lines)
    assert ws.sandbox.requests("lucid") == []


def test_quickstart_spec_and_example_validate() -> None:
    root = Path(__file__).resolve().parent.parent
    # Lucid has no public host: the operator names theirs, which allows the example's base_url
    trust = runtime.trust({"RECONCILER_LUCID_BASE_URL": "https://lucid.example.com"})
    found = load_manifests([root / "specs/lucid.yaml", root / "examples/lucid/recommender.yaml"], trust=trust)
    assert {m.provider_type for m in found.models.values()} == {"lucid"} and len(found.models) == 3
    assert found.providers["lucid-prod"].base_url == "https://lucid.example.com"


# -- the simulator's own API ----------------------------------------------------------------


def api(sb: Sandbox, key: str = KEY) -> httpx.Client:
    return httpx.Client(base_url=sb.base_url("lucid") + "/v1/recommender", headers={"apikey": key}, timeout=5)


def test_sim_rejects_missing_and_wrong_keys(sandbox: Sandbox) -> None:
    base = sandbox.base_url("lucid") + "/v1/recommender"
    for headers in ({}, {"apikey": "wrong"}, {"Authorization": f"Bearer {KEY}"}):
        resp = httpx.get(base + "/data_batch", headers=headers)
        assert resp.status_code == 401 and resp.json() == UNAUTHORIZED_BODY
    with api(sandbox, "wrong") as c:
        assert c.post("/train", json={"model_id": "m"}).status_code == 401
    assert sim(sandbox).status_of("m") is None


def test_sim_batches_upload_filter_all_tags_and_delete(sandbox: Sandbox) -> None:
    with api(sandbox) as c:
        files = [
            ("files", ("views.csv", b"type,source_id,target_id,timestamp,metadata\nview,u1,p1,,\nbuy,u2,p1,,\n")),
            ("files", ("items.csv", b"id,type,name,metadata,media_url\np1,product,Shoe,,\n")),
        ]
        up = c.post("/data_batch", files=files, data={"tags": ["shop", "fresh"]})
        assert up.status_code == 200, up.text
        made = up.json()
        assert [(b["entity_count"], b["interaction_count"]) for b in made] == [(0, 2), (1, 0)]
        assert all(b["tags"] == ["fresh", "shop"] and b["timestamp"].endswith("Z") for b in made)

        both = c.get("/data_batch", params={"tags": ["shop", "fresh"]}).json()
        assert {b["batch_id"] for b in both} == {b["batch_id"] for b in made}
        assert len(c.get("/data_batch", params={"tags": ["shop"]}).json()) == 4  # 2 seeded + 2 new
        assert c.get("/data_batch", params={"tags": ["fresh", "blog"]}).json() == []
        one = c.get("/data_batch", params={"batch_id": made[0]["batch_id"]}).json()
        assert [b["batch_id"] for b in one] == [made[0]["batch_id"]]

        no_header = c.post("/data_batch", files=[("files", ("x.csv", b"foo,bar\n1,2\n"))], data={"tags": "x"})
        assert no_header.status_code == 422 and "unknown file kind" in no_header.text
        assert c.delete("/data_batch").status_code == 422  # never an unfiltered wipe
        gone = c.delete("/data_batch", params={"tags": ["fresh"]}).json()
        assert len(gone) == 2 and c.get("/data_batch", params={"tags": ["fresh"]}).json() == []


def test_sim_training_state_machine_and_status(sandbox: Sandbox) -> None:
    with api(sandbox) as c:
        assert c.get("/status", params={"model_id": "m1"}).status_code == 404
        assert c.get("/status").status_code == 422
        refused = c.post("/train", json={"model_id": "m1", "data_tags": ["nothing"]})
        assert refused.status_code == 422
        assert refused.json() == {
            "detail": [
                {"loc": ["body", "data_tags"], "msg": "no data batch matches all data_tags", "type": "value_error"}
            ]
        }
        assert c.get("/status", params={"model_id": "m1"}).status_code == 404  # nothing was started
        bad = c.post("/train", json={"model_id": "m1", "maximum_interaction_age_days": "30"})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "maximum_interaction_age_days"]

        started = c.post("/train", json={"model_id": "m1", "data_tags": ["blog"]})
        assert started.status_code == 200
        body = started.json()
        assert body["status"] == "running" and body["progress"] == 0 and body["end_timestamp"] is None
        assert body["data_batch_ids"] == sim(sandbox).batch_ids(["blog"])
        assert c.post("/train", json={"model_id": "m1"}).status_code == 409  # one at a time [I]

        seen = []
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            status = c.get("/status", params={"model_id": "m1"}).json()
            seen.append(status["progress"])
            if status["status"] != "running":
                break
            time.sleep(0.1)
        assert status["status"] == "completed" and status["progress"] == 100
        assert status["end_timestamp"] > status["start_timestamp"]
        assert seen == sorted(seen) and len(set(seen)) > 2

        sim(sandbox).fail_next_trainings(1, "bad data")
        c.post("/train", json={"model_id": "m1"})
        failed = wait_until(
            lambda: (got := c.get("/status", params={"model_id": "m1"}).json())["status"] != "running" and got,
            10,
            "the failing training to end",
        )
        assert failed["status"] == "error" and failed["message"] == "bad data"
        # no data_tags: every batch
        assert failed["data_batch_ids"] == sim(sandbox).batch_ids()


async def test_callback_url_comes_from_the_operator_env_given_to_the_adapter(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The providers layer never reads `os.environ`: the composition root hands the adapter its env."""
    from reconciler.providers.base import ProviderContext
    from reconciler.providers.http import HttpClient
    from reconciler.providers.lucid.adapter import CALLBACK_ENV, LucidAdapter

    (tmp_path / "provider.yaml").write_text(PROVIDER)
    (tmp_path / "m.yaml").write_text(manifest())
    loaded = load_manifests([tmp_path])
    sim(sandbox).add_batch(["shop"])
    monkeypatch.setenv(CALLBACK_ENV, "https://from-the-process-env.example/hook")
    given = "https://given-by-the-runtime.example/hooks/lucid"
    http = HttpClient(
        "lucid",
        sandbox.base_url("lucid"),
        api_key=SANDBOX_API_KEYS["lucid"],
        auth=LucidAdapter.auth,
        requests_per_second=0,
    )
    adapter = LucidAdapter(ProviderContext(config=loaded.providers["lucid-test"], http=http, env={CALLBACK_ENV: given}))
    try:
        await adapter.train([loaded.models["shop-recs"].typed(LucidModel, LucidTraining)])
    finally:
        await http.aclose()
    (call,) = train_calls(sandbox, "lucid", path=r"^/v1/recommender/train$")
    assert call.json()["callback_url"] == given
