"""Guarantees under kill -9: never a duplicate paid training, nothing lost, one writer per state.

Every test runs the real CLI as a subprocess against the sandbox, with the quickstart manifests of
all five providers (`specs/`), and kills `reconciler apply` at one step of a training trigger:

- `RECONCILER_TEST_CRASHPOINT` (reconciler.engine._crashpoint) makes the process SIGKILL itself
  before the intent is written, after it, or after the provider answered the train call but
  before the acknowledgement is written;
- a sandbox `Fault` holds the train request for a while, either before the simulator handles it
  ("in flight": the provider acts on it only later) or after (`after_handling`: "the provider did
  it, the answer was lost"), and the test kills the process during that delay.

After each kill, `apply --wait` is run again (until `plan` is in sync) and the simulators' request
logs must show exactly one train call per drift, and `history` must tell what happened.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from conftest import ROOT, CliResult, Workspace

from reconciler.providers import known_types
from reconciler.sandbox.faults import Fault, LoggedRequest

T = TypeVar("T")

#: quickstart manifest of each provider type -> its models (specs/<type>.yaml)
QUICKSTART: dict[str, tuple[str, ...]] = {
    "roboflow": ("hardhat-detector",),
    "rebase": ("solar-park-alpha", "wind-farm-borealis"),  # both sites in one call, as a rule
    "photogpt": ("ada-portrait",),
    "lucid": ("shop-recommender",),
    "predicthq": ("downtown-covers",),
}
PROVIDERS = tuple(t for t in QUICKSTART if t in known_types())
MODELS = tuple(m for t in PROVIDERS for m in QUICKSTART[t])
#: PhotoGPT's documented train call is a GET; the others POST
TRAIN_METHOD = {"photogpt": "GET"}
#: A short HTTP timeout makes the settle window of an unacknowledged intent (2x the timeout) short.
HTTP_TIMEOUT = 1.0


FAST_PROVIDER = """\
apiVersion: reconciler/v1
kind: Provider
metadata: {name: TYPE}
spec: {type: TYPE, requests_per_second: 1000}
---
"""


def quickstart(ws: Workspace, providers: tuple[str, ...] = PROVIDERS) -> None:
    """Copy the quickstart manifests (and PhotoGPT's images) into the workspace; fast trainings.

    A Provider manifest per type lifts the client-side rate limits, which are there for the real
    APIs and would only slow the simulators down.
    """
    for t in providers:
        text = (ROOT / "specs" / f"{t}.yaml").read_text()
        (ws.specs / f"{t}.yaml").write_text(FAST_PROVIDER.replace("TYPE", t) + text)
    if "photogpt" in providers:
        shutil.copytree(ROOT / "specs" / "photogpt-images", ws.specs / "photogpt-images", dirs_exist_ok=True)
    for t in ws.sandbox.served:
        ws.sandbox.sim(t).training_seconds = 0.5


def env(ws: Workspace, timeout: float = HTTP_TIMEOUT, **extra: str) -> dict[str, str]:
    return ws.env(RECONCILER_HTTP_TIMEOUT=f"{timeout}s", **extra)


def train_calls(ws: Workspace, provider: str) -> list[LoggedRequest]:
    """The train calls a simulator received (its log entry is written once it handled the call)."""
    method = TRAIN_METHOD.get(provider, "POST")
    return [r for r in ws.sandbox.requests(provider) if r.method == method and r.path.endswith("/train")]


def wait_for(check: Callable[[], T | None], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def start_apply(ws: Workspace, environ: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "reconciler.cli", "apply", *args],
        cwd=ws.root,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill(proc: subprocess.Popen[str]) -> None:
    """kill -9 the process this test started, and reap it."""
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL


def plan_actions(ws: Workspace, environ: dict[str, str]) -> dict[str, tuple[str, list[str]]]:
    res = ws.run("plan", "--output", "json", env=environ)
    assert res.code in (0, 2), res.output
    return {m["name"]: (m["action"], [r["code"] for r in m["reasons"]]) for m in res.json()["models"]}


def recover(ws: Workspace, environ: dict[str, str], timeout: float = 30) -> list[CliResult]:
    """Run `apply --wait` until `plan` shows every model in sync; every run must succeed."""
    runs = []
    deadline = time.monotonic() + timeout
    while True:
        res = ws.run("apply", "--wait", env=environ)
        runs.append(res)
        assert res.code == 0, res.output
        assert "Traceback" not in res.output
        actions = plan_actions(ws, environ)
        if all(action == "none" for action, _ in actions.values()):
            return runs
        assert time.monotonic() < deadline, f"not in sync: {actions}"
        time.sleep(0.3)


def history(ws: Workspace, name: str) -> list[dict[str, Any]]:
    res = ws.run("history", name, "--output", "json")
    assert res.code == 0, res.output
    events: list[dict[str, Any]] = res.json()["events"]
    return events


def story(ws: Workspace, name: str) -> list[str]:
    return [e["event"] for e in history(ws, name)]


def trained_units(provider: str, calls: list[LoggedRequest]) -> list[str]:
    """What each train call trained: Rebase names its sites in the body, the others one model."""
    if provider == "rebase":
        return [site for c in calls for site in c.json()["site_ids"]]
    return [c.path for c in calls]


def assert_trained_once(ws: Workspace) -> dict[str, list[str]]:
    """Every model trained by exactly one train call, and a coherent history.

    Rebase trains both sites in one call, unless a crash left an intent for one site only: then
    each site is trained by a call of its own, still once.
    """
    for t in PROVIDERS:
        calls = train_calls(ws, t)
        units = trained_units(t, calls)
        if len(units) != len(QUICKSTART[t]) or len(set(units)) != len(units):
            stories = {name: history(ws, name) for name in QUICKSTART[t]}
            detail = {n: [(e["at"], e["event"], e["reason"], e["detail"]) for e in evs] for n, evs in stories.items()}
            sent = [(c.at, c.status, c.text) for c in calls]
            pytest.fail(f"{t}: {len(calls)} train calls {sent}; history {json.dumps(detail, indent=1)}")
    stories = {}
    for name in MODELS:
        events = story(ws, name)
        stories[name] = events
        # one acknowledgement for the one training: triggered (the run that called saw the answer)
        # or settled (a later run saw the training the unacknowledged intent started)
        assert events.count("triggered") + events.count("settled") == 1, (name, events)
        assert events[0] == "intent" and events[-1] == "succeeded", (name, events)
        assert not {"not-started", "refused", "failed", "unconfirmed"} & set(events), (name, events)
    return stories


def integrity(ws: Workspace) -> str:
    db = ws.root / "state.db"
    # read-write, as the next run opens it: SQLite recovers the WAL a killed writer left behind
    with sqlite3.connect(f"file:{db}?mode=rw", uri=True) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


# ------------------------------------------------------------------ crash points in the engine


def test_kill_before_the_intent_is_written_trains_once_after_restart(workspace: Workspace) -> None:
    ws = workspace
    quickstart(ws)
    crashed = ws.run("apply", env=env(ws, RECONCILER_TEST_CRASHPOINT="before-intent"))
    assert crashed.code == -signal.SIGKILL, crashed.output
    assert all(train_calls(ws, t) == [] for t in PROVIDERS)
    assert all(story(ws, m) == [] for m in MODELS)  # nothing was written: nothing to settle
    assert {a for a, _ in plan_actions(ws, env(ws)).values()} == {"train"}

    runs = recover(ws, env(ws))
    assert len(runs) == 1  # one `apply --wait` trains and waits for everything
    stories = assert_trained_once(ws)
    assert all(s == ["intent", "triggered", "succeeded"] for s in stories.values()), stories


def test_kill_after_the_intent_holds_then_trains_once(workspace: Workspace) -> None:
    ws = workspace
    quickstart(ws)
    # a settle window (2x the HTTP timeout) long enough that "at once" holds on a loaded machine
    timeout = 4 * HTTP_TIMEOUT
    crashed = ws.run("apply", env=env(ws, timeout, RECONCILER_TEST_CRASHPOINT="after-intent"))
    assert crashed.code == -signal.SIGKILL, crashed.output
    assert all(train_calls(ws, t) == [] for t in PROVIDERS)
    with_intent = [m for m in MODELS if story(ws, m) == ["intent"]]
    assert with_intent, "the process died before any intent was written"

    # at once: the intent may stand for a train call still on its way, so it is held, not resent
    actions = plan_actions(ws, env(ws, timeout))
    for name in with_intent:
        assert actions[name] == ("hold", ["unconfirmed-intent"]), actions
    assert ws.run("apply", env=env(ws, timeout)).code == 0
    held = [t for t in PROVIDERS if set(QUICKSTART[t]) <= set(with_intent)]
    assert held and all(train_calls(ws, t) == [] for t in held)

    # after the settle window nothing showed up: the call never left, so it is made (once)
    time.sleep(2 * timeout)
    recover(ws, env(ws, timeout))
    stories = assert_trained_once(ws)
    for name in with_intent:
        assert stories[name] == ["intent", "intent", "triggered", "succeeded"], stories
        second = history(ws, name)[1]
        assert "never reached the provider" in str(second["detail"]["reasons"])


def test_kill_after_the_provider_answered_settles_by_observing(workspace: Workspace) -> None:
    ws = workspace
    quickstart(ws)
    crashed = ws.run("apply", env=env(ws, RECONCILER_TEST_CRASHPOINT="after-train-call"))
    assert crashed.code == -signal.SIGKILL, crashed.output
    called = [t for t in PROVIDERS if train_calls(ws, t)]
    assert called, "the process died before any train call"

    runs = recover(ws, env(ws))
    stories = assert_trained_once(ws)
    settled = [m for t in called for m in QUICKSTART[t]]
    for name in settled:
        # the intent was never acknowledged: the restart saw the training at the provider
        assert stories[name] == ["intent", "settled", "succeeded"], stories
    # the first `apply --wait` after the crash followed the settled trainings to their end
    assert any("succeeded" in r.stderr for r in runs)


# ------------------------------------------------------------------ kills during the train request


def inject_train_delay(ws: Workspace, delay: float, *, after_handling: bool) -> None:
    for t in PROVIDERS:
        ws.sandbox.inject(
            Fault(
                provider=t,
                method=TRAIN_METHOD.get(t, "POST"),
                path=r"/train$",
                delay=delay,
                after_handling=after_handling,
            )
        )


def test_kill_while_the_train_request_is_in_flight_never_sends_it_again(workspace: Workspace) -> None:
    ws = workspace
    quickstart(ws)
    timeout = 2.0  # settle window 4 s: longer than the provider takes to act on the request
    inject_train_delay(ws, 1.5, after_handling=False)
    proc = start_apply(ws, env(ws, timeout))
    wait_for(lambda: not ws.sandbox.faults(), 20, "every train request to reach its simulator")
    kill(proc)
    assert all(train_calls(ws, t) == [] for t in PROVIDERS)  # received, not acted on yet

    # restarted at once: the provider shows nothing yet, and nothing is sent again
    actions = plan_actions(ws, env(ws, timeout))
    assert {a for a, _ in actions.values()} <= {"hold", "wait"}, actions
    assert any(codes == ["unconfirmed-intent"] for _, codes in actions.values()), actions

    recover(ws, env(ws, timeout))
    assert_trained_once(ws)
    for name in MODELS:
        assert story(ws, name) == ["intent", "settled", "succeeded"]


def test_kill_after_the_provider_acted_but_the_answer_was_lost(workspace: Workspace) -> None:
    ws = workspace
    quickstart(ws)
    inject_train_delay(ws, 2, after_handling=True)
    proc = start_apply(ws, env(ws))
    wait_for(lambda: not ws.sandbox.faults(), 20, "every train request to reach its simulator")
    time.sleep(0.2)  # handled; the answers are held back by the fault
    kill(proc)

    actions = plan_actions(ws, env(ws))
    assert {a for a, _ in actions.values()} <= {"wait", "none"}, actions  # settled by observing
    recover(ws, env(ws))
    # a request is logged once its (held back) answer went out
    wait_for(lambda: all(train_calls(ws, t) for t in PROVIDERS), 10, "the held-back answers")
    assert_trained_once(ws)
    for name in MODELS:
        assert story(ws, name) == ["intent", "settled", "succeeded"]


# ------------------------------------------------------------------ nothing lost


def test_kill_at_random_moments_loses_nothing_and_trains_once(workspace: Workspace) -> None:
    """kill -9 `apply --wait` again and again while it writes; the WAL database stays intact."""
    ws = workspace
    quickstart(ws)
    kills = 0
    for delay in (0.25, 0.4, 0.55, 0.7, 0.85, 1.0):
        proc = start_apply(ws, env(ws), "--wait")
        time.sleep(delay)
        if proc.poll() is None:
            kill(proc)
            kills += 1
        else:
            proc.communicate()
        if (ws.root / "state.db").exists():  # an early kill may come before the file is created
            assert integrity(ws) == "ok"
    assert kills >= 3
    recover(ws, env(ws))
    assert integrity(ws) == "ok"
    stories = assert_trained_once(ws)
    # history is complete: every run's intent is there, each followed by what became of it
    for name, events in stories.items():
        intents = [i for i, e in enumerate(events) if e == "intent"]
        ack = events.index("triggered") if "triggered" in events else events.index("settled")
        assert intents[-1] < ack < events.index("succeeded"), (name, events)


# ------------------------------------------------------------------ one writer per state


def test_two_applies_never_both_trigger(workspace: Workspace) -> None:
    ws = workspace
    quickstart(ws, ("roboflow",))
    # the first apply holds the lock while its train call takes 8 s: long enough, even on a loaded
    # machine, for a second apply to start, wait 1 s for the lock and give up
    ws.sandbox.inject(Fault(provider="roboflow", method="POST", path=r"/train$", delay=8))
    first = start_apply(ws, env(ws, 10))
    wait_for(lambda: not ws.sandbox.faults(), 20, "the first apply's train call")

    impatient = ws.run("apply", "--lock-timeout", "1s", env=env(ws, 10))
    assert impatient.code == 1
    assert "locked by `reconciler apply`" in impatient.stderr and f"pid {first.pid}" in impatient.stderr
    assert first.poll() is None, "the first apply ended before the second tried the lock"
    patient = start_apply(ws, env(ws, 10), "--lock-timeout", "30s")

    out, err = first.communicate(timeout=30)
    assert first.returncode == 0, out + err
    out, err = patient.communicate(timeout=30)
    assert patient.returncode == 0, out + err
    assert "wait (1)" in out  # it waited for the lock, then found the training in flight
    assert len(train_calls(ws, "roboflow")) == 1


@pytest.mark.skipif(not (ROOT / "reconciler" / "daemon.py").exists(), reason="reconciler/daemon.py not in this tree")
def test_apply_never_triggers_while_a_daemon_holds_the_state(workspace: Workspace, tmp_path: Path) -> None:
    ws = workspace
    quickstart(ws, ("roboflow",))
    ws.sandbox.sim("roboflow").training_seconds = 30  # the daemon's training stays in flight
    with socket_port() as port:
        log = (tmp_path / "daemon.err").open("w")
        daemon = subprocess.Popen(
            [sys.executable, "-m", "reconciler.cli", "daemon", "specs", "--listen", f"127.0.0.1:{port}"],
            cwd=ws.root,
            env=env(ws, 5),
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        wait_for(lambda: train_calls(ws, "roboflow"), 20, "the daemon's train call")
        res = ws.run("apply", "--lock-timeout", "1s", env=env(ws, 5))
        assert res.code == 1 and "locked by `reconciler daemon`" in res.stderr, res.output
        assert len(train_calls(ws, "roboflow")) == 1
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
        log.close()
    assert len(train_calls(ws, "roboflow")) == 1


class socket_port:
    """A free TCP port on 127.0.0.1 (closed before the daemon binds it)."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        return port

    def __exit__(self, *exc: object) -> None:
        return None
