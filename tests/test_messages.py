"""Messages that used to mislead (issue 13): each names the right model, variable and state."""

from __future__ import annotations

import asyncio

from helpers import Workspace, by_name, roboflow_model, sim

from reconciler.domain import HistoryEvent
from reconciler.sandbox.faults import Fault
from reconciler.sandbox.roboflow.simulator import RoboflowSimulator
from reconciler.state import open_state

HARDHATS = roboflow_model("hardhat-detector")
FORKLIFTS = roboflow_model("forklift-detector", project="forklifts")

PROD = """\
apiVersion: reconciler/v1
kind: Provider
metadata: {name: roboflow-prod}
spec: {type: roboflow, api_key_env: ROBOFLOW_PROD_API_KEY}
"""


def test_missing_key_is_said_of_each_model(workspace: Workspace) -> None:
    ws = workspace
    ws.write("a.yaml", HARDHATS)
    ws.write("b.yaml", FORKLIFTS)
    env = ws.env()
    del env["ROBOFLOW_API_KEY"]
    res = ws.run("plan", "-o", "json", env=env)
    assert res.code == 1, res.output
    models = by_name(res.json())
    for name, other in (("hardhat-detector", "forklift-detector"), ("forklift-detector", "hardhat-detector")):
        (reason,) = models[name]["reasons"]
        file = "a.yaml" if name == "hardhat-detector" else "b.yaml"
        assert f"'{name}' at specs/{file}:4:" in reason["detail"]
        assert "ROBOFLOW_API_KEY is not set" in reason["detail"]
        assert other not in reason["detail"], reason  # blamed on itself, never on another model
    assert ws.sandbox.requests("roboflow") == []


def test_auth_hint_names_the_key_variable(workspace: Workspace) -> None:
    ws = workspace
    ws.write("p.yaml", PROD)
    ws.write("a.yaml", HARDHATS.replace("provider: roboflow", "provider: roboflow-prod"))
    res = ws.run("plan", "-o", "json", env=ws.env(ROBOFLOW_PROD_API_KEY="wrong-key"))
    assert res.code == 1, res.output
    (entry,) = res.json()["models"]
    assert entry["reasons"][0]["code"] == "auth-failed"
    assert "HTTP 401" in entry["reasons"][0]["detail"]
    assert "environment variable ROBOFLOW_PROD_API_KEY" in entry["reasons"][0]["detail"]
    assert "wrong-key" not in res.output


def test_wait_timeout_says_the_training_still_runs(workspace: Workspace) -> None:
    ws = workspace
    ws.write("a.yaml", HARDHATS)
    sim(ws, "roboflow", RoboflowSimulator).training_seconds = 60  # still running at the timeout
    res = ws.run("apply", "--wait", "--timeout", "0.3s")
    assert res.code == 1, res.output  # design.md: with --wait, exit 0 only when every training succeeded
    assert "did not succeed" not in res.stderr
    assert "hardhat-detector: still training when --timeout ran out" in res.stderr
    assert "`reconciler status`" in res.stderr and "`reconciler apply --wait` again" in res.stderr


def test_history_shows_reason_codes_and_messages_never_class_names(workspace: Workspace) -> None:
    ws = workspace
    ws.write("a.yaml", HARDHATS)
    ws.sandbox.inject(Fault(provider="roboflow", method="POST", path=r"/train$", status=429, times=1))
    applied = ws.run("apply")
    assert "held by the provider" in applied.stderr, applied.output
    # a record an older version wrote: the error's class name as the reason
    old = HistoryEvent("hardhat-detector", "unconfirmed", "TemporaryProviderError", detail={"message": "HTTP 503"})

    async def append() -> None:
        state = await open_state(ws.state_url)
        try:
            await state.append(old)
        finally:
            await state.close()

    asyncio.run(append())
    text = ws.run("history", "hardhat-detector")
    assert text.code == 0, text.output
    assert "Error" not in text.stdout, text.stdout  # no Python class name in any line
    not_started = next(line for line in text.stdout.splitlines() if " not-started " in line)
    assert "provider-unavailable" in not_started and "HTTP 429" in not_started
    legacy = next(line for line in text.stdout.splitlines() if " unconfirmed " in line)
    assert "provider-unavailable" in legacy and "HTTP 503" in legacy
    reasons = {e["event"]: e["reason"] for e in ws.events("hardhat-detector")}
    assert reasons["not-started"] == reasons["unconfirmed"] == "provider-unavailable"
