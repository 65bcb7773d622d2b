"""The vendors' own Python clients against the sandbox (issue 13): the official `roboflow` package
end to end, and the `predicthq` package's generic calls and Saved Locations.

Both need the `sdk` extra (README: `pip install -e '.[sdk]'` plus `predicthq --no-deps`, whose
pins clash with ours); without it these tests are skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from reconciler.sandbox.registry import SANDBOX_API_KEYS
from reconciler.sandbox.roboflow.simulator import RoboflowSimulator
from reconciler.sandbox.server import Sandbox

# The SDK script runs in a child process: roboflow reads API_URL once, at import, into many
# modules' globals, so a fresh interpreter per sandbox is the honest way to point it somewhere.
# Its polling loops sleep 5 s between reads; the script shortens every sleep to 50 ms so that the
# test takes seconds while the SDK still polls through queued -> running -> finished.
ROBOFLOW_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    _sleep = time.sleep
    time.sleep = lambda s: _sleep(min(s, 0.05))

    import roboflow
    from roboflow.adapters import rfapi

    key, out_dir = sys.argv[1], sys.argv[2]
    rf = roboflow.Roboflow(api_key=key)
    workspace = rf.workspace()
    project = workspace.project("hardhats")

    legacy = project.version(1)
    model = legacy.train(model_type="rfdetr-nano", epochs=3)

    v2 = project.version(2)
    recipe = v2.describe_train_recipe("rfdetr-nano")
    template = recipe["template"]
    del template["hyperparameters"]["epochs"]  # then the SDK folds epochs=7 into the recipe
    training = v2.create_training(model_type="rfdetr-nano", train_recipe=template, epochs=7)
    first_status = training.status
    for _ in range(400):
        if training.refresh().status in ("finished", "failed"):
            break
        time.sleep(0.05)
    models = [m.model_id for m in training.models]

    rows = rfapi.list_project_models(key, workspace.url, "hardhats")
    dataset = project.version(3).download("yolov5pytorch", location=out_dir + "/yolo")
    coco = project.version(3).download("coco", location=out_dir + "/coco")
    print(json.dumps({
        "workspace": workspace.url,
        "projects": workspace.project_list and [p["id"] for p in workspace.project_list],
        "legacy_model_id": model.id,
        "recipe_keys": sorted(recipe),
        "first_status": first_status,
        "final_status": training.status,
        "v2_models": models,
        "rows": rows,
        "dataset_location": dataset.location,
        "coco_location": coco.location,
    }))
    """
)


@pytest.fixture
def sdk_sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    with Sandbox(tmp_path / "world", providers=["roboflow", "predicthq"], training_seconds=0.4) as sb:
        yield sb


def test_the_official_roboflow_package_end_to_end(sdk_sandbox: Sandbox, tmp_path: Path) -> None:
    pytest.importorskip("roboflow", reason="needs the sdk extra")
    key = SANDBOX_API_KEYS["roboflow"]
    env = {
        **os.environ,
        "API_URL": sdk_sandbox.base_url("roboflow"),
        "ROBOFLOW_CONFIG_DIR": str(tmp_path / "roboflow-config.json"),
        "TQDM_DISABLE": "1",
    }
    env.pop("ROBOFLOW_API_KEY", None)
    res = subprocess.run(
        [sys.executable, "-c", ROBOFLOW_SCRIPT, key, str(tmp_path / "out")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-3000:] + res.stdout[-2000:]
    got: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])

    assert got["workspace"] == "acme" and "acme/hardhats" in got["projects"]
    assert got["legacy_model_id"] == "acme/hardhats/1"
    assert {"schema", "template"} <= set(got["recipe_keys"])
    assert got["first_status"] == "queued" and got["final_status"] == "finished"
    assert len(got["v2_models"]) == 1 and got["v2_models"][0].startswith("acme/hardhats-2-")
    assert {r["modelType"] for r in got["rows"]} == {"rfdetr-nano"} and len(got["rows"]) == 2
    assert sum(r["recommended"] for r in got["rows"]) == 1

    rb = cast(RoboflowSimulator, sdk_sandbox.sim("roboflow"))
    assert rb.training_status("acme", "hardhats", 1) == "finished"
    (run,) = rb.trainings("acme", "hardhats", 2)
    assert run["status"] == "finished"
    with rb.transaction(save=False) as world:
        stored = world["workspaces"]["acme"]["projects"]["hardhats"]["versions"]["2"]["trainings"][0]
    assert stored["epochs"] == 7  # folded into the recipe by the SDK, read from it by the server

    login = sdk_sandbox.requests("roboflow", method="POST", path="^/$")
    assert [r.status for r in login] == [200]  # Roboflow(api_key=) logs in with POST /?api_key=
    # the SDK exported the format the model type needs before training [SDK]: coco for rfdetr
    assert sdk_sandbox.requests("roboflow", method="GET", path="^/acme/hardhats/1/coco$")

    yolo = Path(got["dataset_location"])
    data_yaml = (yolo / "data.yaml").read_text()
    assert "train: " + str(yolo) in data_yaml  # the SDK rewrote the paths it found in the zip
    assert list((yolo / "train" / "images").iterdir()) and list((yolo / "valid" / "labels").iterdir())
    coco = json.loads((Path(got["coco_location"]) / "train" / "_annotations.coco.json").read_text())
    assert coco["categories"] == [{"id": 0, "name": "helmet"}]
    downloads = sdk_sandbox.requests("roboflow", method="GET", path="^/ds/")
    assert [r.status for r in downloads] == [200, 200] and all("api_key" not in r.query for r in downloads)


def test_export_links_are_signed(sdk_sandbox: Sandbox) -> None:
    import httpx

    key = SANDBOX_API_KEYS["roboflow"]
    base = sdk_sandbox.base_url("roboflow")
    export = httpx.get(f"{base}/acme/hardhats/1/coco", params={"api_key": key}).json()["export"]
    ok = httpx.get(export["link"])
    assert ok.status_code == 200 and ok.headers["content-type"] == "application/zip"
    assert ok.content[:2] == b"PK" and int(ok.headers["content-length"]) == len(ok.content)
    forged = httpx.get(export["link"].rsplit("=", 1)[0] + "=0000")
    assert forged.status_code == 403
