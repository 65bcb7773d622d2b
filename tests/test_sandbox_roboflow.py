"""The Roboflow simulator against providers.md section 3, over real HTTP; its version answer is
reused once it stops moving with the clock, its bytes those of the view encoded afresh."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from helpers import Clock, one_simulator, sim

from reconciler.sandbox import Fault, Sandbox
from reconciler.sandbox.roboflow.simulator import RoboflowSimulator
from reconciler.sandbox.roboflow.validation import UNAUTHORIZED_BODY, VALID_MODEL_TYPES

KEY = "sandbox-roboflow-key"
PATH = "/acme/hardhats/3"


def client(sb: Sandbox) -> httpx.Client:
    return httpx.Client(base_url=sb.base_url("roboflow"), params={"api_key": KEY}, timeout=5)


def rf(sb: Sandbox) -> RoboflowSimulator:
    return sim(sb, "roboflow", RoboflowSimulator)


def version(api: httpx.Client, path: str = PATH) -> dict[str, Any]:
    resp = api.get(path, params={"api_key": KEY, "nocache": "true"})
    assert resp.status_code == 200, resp.text
    return cast(dict[str, Any], resp.json()["version"])


@pytest.fixture
def sandbox(tmp_path: Path, clock: Clock) -> Iterator[Sandbox]:
    """A roboflow sandbox on a fake clock: 100 s trainings, advanced by hand."""
    with one_simulator(tmp_path / "sandbox", "roboflow", clock=clock) as sb:
        yield sb


@pytest.fixture
def api(sandbox: Sandbox) -> Iterator[httpx.Client]:
    with client(sandbox) as c:
        yield c


# -- auth and metadata ---------------------------------------------------------------------------


def test_auth_rejects_missing_and_wrong_keys(sandbox: Sandbox) -> None:
    base = sandbox.base_url("roboflow")
    for params in ({}, {"api_key": "wrong"}):
        resp = httpx.get(f"{base}/acme/hardhats/3", params=params)
        assert resp.status_code == 401
        assert resp.json() == UNAUTHORIZED_BODY
        assert resp.json()["error"]["message"] == "This API key does not exist (or has been revoked)."
        assert resp.json()["error"]["type"] == "OAuthException"
    assert httpx.post(f"{base}/acme/hardhats/3/train", json={}).status_code == 401
    assert rf(sandbox).training_status("acme", "hardhats", 3) is None

    resp = httpx.get(f"{base}/", params={"api_key": KEY})
    assert resp.status_code == 200
    assert resp.json()["workspace"] == "acme"
    assert resp.json()["instructions"] == "You are successfully authenticated."


def test_seeded_projects_and_version_shape(api: httpx.Client) -> None:
    project = api.get("/acme/hardhats").json()
    assert project["project"]["id"] == "acme/hardhats"
    assert [v["id"] for v in project["versions"]] == ["acme/hardhats/1", "acme/hardhats/2", "acme/hardhats/3"]
    assert [v["id"] for v in api.get("/acme/forklifts").json()["versions"]] == [
        "acme/forklifts/1",
        "acme/forklifts/2",
    ]
    assert all("model" not in v and "train" not in v for v in project["versions"])

    body = api.get("/acme/hardhats/3", params={"api_key": KEY, "nocache": "true"}).json()
    assert set(body) == {"workspace", "project", "version"}
    assert body["workspace"]["url"] == "acme"
    v = body["version"]
    assert v["id"] == "acme/hardhats/3"
    assert isinstance(v["created"], float)
    assert v["generating"] is False and v["progress"] == 1.0
    assert set(v["splits"]) == {"train", "valid", "test"} and v["images"] > 0
    assert {"preprocessing", "augmentation", "exports", "name"} <= set(v)
    assert not {"train", "model", "models"} & set(v)

    assert {p["id"] for p in api.get("/acme").json()["workspace"]["projects"]} == {"acme/hardhats", "acme/forklifts"}


@pytest.mark.parametrize(
    ("path", "fragment"),
    [("/nope/hardhats/1", "nope"), ("/acme/nope/1", "acme/nope"), ("/acme/hardhats/9", "acme/hardhats/9")],
)
def test_unknown_workspace_project_version_is_404(api: httpx.Client, path: str, fragment: str) -> None:
    resp = api.get(path)
    assert resp.status_code == 404
    assert isinstance(resp.json()["error"], str) and fragment in resp.json()["error"]
    assert api.post(path + "/train", json={}).status_code == 404


# -- the training state machine over real time -------------------------------------------------


def test_train_and_poll_end_to_end(tmp_path: Path) -> None:
    with Sandbox(tmp_path, providers=["roboflow"], training_seconds=0.5) as sb, client(sb) as api:
        resp = api.post(
            "/acme/hardhats/3/train",
            params={"api_key": KEY, "nocache": "true"},
            json={"modelType": "rfdetr-nano", "epochs": 20},
        )
        assert (resp.status_code, resp.json()) == (200, {"message": "Training started"})

        v = version(api)
        assert v["train"]["status"] in ("queued", "running") and v["train"]["requestedStop"] is False
        assert "model" not in v
        if v["train"]["status"] == "queued":  # (queued only for the first 10%: 50 ms here)
            assert "models" not in v  # machine spinning up

        # No second training while one is in flight.
        again = api.post("/acme/hardhats/3/train", json={"modelType": "rfdetr-nano"})
        assert again.status_code == 409
        assert again.json()["error"]["type"] == "Conflict"
        assert set(again.json()["error"]) == {"type", "message", "code"}

        seen_running: list[int] = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            v = version(api)
            if v["train"]["status"] == "running":
                seen_running.append(len(v["models"]["roboflow-train"]["epochs"]))
                assert "model" not in v
            if v["train"]["status"] == "finished":
                break
            time.sleep(0.04)
        assert v["train"]["status"] == "finished"
        assert seen_running, "never observed the running state"
        assert seen_running == sorted(seen_running) and seen_running[-1] < 20  # epochs grow with time
        epochs = v["models"]["roboflow-train"]["epochs"]
        assert [int(e["epoch"]) for e in epochs] == list(range(20))
        assert {"epoch", "mAP", "box_loss", "class_loss", "obj_loss"} <= set(epochs[0])
        assert float(epochs[-1]["mAP"]) > float(epochs[0]["mAP"])
        assert "class_map" in v["train"]["results"]

        model = v["model"]
        assert model["id"] == "hardhats/3" and model["endpoint"].endswith("/hardhats/3")
        assert model["modelType"] == "rfdetr-nano" and model["epochs"] == 20
        assert 0 < model["end"] - model["start"] <= 0.5
        assert 0 < float(model["map"]) <= 100 and float(model["recall"]) > 0 and float(model["precision"]) > 0

        runs = api.get("/acme/hardhats/3/v2/trainings").json()["trainings"]
        assert len(runs) == 1
        assert runs[0]["status"] == "finished" and runs[0]["modelType"] == "rfdetr-nano"
        assert runs[0]["modelIds"] == ["hardhats/3"] and runs[0]["start"] < runs[0]["end"]
        assert set(runs[0]) >= {"trainingId", "status", "modelType", "modelGroup", "modelIds", "start"}

        # Once it ended, training again is allowed.
        assert api.post("/acme/hardhats/3/train", json={"modelType": "rfdetr-nano"}).status_code == 200


def test_both_model_type_spellings_and_defaults(api: httpx.Client, sandbox: Sandbox) -> None:
    assert api.post("/acme/hardhats/1/train", json={"modelType": "rfdetr-base", "epochs": 5}).status_code == 200
    assert api.post("/acme/hardhats/2/train", json={"model_type": "yolov8n", "speed": "accurate"}).status_code == 200
    assert api.post("/acme/forklifts/1/train").status_code == 200  # no body at all
    assert rf(sandbox).trainings("acme", "hardhats", 1)[0]["modelType"] == "rfdetr-base"
    assert rf(sandbox).trainings("acme", "hardhats", 2)[0]["modelType"] == "yolov8n"
    assert rf(sandbox).trainings("acme", "forklifts", 1)[0]["modelType"] in VALID_MODEL_TYPES
    sent = [r.json() for r in sandbox.requests("roboflow", method="POST")]
    assert sent == [{"modelType": "rfdetr-base", "epochs": 5}, {"model_type": "yolov8n", "speed": "accurate"}, None]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"modelType": "resnet-9000"}, "rfdetr-nano"),  # the error lists the valid types
        ({"model_type": 3}, "yolov8n"),
        ({"modelType": "rfdetr-nano", "epochs": 0}, "epochs"),
        ({"modelType": "rfdetr-nano", "epochs": "10"}, "epochs"),
        ({"modelType": "rfdetr-nano", "speed": "ludicrous"}, "speed"),
        ({"modelType": "rfdetr-nano", "checkpoint": 7}, "checkpoint"),
        (["rfdetr-nano"], "object"),
    ],
)
def test_invalid_train_requests_are_400(api: httpx.Client, sandbox: Sandbox, body: Any, fragment: str) -> None:
    resp = api.post("/acme/hardhats/3/train", json=body)
    assert resp.status_code == 400
    assert isinstance(resp.json()["error"], str) and fragment in resp.json()["error"]
    assert rf(sandbox).training_status("acme", "hardhats", 3) is None


def test_bad_json_is_400(api: httpx.Client) -> None:
    resp = api.post("/acme/hardhats/3/train", content=b"{oops", headers={"Content-Type": "application/json"})
    assert resp.status_code == 400 and "error" in resp.json()


# -- state machine on a fake clock: failures, retrains, cancel, v2 ---------------------------------


def test_failure_and_model_kept_during_retrain(api: httpx.Client, sandbox: Sandbox, clock: Clock) -> None:
    sim = rf(sandbox)
    sim.mark_trained("acme", "hardhats", 3, model_type="rfdetr-small", epochs=50)  # by hand: unknown baseline
    v = version(api)
    hand_made = v["model"]
    assert hand_made["modelType"] == "rfdetr-small" and v["train"]["status"] == "finished"
    assert [r["status"] for r in api.get("/acme/hardhats/3/v2/trainings").json()["trainings"]] == ["finished"]

    sim.fail_next_trainings(1, "Dataset export failed")
    assert api.post("/acme/hardhats/3/train", json={"modelType": "rfdetr-nano", "epochs": 10}).status_code == 200
    clock.now += 50
    v = version(api)
    assert v["train"]["status"] == "running"
    assert len(v["models"]["roboflow-train"]["epochs"]) == 4  # (50 - 10) / 90 of 10 epochs
    assert v["model"] == hand_made  # the last successful model stays while the retrain runs
    clock.now += 50
    v = version(api)
    assert v["train"]["status"] == "failed" and v["train"]["message"] == "Dataset export failed"
    assert "results" not in v["train"]
    assert v["model"] == hand_made  # a failed retrain does not replace it

    assert api.post("/acme/hardhats/3/train", json={"modelType": "rfdetr-nano", "epochs": 10}).status_code == 200
    clock.now += 100
    v = version(api)
    assert v["train"]["status"] == "finished" and v["model"]["modelType"] == "rfdetr-nano"
    assert [r["status"] for r in sim.trainings("acme", "hardhats", 3)] == ["finished", "failed", "finished"]


def test_cancel(api: httpx.Client, clock: Clock) -> None:
    cannot = {"error": {"type": "Conflict", "message": "Cannot cancel non-running train job.", "code": "CANNOT_CANCEL"}}
    resp = api.post("/acme/hardhats/2/train/cancel", json={})
    assert (resp.status_code, resp.json()) == (409, cannot)

    api.post("/acme/hardhats/2/train", json={"modelType": "rfdetr-nano"})
    clock.now += 30
    resp = api.post("/acme/hardhats/2/train/cancel", json={})
    assert (resp.status_code, resp.json()) == (200, {"success": True})
    v = version(api, "/acme/hardhats/2")
    assert v["train"]["status"] == "cancelled" and "model" not in v
    clock.now += 100
    assert version(api, "/acme/hardhats/2")["train"]["status"] == "cancelled"
    resp = api.post("/acme/hardhats/2/train/cancel", json={})
    assert (resp.status_code, resp.json()) == (409, cannot)
    # A cancelled run frees the version.
    assert api.post("/acme/hardhats/2/train", json={"modelType": "rfdetr-nano"}).status_code == 200


def test_early_stop_finishes_with_what_it_has(api: httpx.Client, clock: Clock) -> None:
    api.post("/acme/hardhats/2/train", json={"modelType": "rfdetr-nano", "epochs": 10})
    assert api.post("/acme/hardhats/2/train/stop", json={}).status_code == 409  # still queued
    clock.now += 55
    assert api.post("/acme/hardhats/2/train/stop", json={}).json() == {"success": True}
    v = version(api, "/acme/hardhats/2")
    assert v["train"]["status"] == "finished" and v["train"]["requestedStop"] is True
    assert len(v["models"]["roboflow-train"]["epochs"]) == 5 and "model" in v


def test_v2_trainings(api: httpx.Client, sandbox: Sandbox, clock: Clock) -> None:
    assert api.get("/acme/hardhats/1/v2/trainings").json() == {"trainings": []}
    assert api.get("/acme/hardhats/1/v2/trainings/get").status_code == 404

    resp = api.post("/acme/hardhats/1/v2/trainings", json={"modelType": "rfdetr-medium", "epochs": 3})
    assert resp.status_code == 200
    created = resp.json()
    assert set(created) == {"trainingId", "status", "jobId"} and created["status"] == "queued"
    conflict = api.post("/acme/hardhats/1/v2/trainings", json={"modelType": "rfdetr-medium"})
    assert conflict.status_code == 409
    assert api.post("/acme/hardhats/1/train", json={"modelType": "rfdetr-medium"}).status_code == 409

    bundle = api.get("/acme/hardhats/1/v2/trainings/get").json()  # the sole run
    assert bundle["trainingId"] == created["trainingId"] and bundle["status"] == "queued"
    assert bundle["models"] == [] and bundle["modelCount"] == 0
    # The legacy view shows the v2 run too.
    assert version(api, "/acme/hardhats/1")["train"]["status"] == "queued"

    clock.now += 100
    bundle = api.get(
        "/acme/hardhats/1/v2/trainings/get", params={"api_key": KEY, "trainingId": created["trainingId"]}
    ).json()
    assert bundle["status"] == "finished" and bundle["modelCount"] == 1
    assert bundle["models"][0]["modelId"].startswith("acme/hardhats-1-")
    assert bundle["models"][0]["modelType"] == "rfdetr-medium" and "map50" in bundle["models"][0]["metrics"]

    api.post("/acme/hardhats/1/train", json={"modelType": "rfdetr-nano"})  # legacy runs are listed too
    runs = api.get("/acme/hardhats/1/v2/trainings").json()["trainings"]
    assert [(r["modelType"], r["status"]) for r in runs] == [("rfdetr-medium", "finished"), ("rfdetr-nano", "queued")]
    several = api.get("/acme/hardhats/1/v2/trainings/get")
    assert several.status_code == 409 and several.json()["error"]["code"] == "MULTIPLE_TRAININGS"
    unknown = api.get("/acme/hardhats/1/v2/trainings/get", params={"api_key": KEY, "trainingId": "tr_nope"})
    assert unknown.status_code == 404

    cancel = api.post("/acme/hardhats/1/v2/trainings/cancel", json={"trainingId": runs[1]["trainingId"]})
    assert cancel.json() == {"success": True}
    assert rf(sandbox).training_status("acme", "hardhats", 1) == "cancelled"


def test_generate_creates_a_version(api: httpx.Client, clock: Clock) -> None:
    resp = api.post("/acme/forklifts/generate", json={"preprocessing": {}, "augmentation": {"flip": {"enabled": True}}})
    assert resp.status_code == 200
    assert resp.json()["version"] == 3 and isinstance(resp.json()["message"], str)
    v = version(api, "/acme/forklifts/3")
    assert v["generating"] is True and v["images"] == 0 and v["progress"] < 1
    assert api.post("/acme/forklifts/3/train", json={"modelType": "rfdetr-nano"}).status_code == 400
    clock.now += 30
    v = version(api, "/acme/forklifts/3")
    assert v["generating"] is False and v["images"] > 0 and v["augmentation"] == {"flip": {"enabled": True}}
    assert api.post("/acme/forklifts/3/train", json={"modelType": "rfdetr-nano"}).status_code == 200
    assert api.post("/acme/forklifts/generate", json=[]).status_code == 400
    assert api.post("/acme/nope/generate", json={}).status_code == 404


def test_helpers(sandbox: Sandbox, api: httpx.Client) -> None:
    sim = rf(sandbox)
    sim.add_project("globex", "pallets", versions=2)
    assert [v["id"] for v in api.get("/globex/pallets").json()["versions"]] == ["globex/pallets/1", "globex/pallets/2"]
    number = sim.add_trained_version("globex", "pallets", model_type="yolov11")
    assert number == 3
    assert version(api, "/globex/pallets/3")["model"]["modelType"] == "yolov11"
    assert sim.training_status("globex", "pallets", 3) == "finished"
    assert sim.training_status("globex", "pallets", 1) is None
    assert sim.version_view("globex", "pallets", 3)["model"]["id"] == "pallets/3"


# -- persistence, the request log, faults ----------------------------------------------------------


def test_training_persists_across_sandbox_instances(tmp_path: Path, clock: Clock) -> None:
    directory = tmp_path / ".reconciler" / "sandbox"
    with Sandbox(directory, providers=["roboflow"], training_seconds=0.3, clock=clock) as first, client(first) as api:
        assert api.post("/acme/hardhats/3/train", json={"modelType": "rfdetr-nano"}).status_code == 200
        assert version(api)["train"]["status"] in ("queued", "running")
    clock.advance(0.35)
    # Another process (here: instance) on the same folder sees it finished once its time is up.
    with Sandbox(directory, providers=["roboflow"], clock=clock) as second, client(second) as api:
        v = version(api)
        assert v["train"]["status"] == "finished" and v["model"]["modelType"] == "rfdetr-nano"
        assert api.post("/acme/hardhats/3/train", json={"modelType": "rfdetr-base"}).status_code == 200
    with Sandbox(directory, providers=["roboflow"], clock=clock) as third, client(third) as api:
        assert [r["modelType"] for r in api.get("/acme/hardhats/3/v2/trainings").json()["trainings"]] == [
            "rfdetr-nano",
            "rfdetr-base",
        ]


def test_two_live_instances_share_the_world(tmp_path: Path) -> None:
    with (
        Sandbox(tmp_path, providers=["roboflow"], training_seconds=60) as a,
        Sandbox(tmp_path, providers=["roboflow"], training_seconds=60) as b,
        client(a) as api_a,
        client(b) as api_b,
    ):
        assert api_a.post("/acme/forklifts/2/train", json={"modelType": "rfdetr-nano"}).status_code == 200
        assert version(api_b, "/acme/forklifts/2")["train"]["status"] == "queued"
        assert api_b.post("/acme/forklifts/2/train", json={"modelType": "rfdetr-nano"}).status_code == 409


def test_request_log(api: httpx.Client, sandbox: Sandbox) -> None:
    api.get("/acme/hardhats/3", params={"api_key": KEY, "nocache": "true"})
    api.post("/acme/hardhats/3/train", params={"api_key": KEY, "nocache": "true"}, json={"modelType": "rfdetr-nano"})
    get, post = sandbox.requests("roboflow")
    assert (get.method, get.path, get.status) == ("GET", "/acme/hardhats/3", 200)
    assert get.query == {"api_key": [KEY], "nocache": ["true"]}
    assert (post.method, post.path, post.status) == ("POST", "/acme/hardhats/3/train", 200)
    assert post.q("api_key") == KEY and post.json() == {"modelType": "rfdetr-nano"}
    assert post.headers["content-type"] == "application/json"


def test_train_answer_lost_after_the_training_started(api: httpx.Client, sandbox: Sandbox) -> None:
    # The at-most-once scenario: the provider started the training, the client never heard.
    sandbox.inject(Fault(provider="roboflow", method="POST", path=r"/train$", drop=True, after_handling=True))
    with pytest.raises(httpx.RemoteProtocolError):
        api.post("/acme/hardhats/3/train", json={"modelType": "rfdetr-nano"})
    assert version(api)["train"]["status"] == "queued"
    assert sandbox.requests("roboflow", method="POST")[0].status == 0

    # A 503 with Retry-After in front of the provider: nothing started.
    sandbox.inject(Fault(provider="roboflow", path=r"^/acme/forklifts/1/train$", status=503, retry_after=1))
    resp = api.post("/acme/forklifts/1/train", json={"modelType": "rfdetr-nano"})
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "1"
    assert rf(sandbox).training_status("acme", "forklifts", 1) is None


# -- answers reused once settled: the bytes stay those of the view encoded afresh ------------------


def fresh(rf: RoboflowSimulator, ws: str = "acme", proj: str = "hardhats", number: int = 3) -> bytes:
    """The answer built and encoded now, as every GET did before answers were reused."""
    with rf.transaction(save=False):
        body = {
            "workspace": rf._workspace_view(ws),
            "project": rf._project_view(ws, proj),
            "version": rf.version_view(ws, proj, number),
        }
    return json.dumps(body).encode("utf-8")


def answer(api: httpx.Client, path: str = PATH) -> httpx.Response:
    resp = api.get(path, params={"api_key": KEY, "nocache": "true"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/json"
    assert resp.headers["content-length"] == str(len(resp.content))
    return resp


def test_answers_are_the_view_encoded_afresh_through_every_change(
    sandbox: Sandbox, api: httpx.Client, clock: Clock, tmp_path: Path
) -> None:
    rf = sim(sandbox, "roboflow", RoboflowSimulator)

    def same(expect_status: str | None) -> None:
        for _ in range(2):  # the second GET may be served from the kept answer
            body = answer(api).content
            assert body == fresh(rf)
            assert json.loads(body)["version"].get("train", {}).get("status") == expect_status

    same(None)
    assert api.post(f"{PATH}/train", json={"modelType": "rfdetr-nano", "epochs": 40}).status_code == 200
    same("queued")
    clock.advance(50)
    same("running")
    clock.advance(60)
    same("finished")
    clock.advance(1000)  # settled: the same answer later
    same("finished")
    with rf.transaction() as world:  # a test helper edits the world
        world["workspaces"]["acme"]["members"] = 7
    same("finished")
    assert json.loads(answer(api).content)["workspace"]["members"] == 7
    with rf.transaction() as world:  # an edit of another version of the project shows in `project`
        world["workspaces"]["acme"]["projects"]["hardhats"]["images"] = 900
    same("finished")
    # another process writes the world: reloaded, the answer follows
    with Sandbox(tmp_path / "sandbox", providers=["roboflow"], clock=clock, root_ports=False) as other:
        sim(other, "roboflow", RoboflowSimulator).mark_trained("acme", "hardhats", 3, epochs=5)
    same("finished")
    assert len(json.loads(answer(api).content)["version"]["models"]["roboflow-train"]["epochs"]) == 5
    clock.now -= 10_000  # a clock set back before the runs ended: the answer of that time
    same("queued")
    clock.now += 10_000
    assert api.post(f"{PATH}/train", json={"modelType": "rfdetr-nano"}).status_code == 200  # a retrain
    same("queued")


def test_a_settled_answer_is_built_once_until_what_it_shows_changes(
    sandbox: Sandbox, api: httpx.Client, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    rf = sim(sandbox, "roboflow", RoboflowSimulator)
    rf.mark_trained("acme", "hardhats", 3, epochs=700)
    built: list[str] = []
    view = RoboflowSimulator._version_view

    def counted(self: RoboflowSimulator, ws: str, proj: str, number: str, *, with_epochs: bool = True) -> object:
        built.append(f"{ws}/{proj}/{number}")
        return view(self, ws, proj, number, with_epochs=with_epochs)

    monkeypatch.setattr(RoboflowSimulator, "_version_view", counted)
    first = answer(api).content
    assert [answer(api).content for _ in range(3)] == [first] * 3
    assert built == ["acme/hardhats/3"]
    answer(api, "/acme/hardhats/2")  # another version: its own answer
    assert built == ["acme/hardhats/3", "acme/hardhats/2"]
    rf.mark_trained("acme", "hardhats", 3, epochs=10)  # the model changed: built again
    assert answer(api).content != first
    assert built == ["acme/hardhats/3", "acme/hardhats/2", "acme/hardhats/3"]
