"""Notifications (design.md "Notifications"): every test posts to a `Receiver` on 127.0.0.1.

`apply` and the daemon send a JSON body per transition to `RECONCILER_NOTIFY_URL`, at most once per
(model, fingerprint, event) across writers (claimed in the state), in the background: a dead, slow
or failing endpoint never delays a training, and the URL (a secret) is never shown.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from helpers import DaemonProcess, Workspace, free_port, roboflow_model, sim, train_calls, wait_until

from reconciler.notify import EVENTS, Notice, Notifier, body_of, hold_notices
from reconciler.plan import Action, ModelPlan, Reason
from reconciler.providers.http import PostOutcome
from reconciler.providers.origins import endpoint_url_problem
from reconciler.sandbox.receiver import TOKEN, Receiver
from reconciler.sandbox.roboflow.simulator import RoboflowSimulator
from reconciler.state import open_state

BODY_KEYS = {"format_version", "event", "model", "provider", "reasons", "fingerprint", "commit", "time", "text"}
MODEL = "hardhat-detector"


@pytest.fixture
def listen() -> Iterator[Callable[..., Receiver]]:
    """Receivers on 127.0.0.1 (`Receiver(status, delay)`), closed at the end."""
    started: list[Receiver] = []

    def make(status: int = 200, delay: float = 0.0) -> Receiver:
        started.append(Receiver(status, delay))
        return started[-1]

    yield make
    for li in started:
        li.close()


def model_with(policy: str = "", **kw: Any) -> str:
    return roboflow_model(**kw) + (f"  policy: {{{policy}}}\n" if policy else "")


def notify_env(ws: Workspace, url: str, **extra: str) -> dict[str, str]:
    return ws.env(RECONCILER_NOTIFY_URL=url, **extra)


def stored(ws: Workspace) -> list[tuple[str, str, str]]:
    """The notifications claimed in the workspace's state: (model, event, result)."""

    async def read() -> list[tuple[str, str, str]]:
        state = await open_state(ws.state_url)
        try:
            return [(n.model, n.event, n.result) for n in await state.notifications()]
        finally:
            await state.close()

    return asyncio.run(read())


def secrets(ws: Workspace) -> list[str]:
    return [v for k, v in ws.sandbox.env().items() if k.endswith("_API_KEY")]


# ---------------------------------------------------------------- what is sent


def test_apply_wait_sends_started_then_succeeded_once(workspace: Workspace, listen: Callable[..., Receiver]) -> None:
    li = listen()
    workspace.write("m.yaml", roboflow_model())
    res = workspace.run("apply", "--wait", env=notify_env(workspace, li.url))
    assert res.code == 0, res.output
    docs = li.wait_for(2)
    assert li.events() == [(MODEL, "training-started"), (MODEL, "training-succeeded")]
    intent = next(e for e in workspace.events(MODEL) if e["event"] == "intent")
    for doc in docs:
        assert set(doc) == BODY_KEYS
        assert doc["format_version"] == 1
        assert doc["provider"] == "roboflow"
        assert doc["fingerprint"] == intent["fingerprint"]
        assert datetime.fromisoformat(doc["time"]).tzinfo is not None
        assert "\n" not in doc["text"] and MODEL in doc["text"]
        assert all(set(r) == {"code", "detail"} for r in doc["reasons"])
    assert docs[0]["reasons"][0]["code"] == "never-trained"
    assert docs[0]["text"].startswith("reconciler: training started for hardhat-detector (roboflow) - never-trained")
    assert stored(workspace) == [(MODEL, "training-started", "sent"), (MODEL, "training-succeeded", "sent")]

    # a second apply (nothing to do) and a second run over the same transitions send nothing
    res = workspace.run("apply", "--wait", env=notify_env(workspace, li.url))
    assert res.code == 0, res.output
    assert len(li.docs()) == 2


def test_a_failed_training_is_told_once(workspace: Workspace, listen: Callable[..., Receiver]) -> None:
    li = listen()
    workspace.write("m.yaml", roboflow_model())
    sim(workspace, "roboflow", RoboflowSimulator).fail_next_trainings(1, "out of GPU memory")
    res = workspace.run("apply", "--wait", env=notify_env(workspace, li.url))
    assert res.code != 0, res.output
    docs = li.wait_for(2)
    assert li.events() == [(MODEL, "training-started"), (MODEL, "training-failed")]
    assert docs[1]["reasons"] == [{"code": "training-failed", "detail": "out of GPU memory"}]
    # held in backoff: a second apply tells nothing new
    workspace.run("apply", env=notify_env(workspace, li.url))
    assert len(li.docs()) == 2


def test_retries_exhausted_is_told(workspace: Workspace, listen: Callable[..., Receiver]) -> None:
    li = listen()
    workspace.write("m.yaml", model_with("max_retries: 0"))
    sim(workspace, "roboflow", RoboflowSimulator).fail_next_trainings(1)
    workspace.run("apply", "--wait", env=notify_env(workspace, li.url))
    docs = li.wait_for(3)
    assert li.events() == [(MODEL, "training-started"), (MODEL, "training-failed"), (MODEL, "retries-exhausted")]
    assert [r["code"] for r in docs[2]["reasons"]] == ["training-failed", "retries-exhausted"]
    for _ in range(2):  # still exhausted: never told again
        workspace.run("apply", env=notify_env(workspace, li.url))
    assert len(li.docs()) == 3
    assert [e for _, e, r in stored(workspace) if r == "sent"] == [
        "training-started",
        "training-failed",
        "retries-exhausted",
    ]


def test_warn_mode_drift_is_told_once(workspace: Workspace, listen: Callable[..., Receiver]) -> None:
    li = listen()
    workspace.write("m.yaml", model_with("drift: warn"))
    for _ in range(2):
        res = workspace.run("apply", env=notify_env(workspace, li.url))
        assert res.code == 0, res.output
    (doc,) = li.wait_for(1)
    assert (doc["event"], [r["code"] for r in doc["reasons"]]) == ("drift-detected", ["never-trained", "warn-only"])
    assert len(li.docs()) == 1
    # a changed spec is a new fingerprint: its drift is told
    workspace.write("m.yaml", model_with("drift: warn", epochs=120))
    workspace.run("apply", env=notify_env(workspace, li.url))
    docs = li.wait_for(2)
    assert docs[1]["fingerprint"] != doc["fingerprint"]
    assert not train_calls(workspace)


def test_plan_sends_nothing(workspace: Workspace, listen: Callable[..., Receiver]) -> None:
    """`plan` writes nothing anywhere, notifications included (it may run on a pull request)."""
    li = listen()
    workspace.write("m.yaml", model_with("drift: warn"))
    code, _ = workspace.plan_json(env=notify_env(workspace, li.url))
    assert code == 0
    assert stored(workspace) == [] and li.docs() == []


@pytest.mark.parametrize("wait", [False, True])
def test_an_apply_refused_by_max_trainings_is_told_as_held(
    workspace: Workspace, listen: Callable[..., Receiver], wait: bool
) -> None:
    li = listen()
    flags = ["--wait"] if wait else []
    workspace.write("m.yaml", roboflow_model())
    workspace.write(
        "w.yaml", roboflow_model("forklift-detector", project="forklifts", version=2, model_type="yolov11s")
    )
    env = notify_env(workspace, li.url)
    for _ in range(2):
        res = workspace.run("apply", *flags, "--max-trainings", "1", env=env)
        assert res.code == 1 and not train_calls(workspace), res.output
    docs = li.wait_for(2)
    assert sorted(li.events()) == [("forklift-detector", "held"), (MODEL, "held")]
    refusal = "this plan would start 2 trainings, more than --max-trainings 1; nothing was started"
    for doc in docs:
        assert doc["reasons"][-1] == {"code": "max-trainings", "detail": refusal}
        assert doc["reasons"][0]["code"] == "never-trained"
    # allowed: the trainings start and are told; the refusal is not told again
    res = workspace.run("apply", *flags, "--max-trainings", "2", env=env)
    assert res.code == 0, res.output
    li.wait_for(6 if wait else 4)
    told = ["held", "held", "training-started", "training-started"]
    assert sorted(e for _, e in li.events()) == told + (["training-succeeded"] * 2 if wait else [])


def test_a_provider_budget_hold_in_an_apply_is_told_as_held(
    workspace: Workspace, listen: Callable[..., Receiver]
) -> None:
    li = listen()
    workspace.write(
        "p.yaml",
        "apiVersion: reconciler/v1\nkind: Provider\nmetadata: {name: roboflow}\n"
        "spec: {type: roboflow, max_trainings_per_day: 1}\n",
    )
    workspace.write("m.yaml", roboflow_model())
    workspace.write(
        "w.yaml", roboflow_model("forklift-detector", project="forklifts", version=2, model_type="yolov11s")
    )
    res = workspace.run("apply", env=notify_env(workspace, li.url))
    assert res.code == 0, res.output
    li.wait_for(2)
    # the budget goes in name order
    assert sorted(li.events()) == [("forklift-detector", "training-started"), (MODEL, "held")]
    held = next(d for d in li.docs() if d["event"] == "held")
    assert held["reasons"][-1]["code"] == "budget"


def test_a_budget_hold_is_told_as_held(tmp_path: Path) -> None:
    """Any model whose plan holds with a `budget` reason (the spend guards) is told as `held`."""
    from reconciler.spec import load_manifests

    (tmp_path / "m.yaml").write_text(roboflow_model())
    model = load_manifests([str(tmp_path)]).models[MODEL]
    now = datetime(2026, 1, 1, tzinfo=UTC)
    budget = Reason("budget", "20 trainings this hour, --max-trainings-per-hour is 20")
    plans = [
        ModelPlan(model, Action.HOLD, [Reason("spec-changed", "epochs: 100 -> 120"), budget]),
        ModelPlan(model, Action.HOLD, [Reason("backoff", "next attempt after ...")]),
        ModelPlan(model, Action.TRAIN, [Reason("never-trained")]),
    ]
    (held,) = hold_notices(plans, "abc123", now)
    assert (held.event, held.model, held.provider, held.commit) == ("held", MODEL, "roboflow", "abc123")
    assert held.reasons[-1] == ("budget", budget.detail)
    body = body_of(held)
    assert body["text"] == (
        "reconciler: training held for hardhat-detector (roboflow) - spec-changed: epochs: 100 -&gt; 120; "
        "budget: 20 trainings this hour, --max-trainings-per-hour is 20 [commit abc123]"
    )
    assert body["time"] == "2026-01-01T00:00:00Z"


# ---------------------------------------------------------------- secrets


def test_no_key_value_in_any_body(workspace: Workspace, listen: Callable[..., Receiver]) -> None:
    li = listen()
    keys = secrets(workspace)
    workspace.write("m.yaml", roboflow_model())
    # the provider quotes the key in its failure message: the body carries it masked
    sim(workspace, "roboflow", RoboflowSimulator).fail_next_trainings(1, f"bad credentials {keys[0]} for this run")
    workspace.run("apply", "--wait", env=notify_env(workspace, li.url))
    li.wait_for(2)
    raw = b"".join(li.bodies).decode()
    assert "bad credentials *** for this run" in raw
    assert not any(k in raw for k in keys)


def test_the_url_is_never_shown(workspace: Workspace, listen: Callable[..., Receiver]) -> None:
    li = listen(status=500)
    workspace.write("m.yaml", roboflow_model())
    env = notify_env(workspace, li.url)
    res = workspace.run("-vv", "apply", "--wait", env=env)
    assert res.code == 0, res.output
    li.wait_for(1)
    status = workspace.run("status", "--output", "json", env=env)
    history = workspace.run("history", MODEL, "--output", "json", env=env)
    for out in (res.output, status.output, history.output):
        assert TOKEN not in out and "127.0.0.1:" + li.url.split(":")[2].split("/")[0] not in out
    # the endpoint answered 500: told in a warning that names no URL
    assert "not delivered" in res.stderr


@pytest.mark.parametrize(
    "url",
    [
        f"http://hooks.example.com/services/{TOKEN}",
        f"ftp://hooks.example.com/{TOKEN}",
        f"https://user:{TOKEN}@hooks.example.com/x",
        f"hooks.slack.com/services/{TOKEN}",
    ],
)
def test_a_bad_url_stops_apply_naming_the_variable_not_the_url(workspace: Workspace, url: str) -> None:
    workspace.write("m.yaml", roboflow_model())
    res = workspace.run("apply", env=notify_env(workspace, f"https://hooks.example.com/ok,{url}"))
    assert res.code == 1
    assert "RECONCILER_NOTIFY_URL: URL 2 of 2" in res.stderr
    assert TOKEN not in res.output and "hooks.example.com" not in res.output
    assert not train_calls(workspace)


def test_a_bad_url_stops_the_daemon_at_start(workspace: Workspace, daemons: list[DaemonProcess]) -> None:
    workspace.write("m.yaml", roboflow_model())
    d = DaemonProcess(workspace, env=notify_env(workspace, f"http://hooks.example.com/{TOKEN}"))
    daemons.append(d)
    assert d.proc.wait(timeout=30) == 1
    assert "RECONCILER_NOTIFY_URL: the URL uses plain http to a non-local host" in d.stderr()
    assert TOKEN not in d.stderr() and not train_calls(workspace)


def test_a_key_is_masked_before_the_text_is_cut_or_escaped() -> None:
    key = "k<&>" + "x" * 30
    long = Notice("held", "m", "roboflow", (("budget", "y" * 535 + key),), "fp", None, datetime(2026, 1, 1, tzinfo=UTC))
    body = body_of(long, lambda t: t.replace(key, "***"))
    assert "k&lt;&amp;&gt;" not in body["text"] and "kx" not in body["text"] and "xxxxx" not in body["text"]
    assert body["reasons"][0]["detail"].endswith("y***")


def test_the_url_rule_is_the_providers() -> None:
    assert endpoint_url_problem("https://hooks.slack.com/services/T/B/x") is None
    for loopback in ("http://127.0.0.1:9/x", "http://localhost:8080/hook", "http://[::1]:80/"):
        assert endpoint_url_problem(loopback) is None
    for bad in ("http://10.0.0.1/x", "http://example.com/x", "https://a@b.example/", "https://x.example/#f", "x"):
        problem = endpoint_url_problem(bad)
        assert problem and bad not in problem


# ---------------------------------------------------------------- a failing endpoint never delays


@pytest.mark.parametrize("endpoint", ["down", "slow", "500"])
def test_a_dead_slow_or_failing_endpoint_leaves_trainings_unaffected(
    workspace: Workspace, listen: Callable[..., Receiver], endpoint: str
) -> None:
    if endpoint == "down":
        url = f"http://127.0.0.1:{free_port()}/{TOKEN}"
    else:
        url = listen(status=500 if endpoint == "500" else 200, delay=10.0 if endpoint == "slow" else 0.0).url
    workspace.write("m.yaml", roboflow_model())
    started = time.monotonic()
    res = workspace.run("apply", "--wait", env=notify_env(workspace, url))
    elapsed = time.monotonic() - started
    assert res.code == 0, res.output
    assert workspace.story(MODEL)[-1] == "succeeded"
    # the sandbox trains in 0.4 s; undelivered notifications get 2 s at exit (a slow endpoint
    # would hold each POST 10 s): a generous bound (benchmarks/notify.py measures the figure)
    assert elapsed < 8.0, elapsed
    assert TOKEN not in res.output
    if endpoint != "slow":
        assert "not delivered" in res.stderr


# ---------------------------------------------------------------- across writers


def test_no_repeat_across_a_daemon_and_an_apply(
    workspace: Workspace, listen: Callable[..., Receiver], daemons: list[DaemonProcess]
) -> None:
    li = listen()
    workspace.write("m.yaml", roboflow_model())
    workspace.write(
        "w.yaml",
        model_with("drift: warn", name="forklift-detector", project="forklifts", version=2, model_type="yolov11s"),
    )
    env = notify_env(workspace, li.url, RECONCILER_POLL_INTERVAL="0.2s")
    d = DaemonProcess(workspace, ("--resync", "1h"), env=env)
    daemons.append(d)
    d.wait_ready()
    d.wait_in_sync(MODEL)
    li.wait_for(3)
    # the apply sees the same drift held and the same training done: nothing is told again
    res = workspace.run("apply", env=env)
    assert res.code == 0, res.output
    metrics = wait_until(
        lambda: m if (m := d.get("/metrics").text).count('result="sent"} 1.0') == 3 else None, 10, "the metrics"
    )
    assert sorted(li.events()) == [
        ("forklift-detector", "drift-detected"),
        (MODEL, "training-started"),
        (MODEL, "training-succeeded"),
    ]
    assert 'reconciler_notifications_total{event="training-started",result="sent"} 1.0' in metrics
    assert 'reconciler_notifications_total{event="drift-detected",result="sent"} 1.0' in metrics
    d.terminate()
    assert TOKEN not in d.stderr() + d.stdout()


async def test_claims_are_compare_and_set_on_both_stores(tmp_path: Path, postgres_url: str) -> None:
    """Two writers claiming the same key at once: exactly one sends; the result is recorded."""
    for url in (f"sqlite:///{tmp_path / 'state.db'}", postgres_url):
        a, b = await open_state(url), await open_state(url)
        try:
            body = {"format_version": 1, "event": "held"}
            won = await asyncio.gather(
                *(s.claim_notification("m", "fp", "held", body) for s in (a, b, a, b)), return_exceptions=False
            )
            assert sorted(won) == [False, False, False, True], url
            assert await a.claim_notification("m", "fp2", "held", body)  # another fingerprint: its own key
            await b.notification_result("m", "fp", "held", "failed", "endpoint 1 of 1: HTTP 500 after 3 attempt(s)")
            rows = await a.notifications("m")
            assert [(r.fingerprint, r.result, r.body) for r in rows] == [
                ("fp", "failed", body),
                ("fp2", "pending", body),
            ]
            assert rows[0].finished_at is not None and rows[1].finished_at is None
        finally:
            await a.close()
            await b.close()


# ---------------------------------------------------------------- the notifier's queue and retries


def _notice(model: str, event: str = "held") -> Notice:
    return Notice(event, model, "roboflow", (("budget", "x"),), "fp", None, datetime(2026, 1, 1, tzinfo=UTC))


async def test_retries_back_off_through_the_sleep_seam(tmp_path: Path) -> None:
    state = await open_state(f"sqlite:///{tmp_path / 'state.db'}")
    answers = [PostOutcome(500, "HTTP 500"), PostOutcome(None, "ConnectError"), PostOutcome(204)]
    slept: list[float] = []
    counted: list[tuple[str, str]] = []

    async def post(url: str, body: Any, *, timeout: float) -> PostOutcome:
        return answers.pop(0)

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    n = Notifier(["https://hooks.example/x"], state, sleep=sleep, post=post, on_result=lambda *a: counted.append(a))
    try:
        n.start().emit(_notice("m"))
        assert await n.drain(5)
        assert slept == [1.0, 2.0] and counted == [("held", "sent")]
        assert [(r.result, r.detail) for r in await state.notifications()] == [("sent", "")]
    finally:
        await n.aclose()
        await state.close()


async def test_a_full_queue_drops_the_oldest_counted_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = await open_state(f"sqlite:///{tmp_path / 'state.db'}")
    release, entered = asyncio.Event(), asyncio.Event()
    sent: list[str] = []
    counted: list[tuple[str, str]] = []

    async def post(url: str, body: Any, *, timeout: float) -> PostOutcome:
        entered.set()
        await release.wait()
        sent.append(body["model"])
        return PostOutcome(200)

    n = Notifier(["https://hooks.example/x"], state, post=post, queue_size=2, on_result=lambda *a: counted.append(a))
    try:
        n.start().emit(_notice("a"))
        await asyncio.wait_for(entered.wait(), 5)  # the worker took "a" and waits on the endpoint
        for name in ("b", "c", "d"):
            n.emit(_notice(name))
        n.emit(_notice("d"))  # the same decision again: not queued twice
        assert counted == [("held", "dropped")]
        assert "dropped the oldest, held of b" in caplog.text
        assert not await n.drain(0.05)  # still blocked: given up with a warning
        assert "not delivered within 0.05s at exit" in caplog.text
        release.set()
        assert await n.drain(5)
        assert sent == ["a", "c", "d"]
    finally:
        await n.aclose()
        await state.close()


def test_events_are_the_contracts() -> None:
    assert EVENTS == (
        "training-started",
        "training-succeeded",
        "training-failed",
        "retries-exhausted",
        "drift-detected",
        "held",
    )
