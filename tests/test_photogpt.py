"""PhotoGPT: the adapter and the simulator against providers.md section 5, over real HTTP.

The CLI runs as a subprocess against the sandbox; assertions read the sandbox's request log.
`apply --wait` is not used: PhotoGPT's 5-minute poll floor applies outside `--sandbox`, so the
tests wait for the simulator's 1-second trainings themselves.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import helpers
import httpx
import pytest
from helpers import ROOT, Clock, Workspace, one_simulator, train_calls, wait_until

from reconciler.domain import DesiredModel, ModelRecord, RecordStatus, TrainingStatus
from reconciler.errors import ManifestError, NotFoundError
from reconciler.providers.base import ProviderContext
from reconciler.providers.http import HttpClient
from reconciler.providers.photogpt.adapter import PhotoGPTAdapter
from reconciler.providers.photogpt.images import MAX_IMAGE_BYTES, scan_images
from reconciler.providers.photogpt.schema import PhotoGPTModel, PhotoGPTTraining
from reconciler.sandbox.faults import LoggedRequest
from reconciler.sandbox.photogpt.simulator import SEED_MODEL_ID, PhotoGPTSimulator
from reconciler.sandbox.registry import SANDBOX_API_KEYS
from reconciler.sandbox.server import Sandbox
from reconciler.sandbox.wire import SimRequest
from reconciler.spec import load_manifests

KEY = SANDBOX_API_KEYS["photogpt"]
SAMPLES = ROOT / "specs" / "photogpt-images"

#: the local simulator takes more than PhotoGPT's assumed 10 requests a second: keeps the tests fast
PROVIDER = """\
apiVersion: reconciler/v1
kind: Provider
metadata: {name: photogpt}
spec: {type: photogpt, requests_per_second: 200}
"""

MANIFEST = """\
apiVersion: reconciler/v1
kind: TrainedModel
metadata:
  name: NAME
spec:
  provider: photogpt
  model: {model_id: MODEL_ID}
  training:
    input_images: faces/*.png
"""


def png(seed: int, size: int = 8) -> bytes:
    """A small valid PNG whose pixels depend on `seed`."""
    row = b"\x00" + bytes((seed * 37 + x * 11) % 256 for x in range(size * 3))
    raw = row * size

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def sim(ws: Workspace | Sandbox) -> PhotoGPTSimulator:
    return helpers.sim(ws, "photogpt", PhotoGPTSimulator)


def setup_model(ws: Workspace, *, images: int = 12, name: str = "portrait", folder: str = "faces") -> str:
    """A fresh PhotoGPT model and a manifest declaring `images` sample PNGs; the model id."""
    model_id = sim(ws).add_model(name.title())
    target = ws.specs / folder
    target.mkdir(parents=True, exist_ok=True)
    samples = sorted(SAMPLES.glob("*.png"))
    for n in range(images):
        dest = target / f"portrait-{n + 1:02d}.png"
        if n < len(samples):
            shutil.copy(samples[n], dest)
        else:
            dest.write_bytes(png(100 + n))
    text = MANIFEST.replace("NAME", name).replace("MODEL_ID", model_id).replace("faces/", f"{folder}/")
    ws.write(f"{name}.yaml", text)
    if not (ws.specs / "provider.yaml").exists():
        ws.write("provider.yaml", PROVIDER)
    return model_id


def local_hashes(folder: Path) -> list[str]:
    return sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("*.png"))


def wait_status(s: PhotoGPTSimulator, model_id: str, word: str, timeout: float = 10.0) -> None:
    try:
        wait_until(lambda: s.model_status(model_id) == word, timeout, f"the model to become {word}")
    except AssertionError as exc:
        raise AssertionError(f"model never became {word}: {s.model_view(model_id)}") from exc


def uploads(ws: Workspace) -> list[LoggedRequest]:
    return ws.sandbox.requests("photogpt", method="POST", path=r"^/images/upload$")


def form(entry: LoggedRequest) -> dict[str, Any]:
    """The multipart parts of a logged upload: {"file": (filename, bytes, type), "data": parsed JSON}."""
    parts = SimRequest(entry.method, entry.path, entry.query, entry.headers, entry.body).form()
    assert sorted(parts) == ["data", "file"], sorted(parts)
    (f,) = parts["file"]
    (d,) = parts["data"]
    return {"file": (f.filename, f.data, f.content_type), "data": json.loads(d.text)}


def assert_headers(ws: Workspace) -> None:
    log = ws.sandbox.requests("photogpt")
    assert log
    for entry in log:
        assert entry.headers.get("authorization") == f"Bearer {KEY}", entry
        assert entry.headers.get("api-version") == "1", entry


# ---------------------------------------------------------------- the CLI against the sandbox


def test_first_apply_uploads_twelve_then_trains_then_in_sync(workspace: Workspace) -> None:
    ws = workspace
    model_id = setup_model(ws)
    plan = ws.run("plan", "--output", "json")
    assert plan.code == 2, plan.output
    (entry,) = plan.json()["models"]
    assert entry["action"] == "train" and entry["reasons"][0]["code"] == "never-trained"
    assert [r.method for r in ws.sandbox.requests("photogpt")] == ["GET"]  # plan never writes

    applied = ws.run("apply")
    assert applied.code == 0, applied.output
    assert "portrait: training started" in applied.stderr
    assert_headers(ws)
    ups = uploads(ws)
    assert len(ups) == 12 and all(r.status == 200 for r in ups)
    sent = [form(r) for r in ups]
    assert all(p["data"] == {"modelID": model_id, "type": "modelInput"} for p in sent)
    assert sorted(p["file"][0] for p in sent) == [f"portrait-{n:02d}.png" for n in range(1, 13)]
    assert all(p["file"][2] == "image/png" for p in sent)
    assert sorted(hashlib.sha256(p["file"][1]).hexdigest() for p in sent) == local_hashes(ws.specs / "faces")
    (train,) = train_calls(ws, "photogpt", any_method=True)
    assert train.method == "GET" and train.path == f"/models/{model_id}/train" and train.status == 200
    log = ws.sandbox.requests("photogpt")
    assert log.index(train) > max(log.index(u) for u in ups)  # images first, then the training
    assert not ws.sandbox.requests("photogpt", method="DELETE")
    stored = sim(ws).input_images(model_id)
    assert sorted(i["sha256"] for i in stored) == local_hashes(ws.specs / "faces")

    wait_status(sim(ws), model_id, "ready")
    ws.sandbox.clear_requests()
    again = ws.run("plan")
    assert again.code == 0, again.output
    assert "in sync" in again.stdout
    assert ws.run("apply").code == 0
    log = ws.sandbox.requests("photogpt")
    assert log and all(r.method == "GET" for r in log)
    assert not uploads(ws) and not train_calls(ws, "photogpt", any_method=True)
    assert_headers(ws)


def test_changing_one_image_uploads_exactly_one_and_trains_again(workspace: Workspace) -> None:
    ws = workspace
    model_id = setup_model(ws)
    assert ws.run("apply").code == 0
    wait_status(sim(ws), model_id, "ready")
    old = {i["filename"]: i["id"] for i in sim(ws).input_images(model_id)}
    assert ws.run("plan").code == 0

    (ws.specs / "faces" / "portrait-03.png").write_bytes(png(3))
    plan = ws.run("plan", "--output", "json")
    assert plan.code == 2, plan.output
    (entry,) = plan.json()["models"]
    assert entry["action"] == "train"
    (reason,) = entry["reasons"]
    assert reason["code"] == "data-changed"
    assert "portrait-03.png" in reason["detail"] and "no longer declared: 1 image" in reason["detail"]

    ws.sandbox.clear_requests()
    applied = ws.run("apply")
    assert applied.code == 0, applied.output
    (up,) = uploads(ws)
    assert form(up)["file"][0] == "portrait-03.png"
    (deleted,) = ws.sandbox.requests("photogpt", method="DELETE")
    assert deleted.path == f"/images/{old['portrait-03.png']}"
    assert len(train_calls(ws, "photogpt", any_method=True)) == 1
    assert_headers(ws)
    stored = sim(ws).input_images(model_id)
    assert sorted(i["sha256"] for i in stored) == local_hashes(ws.specs / "faces")

    wait_status(sim(ws), model_id, "ready")
    assert ws.run("plan").code == 0
    hist = ws.run("history", "portrait", "--output", "json").json()
    intents = [e for e in hist["events"] if e["event"] == "intent"]
    assert [e["reason"] for e in intents] == ["never-trained", "data-changed"]


def test_validate_rejects_11_and_21_images_with_file_and_line(workspace: Workspace) -> None:
    ws = workspace
    for count in (11, 21):
        shutil.rmtree(ws.specs, ignore_errors=True)
        setup_model(ws, images=count)
        manifest = ws.specs / "portrait.yaml"
        line = next(n for n, text in enumerate(manifest.read_text().splitlines(), 1) if "input_images" in text)
        res = ws.run("validate")
        assert res.code == 1, res.output
        assert f"{Path('specs') / 'portrait.yaml'}:{line}:" in res.stderr, res.stderr
        assert f"matches {count} files" in res.stderr and "12 to 20" in res.stderr
    assert not ws.sandbox.requests("photogpt")  # validate is offline


def test_429_on_train_is_held_not_an_error_and_planned_again(workspace: Workspace) -> None:
    ws = workspace
    s = sim(ws)
    model_id = setup_model(ws)
    other = s.add_model("Someone Else", inputs=12)
    s.start_training(other, duration=60)  # started in the web app: the one allowed training runs
    applied = ws.run("apply", "--output", "json")
    assert applied.code == 0, applied.output
    assert "portrait: held by the provider" in applied.stderr and "429" in applied.stderr
    outcome = applied.json()["outcomes"]["portrait"]
    assert outcome["started"] is False and outcome["held"] is True
    (train,) = train_calls(ws, "photogpt", any_method=True)
    assert train.status == 429
    assert s.model_status(model_id) == "new"

    plan = ws.run("plan", "--output", "json")
    assert plan.code == 2
    assert plan.json()["models"][0]["action"] == "train"
    events = [e["event"] for e in ws.run("history", "portrait", "--output", "json").json()["events"]]
    assert events == ["intent", "not-started"]

    s.set_max_concurrent_trainings(2)
    ws.sandbox.clear_requests()
    assert ws.run("apply").code == 0
    assert not uploads(ws)  # uploaded during the held attempt and remembered
    assert [r.status for r in train_calls(ws, "photogpt", any_method=True)] == [200]


def test_failed_training_is_seen_and_retried_with_backoff(workspace: Workspace) -> None:
    ws = workspace
    s = sim(ws)
    model_id = setup_model(ws)
    s.fail_next_trainings(1)
    assert ws.run("apply").code == 0
    wait_until(lambda: s.trainings(model_id)[0]["phase"] == "failed", 10, "the training to fail")
    assert s.model_status(model_id) == "new"  # no failure status at PhotoGPT: back to new
    plan = ws.run("plan", "--output", "json")
    (entry,) = plan.json()["models"]
    assert entry["action"] == "hold", entry
    assert [r["code"] for r in entry["reasons"]] == ["training-failed", "backoff"]
    ws.sandbox.clear_requests()
    assert ws.run("apply").code == 0  # only holds: records the failure, trains nothing
    assert not train_calls(ws, "photogpt", any_method=True)
    hist = ws.run("history", "portrait", "--output", "json").json()["events"]
    failed = [e for e in hist if e["event"] == "failed"]
    assert failed and "went back to 'new'" in failed[0]["detail"]["message"]


def test_images_added_by_hand_are_replaced_by_the_declared_ones(workspace: Workspace) -> None:
    ws = workspace
    s = sim(ws)
    model_id = setup_model(ws)
    foreign = s.add_input_image(model_id, png(999), "uploaded-in-the-web-app.png")
    assert ws.run("apply").code == 0
    assert [r.path for r in ws.sandbox.requests("photogpt", method="DELETE")] == [f"/images/{foreign}"]
    assert len(uploads(ws)) == 12
    stored = s.input_images(model_id)
    assert sorted(i["sha256"] for i in stored) == local_hashes(ws.specs / "faces")


def test_list_endpoint_observes_many_and_errors_stay_per_model(workspace: Workspace) -> None:
    ws = workspace
    s = sim(ws)
    first = setup_model(ws, name="first", folder="a")
    setup_model(ws, name="second", folder="b")
    s.mark_trained(first)  # trained by hand: no record explains it
    ws.write("third.yaml", MANIFEST.replace("NAME", "third").replace("MODEL_ID", "no-such-model").replace("faces", "a"))
    ws.write("hostile.yaml", MANIFEST.replace("NAME", "hostile").replace("MODEL_ID", '"../x?y"').replace("faces", "a"))
    plan = ws.run("plan", "--output", "json")
    assert plan.code == 1, plan.output
    by_name = {m["name"]: m for m in plan.json()["models"]}
    assert by_name["first"]["action"] == "hold"
    assert by_name["first"]["reasons"][0]["code"] == "unknown-baseline"
    assert by_name["second"]["action"] == "train"
    assert by_name["third"]["action"] == "error" and by_name["third"]["reasons"][0]["code"] == "not-found"
    assert by_name["hostile"]["action"] == "error"
    reads = ws.sandbox.requests("photogpt")
    paths = [r.path for r in reads]
    assert paths.count("/models") == 1  # one list for the models it shows ...
    assert sorted(p for p in paths if p != "/models") == ["/models/../x?y", "/models/no-such-model"]
    hostile = next(r for r in reads if r.path == "/models/../x?y")
    assert hostile.query == {} and hostile.status == 404  # ... the hostile id stayed one path segment

    s.mark_trained(first)
    assert ws.run("adopt", "first").code == 0
    sec = ws.run("plan", "--target", "first", "--output", "json")
    assert sec.code == 0 and sec.json()["models"][0]["action"] == "none"


def test_deleted_model_and_wrong_key_are_errors(workspace: Workspace) -> None:
    ws = workspace
    model_id = setup_model(ws)
    secret = "pgpt-live-very-secret"
    bad = ws.run("plan", env=ws.env(PHOTOGPT_API_KEY=secret))
    assert bad.code == 1
    assert "auth-failed" in bad.stdout and "Unauthorized (invalid or missing API key)" in bad.stdout
    assert secret not in bad.output
    with httpx.Client(base_url=ws.sandbox.base_url("photogpt"), timeout=5) as api:
        gone = api.delete(f"/models/{model_id}", headers={"Authorization": f"Bearer {KEY}", "API-Version": "1"})
        assert gone.status_code == 200 and gone.json() == {"status": "OK", "result": "Model deleted"}
    plan = ws.run("plan", "--output", "json")
    assert plan.code == 1
    reason = plan.json()["models"][0]["reasons"][0]
    assert reason["code"] == "not-found" and "deleted" in reason["detail"]


# ---------------------------------------------------------------- local checks (offline)


def test_scan_images_rejects_bad_files(tmp_path: Path) -> None:
    for n in range(12):
        (tmp_path / f"f{n:02d}.png").write_bytes(png(n))
    images, problems = scan_images("*.png", tmp_path)
    assert problems == [] and len(images) == 12
    assert sorted(i.sha256 for i in images) == local_hashes(tmp_path)

    (tmp_path / "f00.png").write_bytes(png(1))  # same content as f01.png
    assert any("same content" in p for p in scan_images("*.png", tmp_path)[1])
    (tmp_path / "f00.png").write_bytes(b"not an image at all")
    assert any("f00.png: not a" in p for p in scan_images("*.png", tmp_path)[1])
    with open(tmp_path / "f00.png", "wb") as fh:  # sparse: cheap to make
        fh.write(png(0))
        fh.truncate(MAX_IMAGE_BYTES + 1)
    assert any("at most 20 MB" in p for p in scan_images("*.png", tmp_path)[1])
    (tmp_path / "f00.png").write_bytes(png(0))
    (tmp_path / "notes.gif").write_bytes(b"GIF89a")
    assert any("notes.gif: PhotoGPT accepts only" in p for p in scan_images("*", tmp_path)[1])
    sub = tmp_path / "deep" / "er"
    sub.mkdir(parents=True)
    (sub / "x.PNG").write_bytes(png(50))
    images, problems = scan_images("**/*.[pP][nN][gG]", tmp_path)
    assert problems == [] and len(images) == 13


def test_one_load_checks_a_shared_image_folder_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Models declaring the same glob in the same folder share one walk and hash of it per load
    (as the adapter's scan), and each is still told its folder's problem at its own line."""
    from reconciler.providers.photogpt import images as images_module

    specs = tmp_path / "specs"
    for folder, count in (("faces", 12), ("pets", 11)):
        (specs / folder).mkdir(parents=True)
        for n in range(count):
            (specs / folder / f"{n:02d}.png").write_bytes(png(n))
    docs = [
        MANIFEST.replace("NAME", name).replace("MODEL_ID", f"id-{name}").replace("faces/", f"{folder}/")
        for name, folder in (("a", "faces"), ("b", "faces"), ("c", "faces"), ("d", "pets"), ("e", "pets"))
    ]
    (specs / "m.yaml").write_text("---\n".join(docs))
    scanned: list[str] = []
    real_scan = images_module.scan_images

    def counted(pattern: str, *args: Any) -> tuple[list[Any], list[str]]:
        scanned.append(pattern)
        return real_scan(pattern, *args)

    monkeypatch.setattr(images_module, "scan_images", counted)
    with pytest.raises(ManifestError) as refused:
        load_manifests([specs])
    assert sorted(scanned) == ["faces/*.png", "pets/*.png"]
    lines = {p.line for p in refused.value.problems if "matches 11 files" in p.message}
    assert len(lines) == 2 == len(refused.value.problems)  # d's and e's own input_images lines
    (specs / "pets" / "11.png").write_bytes(png(11))
    scanned.clear()
    assert sorted(load_manifests([specs]).models) == ["a", "b", "c", "d", "e"]
    assert sorted(scanned) == ["faces/*.png", "pets/*.png"]  # a new load looks again


# ---------------------------------------------------------------- the simulator over HTTP


@pytest.fixture
def fake_sandbox(tmp_path: Path, clock: Clock) -> Iterator[Sandbox]:
    with one_simulator(tmp_path / "world", "photogpt", clock=clock) as sb:
        yield sb


@pytest.fixture
def api(fake_sandbox: Sandbox) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {KEY}", "API-Version": "1"}
    with httpx.Client(base_url=fake_sandbox.base_url("photogpt"), headers=headers, timeout=5) as c:
        yield c


def upload(api: httpx.Client, model_id: str, n: int, *, kind: str = "modelInput", name: str = "") -> httpx.Response:
    return api.post(
        "/images/upload",
        files={"file": (name or f"img-{n}.png", png(n), "image/png")},
        data={"data": json.dumps({"modelID": model_id, "type": kind})},
    )


def test_sim_auth_envelope_and_ping(fake_sandbox: Sandbox, api: httpx.Client) -> None:
    base = fake_sandbox.base_url("photogpt")
    assert base.endswith("/photogpt/api")
    assert api.get("/ping").json() == {"message": "pong!", "status": "OK"}
    for headers in ({"API-Version": "1"}, {"Authorization": "Bearer wrong", "API-Version": "1"}):
        resp = httpx.get(base + "/models", headers=headers)
        assert resp.status_code == 401
        body = resp.json()
        assert body["status"] == "NOK" and body["result"] is None and body["message"] and body["err"]
    missing_version = httpx.get(base + "/models", headers={"Authorization": f"Bearer {KEY}"})
    assert missing_version.status_code == 400 and missing_version.json()["status"] == "NOK"
    listed = api.get("/models").json()
    assert listed["status"] == "OK" and [m["id"] for m in listed["result"]] == [SEED_MODEL_ID]
    assert api.get("/nope").status_code == 404


def test_sim_models_images_and_training_rules(fake_sandbox: Sandbox, api: httpx.Client, clock: Clock) -> None:
    s = sim(fake_sandbox)
    created = api.post("/models", json={"name": "Bob", "age": 41, "gender": "Male"}).json()
    assert created["status"] == "OK"
    model = created["result"]
    assert set(model) == {"id", "modelType", "status", "createdAt", "updatedAt"} and model["status"] == "new"
    mid = model["id"]
    assert api.post("/models", json={"name": "X", "age": 3, "gender": "Other"}).status_code == 400
    assert api.post("/models", json={"id": mid, "eyeColor": "brown"}).json()["result"]["id"] == mid
    assert api.get(f"/models/{mid}").json()["result"]["eyeColor"] == "brown"

    for n in range(11):
        assert upload(api, mid, n).status_code == 200
    too_few = api.get(f"/models/{mid}/train")
    assert too_few.status_code == 400 and "12 to 20" in too_few.json()["message"]
    assert api.post(f"/models/{mid}/train").status_code == 404  # GET, not POST
    for n in range(11, 20):
        assert upload(api, mid, n).status_code == 200
    assert upload(api, mid, 20).status_code == 400  # at most 20 modelInput images
    assert upload(api, mid, 21, kind="auxiliaryType").status_code == 200
    assert upload(api, mid, 22, name="x.gif").status_code == 400
    big = api.post(
        "/images/upload",
        files={"file": ("big.png", b"\x89PNG" + b"\0" * (20 * 1024 * 1024), "image/png")},
        data={"data": json.dumps({"modelID": mid, "type": "auxiliaryType"})},
    )
    assert big.status_code == 400

    page1 = api.get(f"/models/{mid}/images", params={"imageType": "input", "pageNum": 1, "pageSize": 15}).json()
    page2 = api.get(f"/models/{mid}/images", params={"imageType": "input", "pageNum": 2, "pageSize": 15}).json()
    assert (page1["page"], page1["pageSize"], len(page1["result"]), len(page2["result"])) == (1, 15, 15, 5)
    assert {i["type"] for i in page1["result"] + page2["result"]} == {"modelInput"}
    everything = api.get(f"/models/{mid}/images", params={"imageType": "all", "pageSize": 50}).json()["result"]
    assert len(everything) == 21
    assert api.get(f"/models/{mid}/images", params={"imageType": "bogus"}).status_code == 400
    image = page1["result"][0]
    assert api.get(f"/images/{image['id']}").json()["result"]["modelID"] == mid
    assert api.delete(f"/images/{image['id']}").status_code == 200
    assert api.get(f"/images/{image['id']}").status_code == 404
    assert upload(api, mid, 30).status_code == 200

    clock.now += 1
    before = api.get(f"/models/{mid}").json()["result"]
    assert api.get(f"/models/{mid}/train").json() == {"result": "Training triggered", "status": "OK"}
    assert api.get(f"/models/{mid}/train").status_code == 409  # already training
    other = s.add_model("Carol", inputs=12)
    assert api.get(f"/models/{other}/train").status_code == 429  # one training at a time
    clock.now += 5
    queued = api.get(f"/models/{mid}").json()["result"]
    assert queued["status"] == "queued" and queued["updatedAt"] != before["updatedAt"]
    clock.now += 50
    assert api.get(f"/models/{mid}").json()["result"]["status"] == "training"
    clock.now += 50
    ready = api.get(f"/models/{mid}").json()["result"]
    assert ready["status"] == "ready"
    assert api.get(f"/models/{other}/train").status_code == 200  # the slot is free again
    s.set_max_concurrent_trainings(2)
    assert api.get(f"/models/{mid}/train").status_code == 200  # re-training a ready model is allowed
    clock.now += 5
    assert api.get(f"/models/{mid}").json()["result"]["status"] == "queued"

    assert api.delete(f"/models/{mid}").status_code == 200
    assert api.get(f"/models/{mid}").json()["result"]["status"] == "deleted"
    assert api.get(f"/models/{mid}/train").status_code == 404


# ---------------------------------------------------------------- the adapter, in-process


def _adapter(sb: Sandbox) -> PhotoGPTAdapter:
    from reconciler.spec import default_provider

    config = default_provider("photogpt")
    http = HttpClient(
        "photogpt",
        sb.base_url("photogpt"),
        api_key=KEY,
        auth=PhotoGPTAdapter.auth,
        requests_per_second=1000,
        retry=PhotoGPTAdapter.retry,
    )
    return PhotoGPTAdapter(ProviderContext(config=config, http=http, state=None))


def _model(tmp_path: Path, model_id: str) -> DesiredModel[PhotoGPTModel, PhotoGPTTraining]:
    specs = tmp_path / "specs"
    (specs / "faces").mkdir(parents=True)
    for src in sorted(SAMPLES.glob("*.png")):
        shutil.copy(src, specs / "faces" / src.name)
    (specs / "m.yaml").write_text(MANIFEST.replace("NAME", "m").replace("MODEL_ID", model_id))
    return load_manifests([specs]).models["m"].typed(PhotoGPTModel, PhotoGPTTraining)


def _record(model: DesiredModel, marker: str | None, *, minutes_ago: float, data_marker: Any = None) -> ModelRecord:
    return ModelRecord(
        name=model.name,
        provider=model.provider,
        fingerprint=model.fingerprint,
        training=model.snapshot,
        status=RecordStatus.TRAINING,
        triggered_at=datetime.now(UTC) - timedelta(minutes=minutes_ago),
        marker=marker,
        data_marker=data_marker,
    )


async def test_adapter_status_words_marker_and_timeout(fake_sandbox: Sandbox, tmp_path: Path, clock: Clock) -> None:
    s = sim(fake_sandbox)
    model_id = s.add_model("Dan", inputs=12)
    model = _model(tmp_path, model_id)
    adapter = _adapter(fake_sandbox)
    try:
        new = await adapter.observe(model, None)
        assert new.status is TrainingStatus.NONE and new.provider_state == "new"
        assert new.data_marker == local_hashes(tmp_path / "specs" / "faces")
        s.start_training(model_id)
        clock.now += 1
        queued = await adapter.observe(model, None)  # an undocumented backend word: in progress
        assert queued.status is TrainingStatus.RUNNING and queued.provider_state == "queued"
        assert queued.marker != new.marker
        fresh = await adapter.observe(model, _record(model, new.marker, minutes_ago=5))
        assert fresh.status is TrainingStatus.RUNNING
        stuck = await adapter.observe(model, _record(model, new.marker, minutes_ago=40))
        assert stuck.status is TrainingStatus.FAILED and "35 min" in stuck.message
        clock.now += 200
        ready = await adapter.observe(model, _record(model, new.marker, minutes_ago=5, data_marker=["gone"]))
        assert ready.status is TrainingStatus.SUCCEEDED and ready.trained_at is not None
        assert ready.marker not in (new.marker, queued.marker)
        assert ready.data_changed and "no longer declared: 1 image" in ready.data_changed
        assert "portrait-01.png" in ready.data_changed
        with httpx.Client(base_url=fake_sandbox.base_url("photogpt")) as api:
            api.delete(f"/models/{model_id}", headers={"Authorization": f"Bearer {KEY}", "API-Version": "1"})
        with pytest.raises(NotFoundError, match="deleted"):
            await adapter.observe(model, None)
    finally:
        await adapter.http.aclose()
