"""The real CLI against the Roboflow simulator over HTTP: exit codes, train calls, state, history."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

from helpers import Workspace, roboflow_model, train_paths

from reconciler.sandbox.faults import Fault
from reconciler.sandbox.registry import SANDBOX_API_KEYS

MODEL = roboflow_model(labels="{team: vision}", epochs="EPOCHS")
OTHER = roboflow_model(
    "forklift-detector", project="forklifts", version=2, model_type="yolov11s", epochs=None, labels="{team: ops}"
)


def test_apply_trains_once_then_in_sync(workspace: Workspace) -> None:
    ws = workspace
    ws.write("a.yaml", MODEL.replace("EPOCHS", "100"))
    plan = ws.run("plan", "--output", "json")
    assert plan.code == 2, plan.output
    doc = plan.json()
    assert doc["format_version"] == 1 and doc["summary"] == {"train": 1}
    (entry,) = doc["models"]
    assert entry["name"] == "hardhat-detector" and entry["action"] == "train"
    assert entry["reasons"][0]["code"] == "never-trained"
    assert train_paths(ws) == []  # plan never writes to a provider

    applied = ws.run("apply", "--wait")
    assert applied.code == 0, applied.output
    assert "hardhat-detector: succeeded" in applied.stderr
    calls = [r for r in ws.sandbox.requests("roboflow") if r.method == "POST"]
    assert [r.path for r in calls] == ["/acme/hardhats/3/train"]
    assert calls[0].json() == {"modelType": "rfdetr-nano", "epochs": 100}
    assert calls[0].query["api_key"] == [SANDBOX_API_KEYS["roboflow"]]

    ws.sandbox.clear_requests()
    again = ws.run("plan")
    assert again.code == 0, again.output
    assert "none (1):" in again.stdout
    reads = ws.sandbox.requests("roboflow")
    assert len(reads) == 1 and reads[0].method == "GET"  # one read per in-sync model, no train
    assert ws.run("apply").code == 0
    assert train_paths(ws) == []


def test_spec_change_shows_fields_and_retrains_once(workspace: Workspace) -> None:
    ws = workspace
    ws.write("a.yaml", MODEL.replace("EPOCHS", "100"))
    assert ws.run("apply", "--wait").code == 0
    ws.write("a.yaml", MODEL.replace("EPOCHS", "150"))
    plan = ws.run("plan")
    assert plan.code == 2
    assert "epochs: 100 -> 150" in plan.stdout and "spec-changed" in plan.stdout
    ws.sandbox.clear_requests()
    assert ws.run("apply", "--wait").code == 0
    assert train_paths(ws) == ["/acme/hardhats/3/train"]
    assert ws.run("plan").code == 0
    hist = ws.run("history", "hardhat-detector", "--output", "json").json()
    events = [e["event"] for e in hist["events"]]
    assert events == ["intent", "triggered", "succeeded", "intent", "triggered", "succeeded"]
    assert hist["events"][3]["reason"] == "spec-changed"


def test_apply_does_not_stack_a_training_in_flight(workspace: Workspace) -> None:
    ws = workspace
    ws.sandbox.sim("roboflow").training_seconds = 60  # still running during the whole test
    ws.write("a.yaml", MODEL.replace("EPOCHS", "100"))
    assert ws.run("apply").code == 0  # started, not waited for
    ws.write("a.yaml", MODEL.replace("EPOCHS", "120"))
    plan = ws.run("plan", "--output", "json")
    (entry,) = plan.json()["models"]
    assert entry["action"] == "wait" and {r["code"] for r in entry["reasons"]} == {"in-flight", "spec-changed"}
    assert plan.code == 2  # a queued spec change: trains once the current training ends (design.md)
    assert ws.run("apply").code == 0
    assert len(train_paths(ws)) == 1


def test_target_selector_and_unknown_baseline(workspace: Workspace) -> None:
    ws = workspace
    ws.write("a.yaml", MODEL.replace("EPOCHS", "100"))
    ws.write("b.yaml", OTHER)
    ws.sandbox.sim("roboflow").mark_trained("acme", "forklifts", 2, model_type="yolov11s")  # type: ignore[attr-defined]
    plan = ws.run("plan", "--selector", "team=ops", "--output", "json").json()
    (entry,) = plan["models"]
    assert entry["name"] == "forklift-detector" and entry["action"] == "hold"
    assert entry["reasons"][0]["code"] == "unknown-baseline"
    only = ws.run("plan", "--target", "hardhat-detector", "--output", "json").json()
    assert [m["name"] for m in only["models"]] == ["hardhat-detector"]
    assert ws.run("plan", "--target", "nope").code == 1
    adopted = ws.run("adopt", "forklift-detector")
    assert adopted.code == 0, adopted.output
    after = ws.run("plan", "--selector", "team=ops")
    assert after.code == 0, after.output


def test_errors_are_per_model_and_exit_1(workspace: Workspace) -> None:
    ws = workspace
    ws.write("a.yaml", MODEL.replace("EPOCHS", "100").replace("version: 3", "version: 9"))  # no such version
    ws.write("b.yaml", OTHER)
    plan = ws.run("plan", "--output", "json")
    assert plan.code == 1
    by_name = {m["name"]: m for m in plan.json()["models"]}
    assert by_name["hardhat-detector"]["action"] == "error"
    assert by_name["hardhat-detector"]["reasons"][0]["code"] == "not-found"
    assert by_name["forklift-detector"]["action"] == "train"
    applied = ws.run("apply")
    assert applied.code == 1
    assert train_paths(ws) == ["/acme/forklifts/2/train"]  # the healthy model still trained


def test_wrong_key_is_an_auth_error_without_leaking_it(workspace: Workspace) -> None:
    ws = workspace
    ws.write("a.yaml", MODEL.replace("EPOCHS", "100"))
    secret = "sk-live-very-secret-123"
    res = ws.run("plan", env=ws.env(ROBOFLOW_API_KEY=secret))
    assert res.code == 1
    assert "auth-failed" in res.stdout and "401" in res.stdout
    assert secret not in res.output
    missing = ws.run("plan", env={k: v for k, v in ws.env().items() if k != "ROBOFLOW_API_KEY"})
    assert missing.code == 1 and "ROBOFLOW_API_KEY is not set" in missing.output


def test_reads_retry_429_and_5xx(workspace: Workspace) -> None:
    ws = workspace
    ws.write("a.yaml", MODEL.replace("EPOCHS", "100"))
    ws.sandbox.inject(Fault(provider="roboflow", method="GET", status=429, retry_after=0, times=1))
    ws.sandbox.inject(Fault(provider="roboflow", method="GET", status=503, times=1))
    plan = ws.run("plan", "--output", "json")
    assert plan.code == 2, plan.output
    statuses = [r.status for r in ws.sandbox.requests("roboflow")]
    assert statuses == [429, 503, 200]


def test_usage_errors_exit_1_and_validate(workspace: Workspace) -> None:
    ws = workspace
    ws.write("a.yaml", MODEL.replace("EPOCHS", "100"))
    assert ws.run("plan", "--no-such-flag").code == 1
    assert ws.run("validate").code == 0
    ws.write(
        "b.yaml", "apiVersion: reconciler/v1\nkind: TrainedModel\nmetadata: {name: x}\nspec: {provider: roboflow}\n"
    )
    bad = ws.run("validate")
    assert bad.code == 1 and "b.yaml:4:" in bad.stderr and "spec.model" in bad.stderr
    j = ws.run("plan", "--output", "json")
    assert j.code == 1 and json.loads(j.stdout)["errors"]


def test_schema_is_json_schema(workspace: Workspace) -> None:
    out = workspace.run("schema")
    assert out.code == 0, out.output
    doc = out.json()
    assert doc["$schema"].startswith("https://json-schema.org/")
    assert "roboflow" in out.stdout and "TrainedModelSpec" in doc["$defs"]


def test_history_records_the_git_commit_of_the_manifests(workspace: Workspace) -> None:
    ws = workspace
    ws.write("a.yaml", MODEL.replace("EPOCHS", "100"))
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q"], cwd=ws.root, check=True)
    subprocess.run([*git, "add", "specs"], cwd=ws.root, check=True)
    subprocess.run([*git, "commit", "-qm", "models"], cwd=ws.root, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ws.root, capture_output=True, text=True).stdout.strip()
    assert ws.run("apply").code == 0
    events = ws.run("history", "hardhat-detector", "--output", "json").json()["events"]
    assert events and all(e["git_commit"] == head for e in events)
    text = ws.run("history", "hardhat-detector")
    assert text.code == 0 and "intent" in text.stdout and head[:8] in text.stdout


def test_fresh_state_in_ci_warns(workspace: Workspace) -> None:
    ws = workspace
    ws.write("a.yaml", MODEL.replace("EPOCHS", "100"))
    res = ws.run("plan", env=ws.env(CI="true"))
    assert res.code == 2 and "forgets every training" in res.stderr
    assert "forgets every training" not in ws.run("plan", env=ws.env(CI="true")).stderr  # not fresh any more


def test_sandbox_command_serves_all_five(tmp_path: Path) -> None:
    """The real entry point as a process: it prints the exports, serves, and exits 0 on SIGTERM."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler.cli", "sandbox", "--dir", str(tmp_path / "world")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        exports = {}
        for line in proc.stdout:
            key, _, value = line.removeprefix("export ").strip().partition("=")
            exports[key] = value
            if len(exports) == 10:
                break
        for t in ("PREDICTHQ", "REBASE", "ROBOFLOW", "LUCID", "PHOTOGPT"):
            assert exports[f"RECONCILER_{t}_BASE_URL"].startswith("http://127.0.0.1:")
            assert exports[f"{t}_API_KEY"]
        url = exports["RECONCILER_ROBOFLOW_BASE_URL"] + "/?api_key=" + exports["ROBOFLOW_API_KEY"]
        with urllib.request.urlopen(url) as resp:
            assert resp.status == 200
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def test_shared_postgresql_state(workspace: Workspace, postgres_url: str) -> None:
    """Two CI runners with no local files share what was trained through PostgreSQL."""
    ws = workspace
    ws.write("a.yaml", MODEL.replace("EPOCHS", "100"))
    env = ws.env(RECONCILER_STATE=postgres_url, CI="true")
    first = ws.run("apply", "--wait", env=env)
    assert first.code == 0, first.output
    assert "forgets every training" not in first.stderr  # shared state: no fresh-file warning
    (ws.root / "state.db").unlink(missing_ok=True)
    second = ws.run("plan", env=env)
    assert second.code == 0, second.output
    assert ws.story("hardhat-detector", env=env) == ["intent", "triggered", "succeeded"]
    assert len(train_paths(ws)) == 1


def test_git_commit_outside_a_repository_comes_from_the_env_given(tmp_path: Path) -> None:
    """Outside a git work tree the CI's commit variable names the commit, read from the env passed in."""
    from reconciler.runtime import git_commit

    assert git_commit([str(tmp_path)], {"GITHUB_SHA": "f00d"}) == "f00d"
    assert git_commit([str(tmp_path)], {"CI_COMMIT_SHA": "beef"}) == "beef"
    assert git_commit([str(tmp_path)], {}) is None
