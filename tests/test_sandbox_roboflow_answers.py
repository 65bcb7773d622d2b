"""The Roboflow simulator's version answer is reused once it stops moving with the clock: its bytes
stay those of the view encoded afresh, and any change to what it shows rebuilds it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import Clock, one_simulator, sim

from reconciler.sandbox import Sandbox
from reconciler.sandbox.roboflow.simulator import RoboflowSimulator

KEY = "sandbox-roboflow-key"
PATH = "/acme/hardhats/3"


@pytest.fixture
def sandbox(tmp_path: Path, clock: Clock) -> Iterator[Sandbox]:
    with one_simulator(tmp_path / "sandbox", "roboflow", clock=clock) as sb:
        yield sb


@pytest.fixture
def api(sandbox: Sandbox) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox.base_url("roboflow"), params={"api_key": KEY}, timeout=5) as client:
        yield client


def fresh(rf: RoboflowSimulator, ws: str = "acme", proj: str = "hardhats", number: int = 3) -> bytes:
    """The answer built and encoded now, as every GET did before answers were reused."""
    with rf.transaction(save=False):
        body = {
            "workspace": rf._workspace_view(ws),
            "project": rf._project_view(ws, proj),
            "version": rf.version_view(ws, proj, number),
        }
    return json.dumps(body).encode("utf-8")


def get(api: httpx.Client, path: str = PATH) -> httpx.Response:
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
            body = get(api).content
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
    assert json.loads(get(api).content)["workspace"]["members"] == 7
    with rf.transaction() as world:  # an edit of another version of the project shows in `project`
        world["workspaces"]["acme"]["projects"]["hardhats"]["images"] = 900
    same("finished")
    # another process writes the world: reloaded, the answer follows
    with Sandbox(tmp_path / "sandbox", providers=["roboflow"], clock=clock, root_ports=False) as other:
        sim(other, "roboflow", RoboflowSimulator).mark_trained("acme", "hardhats", 3, epochs=5)
    same("finished")
    assert len(json.loads(get(api).content)["version"]["models"]["roboflow-train"]["epochs"]) == 5
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
    first = get(api).content
    assert [get(api).content for _ in range(3)] == [first] * 3
    assert built == ["acme/hardhats/3"]
    get(api, "/acme/hardhats/2")  # another version: its own answer
    assert built == ["acme/hardhats/3", "acme/hardhats/2"]
    rf.mark_trained("acme", "hardhats", 3, epochs=10)  # the model changed: built again
    assert get(api).content != first
    assert built == ["acme/hardhats/3", "acme/hardhats/2", "acme/hardhats/3"]
