"""`reconciler daemon` as a real process against the sandbox, plus its parts in-process.

The process tests start `python -m reconciler.cli daemon specs --listen 127.0.0.1:<port>` in the
workspace (so it talks to the test's simulators), edit manifests and watch the simulator's
request log. A Provider manifest sets Roboflow's poll interval to 1 s so trainings (1 s in the
sandbox) are followed quickly.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import io
import json
import logging
import os
import re
import socket
import threading
import time
from datetime import timedelta
from pathlib import Path

import helpers
import httpx
import pytest
from helpers import DaemonProcess, Workspace, roboflow_model, wait_until

from reconciler.daemon import DaemonOptions
from reconciler.daemon.app import build_app, hook_authorized
from reconciler.daemon.lifecycle import Daemon
from reconciler.daemon.systemd import sd_notify, watchdog_interval
from reconciler.logs import MASK, Redactor, setup_logging
from reconciler.sandbox.faults import Fault, LoggedRequest

PROVIDER = """\
apiVersion: reconciler/v1
kind: Provider
metadata: {name: roboflow}
spec: {type: roboflow, poll_interval: 1s}
"""

HARDHATS = roboflow_model(epochs="EPOCHS")
FORKLIFTS = roboflow_model("forklift-detector", project="forklifts", version=2, model_type="yolov11s", epochs="EPOCHS")

BROKEN = """\
apiVersion: reconciler/v1
kind: TrainedModel
metadata: {name: forklift-detector
spec:
  provider: roboflow
"""

SECRET = "hook-secret-0123456789"
#: the process tests' timing is tuned to these: with a faster poll, a last read of a model already
#: in sync can fall after `clear_requests()` (and the models gauge can lag /status)
SANDBOX_TRAINING_SECONDS = 1.0
POLL_INTERVAL = "0.2s"


def train_calls(ws: Workspace, project: str) -> list[LoggedRequest]:
    return helpers.train_calls(ws, path=f"^/acme/{project}/.*/train$")


def start(
    daemons: list[DaemonProcess], ws: Workspace, *args: str, env: dict[str, str] | None = None, name: str = "daemon"
) -> DaemonProcess:
    environ = ws.env(RECONCILER_POLL_INTERVAL=POLL_INTERVAL, **(env or {}))
    d = DaemonProcess(ws, ("--resync", "1h", *args), env=environ, name=name)
    daemons.append(d)
    return d


def secret_values(ws: Workspace) -> list[str]:
    return [v for k, v in ws.sandbox.env().items() if k.endswith("_API_KEY")] + [SECRET]


# ---------------------------------------------------------------- process tests


def test_daemon_reconciles_edits_serves_endpoints_and_stops_on_sigterm(
    workspace: Workspace, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    ws = workspace
    ws.write("providers.yaml", PROVIDER)
    ws.write("a.yaml", HARDHATS.replace("EPOCHS", "10"))
    ws.write("c.yaml", FORKLIFTS.replace("EPOCHS", "10"))
    notify_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(0.1)
    messages: list[str] = []
    listening = threading.Event()
    listening.set()

    def listen() -> None:  # read as systemd does, so the daemon's queue never fills
        while listening.is_set():
            try:
                messages.append(notify.recv(4096).decode())
            except TimeoutError:
                pass

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    env = {
        "NOTIFY_SOCKET": str(notify_path),
        "WATCHDOG_USEC": "400000",
        "RECONCILER_LUCID_WEBHOOK_SECRET": SECRET,
    }
    d = start(daemons, ws, "--log-format", "json", env=env)
    d.wait_ready()
    d.wait_in_sync("hardhat-detector")
    d.wait_in_sync("forklift-detector")
    assert [r.json() for r in train_calls(ws, "hardhats")] == [{"modelType": "rfdetr-nano", "epochs": 10}]

    # a saved edit reaches the simulator as a train call within seconds, for that model only;
    # a 503 on its first read is retried and counted as a provider error
    ws.sandbox.clear_requests()
    ws.sandbox.inject(Fault(provider="roboflow", method="GET", path=r"^/acme/hardhats/3$", status=503))
    edited = time.monotonic()
    ws.write("a.yaml", HARDHATS.replace("EPOCHS", "20"))
    (call,) = wait_until(lambda: train_calls(ws, "hardhats"), 5, "the train call after the edit")
    assert time.monotonic() - edited < 3.5
    assert call.json() == {"modelType": "rfdetr-nano", "epochs": 20}
    assert not [r for r in ws.sandbox.requests("roboflow") if "/forklifts" in r.path]  # untouched model
    entry = d.wait_in_sync("hardhat-detector")
    assert entry["provider"] == "roboflow" and entry["reasons"] == [] and entry["observed"]["status"] == "succeeded"

    # endpoints
    health = d.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    ready = d.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    status = d.status()
    assert status["format_version"] == 1 and status["manifest_errors"] == []
    assert [m["name"] for m in status["models"]] == ["forklift-detector", "hardhat-detector"]
    for m in status["models"]:
        assert {"name", "provider", "action", "reasons", "changes", "observed", "last_training"} <= set(m)
    metrics = d.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert re.search(r'^reconciler_models\{action="none",provider="roboflow"\} 2\.0$', text, re.M), text
    assert re.search(
        r'^reconciler_trainings_triggered_total\{outcome="started",provider="roboflow"\} 3\.0$', text, re.M
    )
    assert re.search(
        r'^reconciler_provider_requests_total\{method="GET",provider="roboflow",status="200"\} \d+', text, re.M
    )
    assert re.search(r'^reconciler_provider_errors_total\{provider="roboflow",status="503"\} 1\.0$', text, re.M)
    assert re.search(r'^reconciler_reconcile_duration_seconds_count\{trigger="change"\} [1-9]', text, re.M)
    assert re.search(r"^reconciler_queue_depth 0\.0$", text, re.M)

    # forged Lucid callbacks are refused
    body = b'{"model_id": "whatever"}'
    forged = [
        {},
        {"Authorization": "Bearer not-the-secret"},
        {"X-Reconciler-Signature": "sha256=" + hmac.new(b"wrong", body, hashlib.sha256).hexdigest()},
    ]
    for headers in forged:
        assert d.http.post("/hooks/lucid", content=body, headers=headers).status_code == 401

    # a second daemon on the same state stands by (issue 10: it no longer exits after
    # --lock-timeout): alive, not ready, role standby, naming the leader; it polls nothing
    requests_before = len(ws.sandbox.requests("roboflow"))
    second = start(daemons, ws, "--lock-timeout", "1s", name="second")
    wait_until(lambda: f"pid {d.pid}" in second.stderr(), 15, "the standby to name the leader")
    assert second.proc.poll() is None and second.get("/healthz").status_code == 200
    not_ready = second.get("/readyz")
    assert not_ready.status_code == 503 and not_ready.json()["role"] == "standby"
    assert second.status()["role"] == "standby" and d.status()["role"] == "leader"
    assert re.search(r"^reconciler_leader 0\.0$", second.get("/metrics").text, re.M)
    assert re.search(r"^reconciler_leader 1\.0$", d.get("/metrics").text, re.M)
    assert len(ws.sandbox.requests("roboflow")) == requests_before
    assert second.terminate()[0] == 0

    code, took = d.terminate()
    assert code == 0 and took < 10, d.stderr()
    # the last datagrams the daemon sent before exiting reach the listener thread
    wait_until(lambda: "STOPPING=1" in messages, 5, "STOPPING=1 on the notify socket")
    listening.clear()
    listener.join()
    notify.close()
    assert any(m.startswith("READY=1") for m in messages), messages
    assert "WATCHDOG=1" in messages and "STOPPING=1" in messages

    stderr = d.stderr()
    lines = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    assert lines and all(isinstance(line, dict) and {"ts", "level", "logger", "msg"} <= set(line) for line in lines)
    # the edit was seen by the file watcher, not by the periodic rescan
    assert any(line["msg"] == "manifests changed (change): reconciling hardhat-detector" for line in lines)
    started = [line for line in lines if line["msg"].startswith("hardhat-detector: training started")]
    assert started and started[-1]["model"] == "hardhat-detector" and started[-1]["provider"] == "roboflow"
    output = stderr + d.stdout() + second.stderr() + second.stdout()
    for secret in secret_values(ws):
        assert secret not in output


def test_broken_manifest_keeps_its_last_good_version_and_recovers(
    workspace: Workspace, daemons: list[DaemonProcess]
) -> None:
    ws = workspace
    ws.write("providers.yaml", PROVIDER)
    ws.write("a.yaml", HARDHATS.replace("EPOCHS", "10"))
    ws.write("b.yaml", FORKLIFTS.replace("EPOCHS", "10"))
    d = start(daemons, ws)
    d.wait_ready()
    d.wait_in_sync("hardhat-detector")
    d.wait_in_sync("forklift-detector")

    ws.write("b.yaml", BROKEN)
    errors = wait_until(lambda: d.status()["manifest_errors"], 5, "the broken file in /status")
    assert all(re.match(r"^.*b\.yaml:\d+:\d+: ", e) for e in errors), errors
    assert d.model("forklift-detector") is not None  # its last good version is still reconciled
    assert d.get("/readyz").status_code == 200
    assert re.search(r"^reconciler_manifest_errors [1-9]", d.get("/metrics").text, re.M)

    # the other file keeps reconciling
    ws.sandbox.clear_requests()
    ws.write("a.yaml", HARDHATS.replace("EPOCHS", "20"))
    (call,) = wait_until(lambda: train_calls(ws, "hardhats"), 5, "the train call for the other file")
    assert call.json()["epochs"] == 20
    assert not train_calls(ws, "forklifts")

    # fixing the file recovers without a restart; the fixed spec is what gets trained
    ws.write("b.yaml", FORKLIFTS.replace("EPOCHS", "30"))
    (fixed,) = wait_until(lambda: train_calls(ws, "forklifts"), 5, "the train call for the fixed file")
    assert fixed.json() == {"modelType": "yolov11s", "epochs": 30}
    assert d.status()["manifest_errors"] == []
    assert "manifest error" in d.stderr() and "b.yaml" in d.stderr() and "valid again" in d.stderr()
    code, took = d.terminate()
    assert code == 0 and took < 10, d.stderr()


def test_configmap_symlink_swap_is_seen_by_content(workspace: Workspace, daemons: list[DaemonProcess]) -> None:
    """Kubernetes mounts a ConfigMap as `..data -> ..<timestamp>/` plus a symlink per key, and
    updates it by writing a new timestamped folder and renaming a new `..data` over the old."""
    ws = workspace
    specs = ws.specs

    def publish(version: str, epochs: int) -> None:
        folder = specs / f"..{version}"
        folder.mkdir()
        (folder / "providers.yaml").write_text(PROVIDER)
        (folder / "a.yaml").write_text(HARDHATS.replace("EPOCHS", str(epochs)))
        os.symlink(folder.name, specs / "..data_tmp")
        os.replace(specs / "..data_tmp", specs / "..data")

    publish("2025_01_01", 10)
    for key in ("providers.yaml", "a.yaml"):
        os.symlink(f"..data/{key}", specs / key)
    d = start(daemons, ws)
    d.wait_ready()
    d.wait_in_sync("hardhat-detector")
    ws.sandbox.clear_requests()

    swapped = time.monotonic()
    publish("2025_01_02", 20)
    (call,) = wait_until(lambda: train_calls(ws, "hardhats"), 6, "the train call after the ConfigMap swap")
    assert call.json()["epochs"] == 20
    assert time.monotonic() - swapped < 3.5
    code, took = d.terminate()
    assert code == 0 and took < 10, d.stderr()
    # seen through the file watcher's event, not only by the periodic rescan
    assert "manifests changed (change): reconciling hardhat-detector" in d.stderr()


def test_full_resync_observes_every_model_on_the_interval(workspace: Workspace, daemons: list[DaemonProcess]) -> None:
    ws = workspace
    ws.write("providers.yaml", PROVIDER)
    ws.write("a.yaml", HARDHATS.replace("EPOCHS", "10"))
    d = start(daemons, ws, "--resync", "1s")  # the last --resync wins
    d.wait_ready()
    d.wait_in_sync("hardhat-detector")
    ws.sandbox.clear_requests()
    # nothing changed and nothing is in flight: only the resync reads the provider
    wait_until(lambda: ws.sandbox.requests("roboflow", method="GET", path=r"^/acme/hardhats/3$"), 4, "a resync read")
    text = d.get("/metrics").text
    assert re.search(r'^reconciler_reconcile_duration_seconds_count\{trigger="resync"\} [1-9]', text, re.M), text
    assert not train_calls(ws, "hardhats")
    assert d.terminate()[0] == 0


def test_an_edit_is_reconciled_while_a_resync_is_held_at_the_provider(
    workspace: Workspace, daemons: list[DaemonProcess]
) -> None:
    ws = workspace
    ws.write("providers.yaml", PROVIDER)
    ws.write("a.yaml", HARDHATS.replace("EPOCHS", "10"))
    ws.write("b.yaml", FORKLIFTS.replace("EPOCHS", "10"))
    d = start(daemons, ws, "--resync", "1s")
    d.wait_ready()
    d.wait_in_sync("hardhat-detector")
    d.wait_in_sync("forklift-detector")
    trained = len(train_calls(ws, "hardhats"))
    # a resync's read of the other model is held at the provider for longer than this test waits
    ws.sandbox.inject(Fault(provider="roboflow", method="GET", path=r"^/acme/forklifts/2$", delay=120, times=-1))

    def held() -> bool:
        return ws.sandbox.traffic.stats().get("roboflow", {}).get("in_flight", 0) >= 1

    wait_until(held, 10, "a resync read held at the provider")
    ws.write("a.yaml", HARDHATS.replace("EPOCHS", "11"))
    # the edit is planned and trained beside the resync batch, not after it
    wait_until(lambda: len(train_calls(ws, "hardhats")) > trained, 20, "the edited model's train call")
    assert held()
    ws.sandbox.clear_faults()
    d.kill()


def test_valid_lucid_callback_observes_the_model_at_once(workspace: Workspace, daemons: list[DaemonProcess]) -> None:
    if importlib.util.find_spec("reconciler.providers.lucid") is None:
        pytest.skip("reconciler.providers.lucid is not in the tree yet")
    ws = workspace
    if "lucid" not in ws.sandbox.served:
        pytest.skip("the Lucid simulator (reconciler.sandbox.lucid) is not in the tree yet: no request log to check")
    ws.write(
        "lucid.yaml",
        """\
        apiVersion: reconciler/v1
        kind: TrainedModel
        metadata: {name: recommender}
        spec:
          provider: lucid
          model: {model_id: daemon-hook-model}
          policy: {suspend: true}   # observed, never trained: no poll can explain a status read
        """,
    )
    d = start(daemons, ws, env={"RECONCILER_LUCID_WEBHOOK_SECRET": SECRET})
    d.wait_ready()
    wait_until(lambda: d.model("recommender"), 10, "the first observation of the Lucid model")

    def status_reads() -> list[LoggedRequest]:
        return [
            r
            for r in ws.sandbox.requests("lucid", method="GET", path=r"recommender/status$")
            if r.q("model_id") == "daemon-hook-model"
        ]

    ws.sandbox.clear_requests()
    body = json.dumps({"model_id": "daemon-hook-model", "status": "completed"}).encode()
    signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    answer = d.http.post("/hooks/lucid", content=body, headers={"X-Reconciler-Signature": signature})
    assert answer.status_code == 202 and answer.json()["models"] == ["recommender"]
    wait_until(status_reads, 3, "the status read the callback asked for")

    ws.sandbox.clear_requests()
    bearer = d.http.post("/hooks/lucid", content=body, headers={"Authorization": f"Bearer {SECRET}"})
    assert bearer.status_code == 202
    wait_until(status_reads, 3, "the status read the bearer callback asked for")
    code, took = d.terminate()
    assert code == 0 and took < 10, d.stderr()


# ---------------------------------------------------------------- in-process parts


def _opts(tmp_path: Path, *paths: str) -> DaemonOptions:
    return DaemonOptions(
        paths=list(paths) or [str(tmp_path / "specs")],
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        sandbox=False,
        resync=timedelta(minutes=10),
        host="127.0.0.1",
        port=0,
        log_format="text",
        lock_timeout=1.0,
    )


def test_hook_authorization_accepts_hmac_or_bearer_only() -> None:
    body = b'{"model_id":"m1"}'
    good = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert hook_authorized("s3cret", body, {"x-reconciler-signature": good})
    assert hook_authorized("s3cret", body, {"x-reconciler-signature": good.upper().replace("SHA256", "sha256")})
    assert hook_authorized("s3cret", body, {"authorization": "Bearer s3cret"})
    assert not hook_authorized("s3cret", body + b" ", {"x-reconciler-signature": good})
    assert not hook_authorized("s3cret", body, {"x-reconciler-signature": good.removeprefix("sha256=")})
    assert not hook_authorized("s3cret", body, {"authorization": "Bearer s3cre"})
    assert not hook_authorized("s3cret", body, {"authorization": "Basic s3cret"})
    assert not hook_authorized("s3cret", body, {"authorization": "Bearer ünïcode"})
    assert not hook_authorized("s3cret", body, {})


async def test_hook_endpoint_answers_503_without_a_secret_and_401_400_202_with_one(tmp_path: Path) -> None:
    def client(daemon: Daemon) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=build_app(daemon)), base_url="http://daemon")

    async with client(Daemon(_opts(tmp_path), env={})) as without:
        answer = await without.post("/hooks/lucid", content=b"{}", headers={"Authorization": "Bearer x"})
        assert answer.status_code == 503

    async with client(Daemon(_opts(tmp_path), env={"RECONCILER_LUCID_WEBHOOK_SECRET": "s3cret"})) as c:
        assert (await c.post("/hooks/lucid", content=b'{"model_id":"m"}')).status_code == 401
        bearer = {"Authorization": "Bearer s3cret"}
        assert (await c.post("/hooks/lucid", content=b"not json", headers=bearer)).status_code == 400
        assert (await c.post("/hooks/lucid", content=b'{"model_id": 5}', headers=bearer)).status_code == 400
        ok = await c.post("/hooks/lucid", content=b'{"model_id":"nobody"}', headers=bearer)
        assert ok.status_code == 202 and ok.json() == {"accepted": True, "models": []}
        assert (await c.get("/hooks/lucid")).status_code == 405
        assert (await c.get("/healthz")).status_code == 200
        not_ready = await c.get("/readyz")
        assert not_ready.status_code == 503 and "waiting for the state lock" in not_ready.json()["problems"]
        metrics = (await c.get("/metrics")).text
        assert 'reconciler_webhooks_total{hook="lucid",result="unauthorized"} 1.0' in metrics


def test_last_good_version_is_kept_per_file(tmp_path: Path) -> None:
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "a.yaml").write_text(HARDHATS.replace("EPOCHS", "10"))
    (specs / "b.yaml").write_text(FORKLIFTS.replace("EPOCHS", "10"))
    d = Daemon(_opts(tmp_path), env={})
    d._load("startup")
    assert sorted(d.manifests.models) == ["forklift-detector", "hardhat-detector"] and d.problems == []

    # a syntax error: reported with file:line:col, the last good version stays
    (specs / "b.yaml").write_text(BROKEN)
    d._load("change")
    assert d.manifests.models["forklift-detector"].training.model_dump()["epochs"] == 10
    assert len(d.problems) == 1 and re.match(r".*b\.yaml:\d+:\d+: ", str(d.problems[0]))

    # a value the provider schema rejects (found only when assembling): same
    (specs / "b.yaml").write_text(FORKLIFTS.replace("EPOCHS", "-1"))
    d._load("change")
    assert d.manifests.models["forklift-detector"].training.model_dump()["epochs"] == 10
    assert [p.file for p in d.problems] == [str(specs / "b.yaml")]

    # a new file stealing a name is refused as a whole, whichever file sorts first
    (specs / "0-new.yaml").write_text(HARDHATS.replace("EPOCHS", "99"))
    d._load("change")
    assert d.manifests.models["hardhat-detector"].training.model_dump()["epochs"] == 10
    assert any("duplicate model name" in p.message for p in d.problems)

    # fixing everything recovers, and only the changed model is queued
    (specs / "0-new.yaml").unlink()
    (specs / "b.yaml").write_text(FORKLIFTS.replace("EPOCHS", "30"))
    d.loaded = True
    d.pending.clear()
    d._load("change")
    assert d.problems == []
    assert d.manifests.models["forklift-detector"].training.model_dump()["epochs"] == 30
    assert d.pending == {"forklift-detector": "change"}

    # a cosmetic edit queues nothing
    d.pending.clear()
    (specs / "a.yaml").write_text("# a comment\n" + HARDHATS.replace("EPOCHS", "10"))
    d._load("change")
    assert d.pending == {}


def test_sd_notify_and_watchdog_interval(tmp_path: Path) -> None:
    path = tmp_path / "n.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        assert sd_notify("READY=1", {"NOTIFY_SOCKET": str(path)})
        assert sock.recv(100) == b"READY=1"
    abstract = f"@reconciler-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + abstract[1:])
        assert sd_notify("STOPPING=1", {"NOTIFY_SOCKET": abstract})
        assert sock.recv(100) == b"STOPPING=1"
    assert not sd_notify("READY=1", {})
    assert not sd_notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "missing.sock")})
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({}) is None


def test_logs_mask_every_key_in_text_and_json() -> None:
    env = {
        "ROBOFLOW_API_KEY": "rf-key-abcdef",
        "CUSTOM_KEY_VAR": 'we"ird\\key',
        "RECONCILER_LUCID_WEBHOOK_SECRET": "hook-secret-xyz",
        "SOME_OTHER_API_KEY": "other-key-123",
    }
    redactor = Redactor(env)
    redactor.watch_env(["CUSTOM_KEY_VAR"])  # as a Provider manifest's api_key_env
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        for fmt in ("json", "text"):
            stream = io.StringIO()
            setup_logging(fmt, stream=stream, redactor=redactor)
            log = logging.getLogger("reconciler.test")
            log.info(
                "url https://x/?api_key=rf-key-abcdef, %s, %s",
                'we"ird\\key',
                "hook-secret-xyz",
                extra={"model": "m1", "key": "other-key-123"},
            )
            try:
                raise ValueError("boom rf-key-abcdef")
            except ValueError:
                log.exception("failed")
            out = stream.getvalue()
            for secret in ("rf-key-abcdef", "ird\\key", "ird\\\\key", "hook-secret-xyz", "other-key-123"):
                assert secret not in out, (fmt, out)
            assert out.count(MASK) >= 4
            if fmt == "json":
                first, second = (json.loads(line) for line in out.splitlines())
                assert first["model"] == "m1" and first["level"] == "info" and first["logger"] == "reconciler.test"
                assert "ValueError" in second["exc"]
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
