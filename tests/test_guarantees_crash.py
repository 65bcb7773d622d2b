"""Guarantees under kill -9: never a duplicate paid training, nothing lost, many writers beside each other.

Every test runs `reconciler apply` as a real process against the sandbox, with the quickstart
manifests of all five providers (`specs/`), and kills it at one step of a training trigger:

- `ws.run_process(..., crash_at=STEP)` runs the CLI through tests/seamed_cli.py, whose
  `Seams.on_step` hook makes the process SIGKILL itself before the intent is written, after it,
  or after the provider answered the train call but before the acknowledgement is written;
- a `Gate` (helpers.py) holds the train request at the simulator until the test opens it, either
  before the simulator handles it ("in flight": the provider acts on it only later) or after ("the
  provider did it, the answer was lost"), and the test kills the process while it is held: no
  delay that a loaded machine could outlast.

After each kill, `apply --wait` is run again (until `plan` is in sync; in-process, as the process
boundary adds nothing there) and the simulators' request logs must show exactly one train call per
drift, and `history` must tell what happened.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time

import pytest
from helpers import (
    HAS_DAEMON,
    MODELS,
    PROVIDERS,
    QUICKSTART,
    CliResult,
    DaemonProcess,
    Gate,
    Workspace,
    copy_quickstart,
    train_calls,
    wait_until,
)

from reconciler.sandbox.faults import LoggedRequest

#: A short HTTP timeout makes the settle window of an unacknowledged intent (2x the timeout) short.
HTTP_TIMEOUT = 1.0


def quickstart(ws: Workspace, providers: tuple[str, ...] = PROVIDERS) -> None:
    """The quickstart manifests in the workspace (client rate limits lifted); fast trainings."""
    copy_quickstart(ws.specs, providers)
    for t in ws.sandbox.served:
        ws.sandbox.sim(t).training_seconds = 0.5


def env(ws: Workspace, timeout: float = HTTP_TIMEOUT, **extra: str) -> dict[str, str]:
    return ws.env(RECONCILER_HTTP_TIMEOUT=f"{timeout}s", **extra)


def start_apply(ws: Workspace, environ: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return ws.start_process("apply", *args, env=environ)


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
        time.sleep(0.1)


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
            found = {name: ws.events(name) for name in QUICKSTART[t]}
            detail = {n: [(e["at"], e["event"], e["reason"], e["detail"]) for e in evs] for n, evs in found.items()}
            sent = [(c.at, c.status, c.text) for c in calls]
            pytest.fail(f"{t}: {len(calls)} train calls {sent}; history {json.dumps(detail, indent=1)}")
    stories = {}
    for name in MODELS:
        events = ws.story(name)
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
    crashed = ws.run_process("apply", env=env(ws), crash_at="before-intent")
    assert crashed.code == -signal.SIGKILL, crashed.output
    assert all(train_calls(ws, t) == [] for t in PROVIDERS)
    assert all(ws.story(m) == [] for m in MODELS)  # nothing was written: nothing to settle
    assert {a for a, _ in plan_actions(ws, env(ws)).values()} == {"train"}

    runs = recover(ws, env(ws))
    assert len(runs) == 1  # one `apply --wait` trains and waits for everything
    stories = assert_trained_once(ws)
    assert all(s == ["intent", "triggered", "succeeded"] for s in stories.values()), stories


def test_kill_after_the_intent_holds_then_trains_once(workspace: Workspace) -> None:
    ws = workspace
    quickstart(ws)
    # a settle window (2x the HTTP timeout) long enough that "at once" holds on a loaded machine:
    # the runs below are in-process, with no interpreter start-up between the kill and them
    timeout = 3 * HTTP_TIMEOUT
    crashed = ws.run_process("apply", env=env(ws, timeout), crash_at="after-intent")
    assert crashed.code == -signal.SIGKILL, crashed.output
    assert all(train_calls(ws, t) == [] for t in PROVIDERS)
    with_intent = [m for m in MODELS if ws.story(m) == ["intent"]]
    assert with_intent, "the process died before any intent was written"

    # at once: the intent may stand for a train call still on its way, so it is held, not resent
    actions = plan_actions(ws, env(ws, timeout))
    for name in with_intent:
        assert actions[name] == ("hold", ["unconfirmed-intent"]), actions
    assert ws.run("apply", env=env(ws, timeout)).code == 0
    held = [t for t in PROVIDERS if set(QUICKSTART[t]) <= set(with_intent)]
    assert held and all(train_calls(ws, t) == [] for t in held)

    # after the settle window nothing showed up: the call never left, so it is made (once)
    def window_over() -> bool:
        now = plan_actions(ws, env(ws, timeout))
        for name in with_intent:  # held until the window ends, then planned again
            assert now[name] == ("hold", ["unconfirmed-intent"]) or now[name][0] == "train", now
        return all(now[name][0] == "train" for name in with_intent)

    wait_until(window_over, 10 * timeout, "the settle window to pass", interval=0.2)
    assert all(train_calls(ws, t) == [] for t in held)  # held until then: nothing was sent meanwhile
    recover(ws, env(ws, timeout))
    stories = assert_trained_once(ws)
    for name in with_intent:
        assert stories[name] == ["intent", "intent", "triggered", "succeeded"], stories
        second = ws.events(name)[1]
        assert "never reached the provider" in str(second["detail"]["reasons"])


def test_kill_after_the_provider_answered_settles_by_observing(workspace: Workspace) -> None:
    ws = workspace
    quickstart(ws)
    crashed = ws.run_process("apply", env=env(ws), crash_at="after-train-call")
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


def test_kill_while_the_train_request_is_in_flight_never_sends_it_again(workspace: Workspace) -> None:
    """The train requests reached the providers, which have not acted on them yet, when the process dies.

    A gate in front of each simulator holds them there (instead of a delay that a loaded machine can
    outlast): whatever the timing, the restart sees no training at the providers yet.
    """
    ws = workspace
    quickstart(ws)
    timeout = 5.0  # settle window 10 s: the restarted runs below happen well within it
    gate = Gate(ws.sandbox, PROVIDERS, r"/train$")
    try:
        proc = start_apply(ws, env(ws, timeout))
        wait_until(gate.reached_by_all, 30, "every train request to reach its simulator")
        kill(proc)
        assert all(train_calls(ws, t) == [] for t in PROVIDERS)  # received, not acted on yet

        # restarted at once: the provider shows nothing yet, and nothing is sent again
        actions = plan_actions(ws, env(ws, timeout))
        assert {a for a, _ in actions.values()} <= {"hold", "wait"}, actions
        assert any(codes == ["unconfirmed-intent"] for _, codes in actions.values()), actions
        assert all(codes == ["unconfirmed-intent"] for _, codes in actions.values()), actions
        again = ws.run("apply", env=env(ws, timeout))
        assert again.code == 0, again.output
        assert all(gate.count(t) == 1 for t in PROVIDERS), gate.arrived

        # the providers act on the requests received before the kill
        gate.open()
        wait_until(lambda: all(train_calls(ws, t) for t in PROVIDERS), 30, "the providers to act on them")
    finally:
        gate.remove()
    recover(ws, env(ws, timeout))
    assert_trained_once(ws)
    for name in MODELS:
        assert ws.story(name) == ["intent", "settled", "succeeded"]


def test_kill_after_the_provider_acted_but_the_answer_was_lost(workspace: Workspace) -> None:
    ws = workspace
    quickstart(ws)
    # each provider acts on its train request; a gate holds the answer back until the process is dead
    gate = Gate(ws.sandbox, PROVIDERS, r"/train$", before=False)
    try:
        proc = start_apply(ws, env(ws))
        wait_until(gate.reached_by_all, 30, "every provider to act on its train request")
        kill(proc)

        actions = plan_actions(ws, env(ws))
        assert {a for a, _ in actions.values()} <= {"wait", "none"}, actions  # settled by observing
        recover(ws, env(ws))
        assert all(gate.count(t) == 1 for t in PROVIDERS), gate.arrived  # never sent again
    finally:
        gate.remove()
    # a request is logged once its (held back) answer went out
    wait_until(lambda: all(train_calls(ws, t) for t in PROVIDERS), 10, "the held-back answers")
    assert_trained_once(ws)
    for name in MODELS:
        assert ws.story(name) == ["intent", "settled", "succeeded"]


# ------------------------------------------------------------------ nothing lost


def test_kill_at_random_moments_loses_nothing_and_trains_once(workspace: Workspace) -> None:
    """kill -9 `apply --wait` again and again while it writes; the WAL database stays intact.

    Each moment is counted from the run's first request to a provider (it has read its manifests
    and opened the state by then), so the kills land in its work, not in the interpreter's start-up.
    """
    ws = workspace
    quickstart(ws)
    # the simulators' clock, moved on by hand once the kills are over: trainings outlast every
    # kill moment however slow the machine (with 3 s ones, under load, later runs found everything
    # in sync and exited before their kill), then end at once for the recovery
    skipped = [0.0]
    for t in ws.sandbox.served:
        sim = ws.sandbox.sim(t)
        sim.training_seconds = 600.0
        sim.clock = lambda: time.time() + skipped[0]
    kills = 0
    for delay in (0.0, 0.1, 0.2, 0.35, 0.5, 0.7):
        seen = len(ws.sandbox.requests())
        proc = start_apply(ws, env(ws), "--wait")

        def started(proc: subprocess.Popen[str] = proc, seen: int = seen) -> bool:
            return proc.poll() is not None or len(ws.sandbox.requests()) > seen

        wait_until(started, 60, "the run's first request")
        time.sleep(delay)  # the moment of the kill: this is what varies, nothing waits on it
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)  # a run that ended meanwhile is reaped, not counted
        proc.communicate(timeout=10)
        kills += proc.returncode == -signal.SIGKILL
        if (ws.root / "state.db").exists():  # an early kill may come before the file is created
            assert integrity(ws) == "ok"
    assert kills >= 3
    skipped[0] = 1200.0
    recover(ws, env(ws))
    assert integrity(ws) == "ok"
    stories = assert_trained_once(ws)
    # history is complete: every run's intent is there, each followed by what became of it
    for name, events in stories.items():
        intents = [i for i, e in enumerate(events) if e == "intent"]
        ack = events.index("triggered") if "triggered" in events else events.index("settled")
        assert intents[-1] < ack < events.index("succeeded"), (name, events)


# ------------------------------------------------------------------ many writers, one truth
# (issue 10: no global lock any more; more in tests/test_many_writers.py)


def test_two_applies_never_both_trigger(workspace: Workspace) -> None:
    ws = workspace
    quickstart(ws, ("roboflow",))
    ws.sandbox.sim("roboflow").training_seconds = 60  # still in flight when the third apply plans
    # a gate holds the first apply's train call at the provider for as long as the test needs: a
    # second apply runs start to end meanwhile, without waiting (there is no lock any more)
    gate = Gate(ws.sandbox, ("roboflow",), r"/train$")
    try:
        first = start_apply(ws, env(ws, 10))
        wait_until(gate.reached_by_all, 30, "the first apply's train call")

        # --lock-timeout is accepted and ignored: the second sees the first's intent and holds
        second = ws.run("apply", "--lock-timeout", "1s", env=env(ws, 10))
        assert second.code == 0, second.output
        assert "hold (1)" in second.stdout and "unconfirmed-intent" in second.stdout, second.output
        assert first.poll() is None, "the first apply ended before the second ran"
        assert train_calls(ws, "roboflow") == [] and gate.count("roboflow") == 1
        gate.open()

        out, err = first.communicate(timeout=30)
        assert first.returncode == 0, out + err
        third = ws.run("apply", "--lock-timeout", "30s", env=env(ws, 10))
        assert third.code == 0, third.output
    finally:
        gate.remove()
    assert "wait (1)" in third.stdout  # it found the first's training in flight
    assert len(train_calls(ws, "roboflow")) == 1
    assert gate.count("roboflow") == 1


@pytest.mark.skipif(not HAS_DAEMON, reason="reconciler.daemon not in this tree")
def test_apply_never_triggers_while_a_daemon_holds_the_state(
    workspace: Workspace, daemons: list[DaemonProcess]
) -> None:
    ws = workspace
    quickstart(ws, ("roboflow",))
    ws.sandbox.sim("roboflow").training_seconds = 30  # the daemon's training stays in flight
    daemon = DaemonProcess(ws, env=env(ws, 5))
    daemons.append(daemon)
    try:
        wait_until(lambda: train_calls(ws, "roboflow"), 20, "the daemon's train call")
        # the apply runs beside the daemon (no lock to wait for) and finds its training in flight
        res = ws.run("apply", "--lock-timeout", "1s", env=env(ws, 5))
        assert res.code == 0 and "wait (1)" in res.stdout, res.output
        assert len(train_calls(ws, "roboflow")) == 1
    finally:
        daemon.terminate(timeout=30)
    assert len(train_calls(ws, "roboflow")) == 1
