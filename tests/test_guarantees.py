"""Guarantees under faults: retries, isolation, hostile values, no secret leaked.

(Crashes, locking and the durability of the state are in test_guarantees_crash.py; the manifest
fuzzing in test_fuzz_manifests.py. docs/guarantees.md maps every fault to its test.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import httpx
import pytest
import stamina
from helpers import (
    HAS_DAEMON,
    PROVIDERS,
    QUICKSTART,
    TRAIN_METHOD,
    DaemonProcess,
    Workspace,
    copy_quickstart,
    roboflow_model,
    train_calls,
    wait_until,
)
from helpers import free_port as closed_port

from reconciler.engine import Engine
from reconciler.errors import (
    BadResponseError,
    ConfigError,
    InvalidRequestError,
    ProviderError,
    RequestNotSentError,
    TemporaryProviderError,
)
from reconciler.plan import Action
from reconciler.providers.base import path_segment
from reconciler.providers.http import HttpClient
from reconciler.providers.policy import Auth, RetryPolicy
from reconciler.providers.wire import secret_forms
from reconciler.sandbox.faults import Fault
from reconciler.sandbox.server import Sandbox
from reconciler.spec import load_manifests
from reconciler.state import open_state


@contextlib.asynccontextmanager
async def engine_for(sb: Sandbox, specs: Path, state_url: str) -> AsyncIterator[Engine]:
    """An in-process engine pointed at the sandbox's simulators."""
    manifests = load_manifests([specs])
    state = await open_state(state_url)
    endpoints = {t: (sb.base_url(t), sb.sim(t).api_key) for t in sb.served}
    engine = Engine(manifests, state, env={}, endpoints=endpoints)
    try:
        yield engine
    finally:
        await engine.aclose()
        await state.close()


@pytest.fixture
def fast_backoff() -> Iterator[None]:
    """Retries without backoff waits (stamina's test mode), each client's attempts kept."""
    with stamina.set_testing(True, attempts=sys.maxsize, cap=True):
        yield


# ====================================================================== retries


async def test_backoff_is_exponential_capped_and_jittered() -> None:
    policy = RetryPolicy(base=1.0, cap=8.0, jitter=0.5, max_retry_after=60.0)
    for n, expected in enumerate((1.0, 2.0, 4.0)):
        samples = [policy.delay(n, None) for _ in range(200)]
        assert all(expected - 0.5 <= d <= expected + 0.5 for d in samples), (n, min(samples), max(samples))
        assert len(set(samples)) > 150  # jittered: clients retrying together spread out
    for n in (3, 4, 10, 100, 10_000):
        samples = [policy.delay(n, None) for _ in range(200)]
        assert all(7.5 <= d <= 8.0 for d in samples), (n, max(samples))  # capped, still jittered
        assert len(set(samples)) > 150
    # Retry-After is honoured exactly (no jitter), up to a ceiling
    assert policy.delay(0, 3.0) == 3.0
    assert policy.delay(5, 0.0) == 0.0
    assert policy.delay(0, 3600.0) == 60.0
    # tests retry without waiting (RECONCILER_BACKOFF_SCALE=0.01 before): what the client sleeps
    # in stamina's test mode, the same bound
    slept: list[float] = []

    async def record(seconds: float) -> None:
        slept.append(seconds)

    with stamina.set_testing(True, attempts=sys.maxsize, cap=True):
        http = client(Scripted(503, 503, 503, 200), sleep=record, retry=policy)
        assert (await http.request("GET", "/x")).status == 200
        await http.aclose()
    assert len(slept) == 3 and max(slept) <= 0.08, slept


def test_retry_after_one_second_is_honoured(workspace: Workspace) -> None:
    ws = workspace
    copy_quickstart(ws.specs, ("roboflow",))
    ws.sandbox.inject(Fault(provider="roboflow", method="GET", status=429, retry_after=1, times=1))
    res = ws.run("plan", backoff=True)  # real waits
    assert res.code == 2, res.output
    first, second = ws.sandbox.requests("roboflow")[:2]
    assert (first.status, second.status) == (429, 200)
    assert 0.95 <= second.at - first.at < 2.0, second.at - first.at


def test_reads_give_up_after_the_retry_budget_and_say_so(workspace: Workspace) -> None:
    ws = workspace
    copy_quickstart(ws.specs, ("roboflow",))
    ws.sandbox.inject(Fault(provider="roboflow", method="GET", status=503, times=-1))
    res = ws.run("plan", "--output", "json")
    assert res.code == 1
    (entry,) = res.json()["models"]
    assert entry["action"] == "error" and entry["reasons"][0]["code"] == "provider-unavailable"
    assert len(ws.sandbox.requests("roboflow")) == RetryPolicy().attempts  # 1 try + 3 retries


@pytest.mark.parametrize(
    ("status", "code"), [(401, "auth-failed"), (403, "auth-failed"), (404, "not-found"), (400, "provider-error")]
)
def test_permanent_errors_are_reported_never_retried(workspace: Workspace, status: int, code: str) -> None:
    ws = workspace
    copy_quickstart(ws.specs, ("roboflow",))
    ws.sandbox.inject(Fault(provider="roboflow", method="GET", status=status, times=-1))
    res = ws.run("plan", "--output", "json")
    assert res.code == 1
    (entry,) = res.json()["models"]
    assert entry["action"] == "error" and entry["reasons"][0]["code"] == code
    assert len(ws.sandbox.requests("roboflow")) == 1  # exactly one request: no retry


class Scripted(httpx.AsyncBaseTransport):
    """A transport that plays a script: an exception class to raise, or a status to answer."""

    def __init__(self, *steps: type[Exception] | int) -> None:
        self.steps = list(steps)
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = self.steps.pop(0)
        if isinstance(step, int):
            return httpx.Response(step, json={"message": "ok"})
        raise step(f"scripted {step.__name__} for {request.url}", request=request)  # type: ignore[call-arg]


def client(transport: httpx.AsyncBaseTransport, key: str = "k3y-value", **kw: Any) -> HttpClient:
    return HttpClient(
        "roboflow",
        "https://api.example.com",
        api_key=key,
        auth=Auth(query_param="api_key"),
        requests_per_second=0,
        transport=transport,
        **kw,
    )


async def test_a_train_post_is_resent_only_when_it_provably_never_left(fast_backoff: None) -> None:
    # connection refused / connect timeout: nothing was sent, so the POST may be sent again
    refused = Scripted(httpx.ConnectError, httpx.ConnectTimeout, 200)
    http = client(refused)
    resp = await http.request("POST", "/ws/proj/3/train", json_body={}, idempotent=False)
    assert resp.status == 200 and len(refused.requests) == 3
    await http.aclose()
    # anything after sending: reported once, settled later by observing, never resent
    for exc in (httpx.ReadTimeout, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteTimeout):
        after = Scripted(exc, 200)
        http = client(after)
        with pytest.raises(TemporaryProviderError) as info:
            await http.request("POST", "/ws/proj/3/train", json_body={}, idempotent=False)
        assert not isinstance(info.value, RequestNotSentError)
        assert "settled by observing" in str(info.value)
        assert len(after.requests) == 1, exc
        await http.aclose()
    # a 5xx or 429 answer to a train call is not resent either (the provider may have acted)
    for status in (500, 503, 429):
        answered = Scripted(status, 200)
        http = client(answered)
        with pytest.raises(TemporaryProviderError):
            await http.request("POST", "/ws/proj/3/train", json_body={}, idempotent=False)
        assert len(answered.requests) == 1
        await http.aclose()
    # the same failures on a read are retried
    reads = Scripted(httpx.ReadTimeout, httpx.RemoteProtocolError, 503, 200)
    http = client(reads)
    assert (await http.request("GET", "/ws/proj/3")).status == 200
    assert len(reads.requests) == 4
    await http.aclose()


async def test_connection_refused_train_call_is_not_started_and_planned_again(
    sandbox: Sandbox, tmp_path: Path, fast_backoff: None
) -> None:
    specs = tmp_path / "specs"
    copy_quickstart(specs, ("roboflow",))
    url = f"sqlite:///{tmp_path / 'state.db'}"
    async with engine_for(sandbox, specs, url) as engine:
        plans = await engine.plan(list(engine.manifests.models.values()))
        assert [p.action for p in plans] == [Action.TRAIN]
    port = sandbox.port
    sandbox.stop()  # the provider went away between plan and train: connections are refused
    try:
        async with engine_for(sandbox, specs, url) as engine:
            result = await engine.apply(plans)
            events = [e.event for e in await engine.state.history("hardhat-detector")]
            assert await engine.state.get("hardhat-detector") is None  # the intent is withdrawn
    finally:
        sandbox.port = port
        sandbox.start()
    outcome = result.outcomes["hardhat-detector"]
    assert not outcome.started and not outcome.ambiguous and isinstance(outcome.error, RequestNotSentError)
    assert events == ["intent", "not-started"]
    async with engine_for(sandbox, specs, url) as engine:
        (again,) = await engine.plan(list(engine.manifests.models.values()))
    assert again.action is Action.TRAIN  # no hold: the call provably never left
    assert train_calls(sandbox, "roboflow") == []


def test_lost_answer_to_a_train_call_is_settled_by_observing_not_resent(workspace: Workspace) -> None:
    ws = workspace
    copy_quickstart(ws.specs, ("roboflow",))
    ws.sandbox.inject(Fault(provider="roboflow", method="POST", path=r"/train$", drop=True, after_handling=True))
    first = ws.run("apply", "--output", "json")
    assert first.code == 1
    outcome = first.json()["outcomes"]["hardhat-detector"]
    assert outcome["started"] is False and outcome["ambiguous"] is True
    second = ws.run("apply", "--wait")
    assert second.code == 0, second.output
    assert len(train_calls(ws.sandbox, "roboflow")) == 1
    assert len(ws.sandbox.sim("roboflow").trainings("acme", "hardhats", 3)) == 1  # type: ignore[attr-defined]
    events = [e["event"] for e in ws.run("history", "hardhat-detector", "--output", "json").json()["events"]]
    assert events == ["intent", "unconfirmed", "settled", "succeeded"]


def test_a_train_call_dropped_before_the_provider_saw_it_is_sent_again_after_the_window(
    workspace: Workspace,
) -> None:
    ws = workspace
    copy_quickstart(ws.specs, ("roboflow",))
    env = ws.env(RECONCILER_HTTP_TIMEOUT="0.5s")  # settle window: 1 s
    ws.sandbox.inject(Fault(provider="roboflow", method="POST", path=r"/train$", drop=True))
    assert ws.run("apply", env=env).code == 1
    held = ws.run("plan", "--output", "json", env=env).json()["models"][0]
    assert held["action"] == "hold" and held["reasons"][0]["code"] == "unconfirmed-intent"

    def window_over() -> bool:
        (entry,) = ws.plan_json(env=env)[1]["models"]
        assert entry["action"] in ("hold", "train"), entry  # held, then planned again; never sent meanwhile
        return bool(entry["action"] == "train")

    wait_until(window_over, 10, "the settle window to pass", interval=0.1)
    assert [r.status for r in train_calls(ws.sandbox, "roboflow")] == [0]
    again = ws.run("apply", "--wait", env=env)
    assert again.code == 0, again.output
    assert len(ws.sandbox.sim("roboflow").trainings("acme", "hardhats", 3)) == 1  # type: ignore[attr-defined]
    assert [r.status for r in train_calls(ws.sandbox, "roboflow")] == [0, 200]  # dropped, then sent


# ====================================================================== isolation

SICK = ["down", "slow", "html", "truncated", "wrong-type", "string-body"]


@pytest.mark.parametrize("sickness", SICK)
def test_a_sick_provider_affects_only_its_own_models(workspace: Workspace, sickness: str) -> None:
    ws = workspace
    copy_quickstart(ws.specs, ("roboflow", "rebase"))
    env = ws.env(RECONCILER_HTTP_TIMEOUT="0.3s")
    garbage: dict[str, bytes | str | dict[str, Any]] = {
        "html": b"<html><body><h1>502 Bad Gateway</h1></body></html>",
        "truncated": b'{"version": {"id": "acme/hardhats/3", "tra',
        "wrong-type": {"version": []},
        "string-body": '"an object was expected"',
    }
    if sickness == "down":
        env["RECONCILER_ROBOFLOW_BASE_URL"] = f"http://127.0.0.1:{closed_port()}/roboflow"
    elif sickness == "slow":
        ws.sandbox.inject(Fault(provider="roboflow", delay=1.0, times=-1))
    else:
        ws.sandbox.inject(Fault(provider="roboflow", status=200, body=garbage[sickness], times=-1))
    plan = ws.run("plan", "--output", "json", env=env)
    assert plan.code == 1, plan.output
    by_name = {m["name"]: m for m in plan.json()["models"]}
    sick = by_name["hardhat-detector"]
    assert sick["action"] == "error"
    expected = "provider-unavailable" if sickness in ("down", "slow") else "bad-response"
    assert sick["reasons"][0]["code"] == expected, sick
    for name in QUICKSTART["rebase"]:
        assert by_name[name]["action"] == "train"
    applied = ws.run("apply", env=env)
    assert applied.code == 1
    assert "Traceback" not in plan.output + applied.output
    assert "hardhat-detector" in applied.output
    assert len(train_calls(ws.sandbox, "rebase")) == 1  # the healthy provider's models trained
    assert train_calls(ws.sandbox, "roboflow") == []


def _nodes(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _nodes(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value[:2]):
            yield from _nodes(v, (*path, i))


def _get(value: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        value = value[step]
    return value


def _replace(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = _replace(value[path[0]], path[1:], new)
    return copy


WRONG: tuple[Any, ...] = (None, "x", 7, -1.5, True, [], {}, [{}], "2024-13-45T99:99Z")
WHOLE_BODIES = (b"<html>oops</html>", b'{"truncated": [1, 2', b"null", b"[]", b"{}", b'"str"', b"42", b"\xff\xfe")


async def _capture_answers(sandbox: Sandbox) -> dict[tuple[str, str], Any]:
    """The JSON answers to the reads just logged, fetched again exactly as the adapters sent them."""
    answers: dict[tuple[str, str], Any] = {}
    async with httpx.AsyncClient() as raw:
        for r in sandbox.requests():
            if r.method == "GET" and (r.provider, r.path) not in answers:
                got = await raw.get(sandbox.url + r.raw_path, headers=r.headers)
                answers[(r.provider, r.path)] = got.json()
    sandbox.clear_requests()
    return answers


async def _mutate_each_answer(
    engine: Engine, sandbox: Sandbox, answers: dict[tuple[str, str], Any], rng: random.Random
) -> int:
    every = list(engine.manifests.models.values())
    baseline = {p.name: p.action for p in await engine.plan(every)}
    tried = 0
    for (provider, path), body in sorted(answers.items(), key=lambda kv: kv[0]):
        # the provider's models, and one of another provider as a witness of isolation
        models = [m for m in every if m.provider_type == provider]
        models.append(next(m for m in every if m.provider_type != provider))
        mutations: list[bytes] = list(WHOLE_BODIES)
        # every field once, each time with a wrong value of another type than the real one
        for node in list(_nodes(body))[1:]:
            real = _get(body, node)
            new = rng.choice([w for w in WRONG if type(w) is not type(real)])
            mutations.append(json.dumps(_replace(body, node, new)).encode())
        for mutated in mutations:
            sandbox.clear_faults()
            sandbox.inject(
                Fault(
                    provider=provider,
                    method="GET",
                    path="^" + re.escape(path) + "$",
                    status=200,
                    body=mutated,
                    times=-1,
                )
            )
            plans = {p.name: p for p in await engine.plan(models)}
            tried += 1
            for name, p in plans.items():
                if p.model.provider_type != provider:
                    assert p.action is baseline[name], (provider, path, mutated[:200], name)
                elif p.action is Action.ERROR:
                    assert isinstance(p.error, ProviderError)
                    assert p.reasons[0].code in ("bad-response", "not-found", "provider-error"), p.reasons
    sandbox.clear_faults()
    return tried


async def test_garbage_in_any_field_of_any_answer_is_a_per_model_error(
    sandbox: Sandbox, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every read answer of every provider, mutated field by field into wrong types, in three
    states (never trained, training, trained): no mutation may raise out of `plan`, log a
    traceback, or change another provider's models."""
    specs = tmp_path / "specs"
    copy_quickstart(specs)
    url = f"sqlite:///{tmp_path / 'state.db'}"
    rng = random.Random(5)
    for t in sandbox.served:
        sandbox.sim(t).training_seconds = 0.5
    tried = 0
    async with engine_for(sandbox, specs, url) as engine:
        models = list(engine.manifests.models.values())
        sandbox.clear_requests()
        plans = await engine.plan(models)
        assert {p.action for p in plans} == {Action.TRAIN}
        fresh = await _capture_answers(sandbox)
        result = await engine.apply(plans)
        assert all(o.started for o in result.outcomes.values())
        await engine.plan(models)
        running = await _capture_answers(sandbox)
        deadline = time.monotonic() + 20
        while True:  # until every (0.5 s) training ended and is recorded
            await engine.persist_refresh(await engine.plan(models))
            trained = {p.name: p.action for p in await engine.plan(models)}
            if set(trained.values()) == {Action.NONE} or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert set(trained.values()) == {Action.NONE}, trained
        done = await _capture_answers(sandbox)
        assert {p for p, _ in fresh} == {p for p, _ in running} == {p for p, _ in done} == set(PROVIDERS)
        for answers in (fresh, running, done):
            tried += await _mutate_each_answer(engine, sandbox, answers, rng)
    assert tried > 300
    tracebacks = [r for r in caplog.records if r.exc_info and r.levelno >= logging.WARNING]
    assert not tracebacks, [r.getMessage() for r in tracebacks]


async def test_garbage_answers_to_train_calls_never_lose_the_intent(sandbox: Sandbox, tmp_path: Path) -> None:
    specs = tmp_path / "specs"
    copy_quickstart(specs)
    url = f"sqlite:///{tmp_path / 'state.db'}"
    for t in PROVIDERS:
        sandbox.inject(
            Fault(
                provider=t,
                method=TRAIN_METHOD.get(t, "POST"),
                path=r"/train$",
                status=200,
                body=b"<html>",
                after_handling=True,
            )
        )
    async with engine_for(sandbox, specs, url) as engine:
        models = list(engine.manifests.models.values())
        result = await engine.apply(await engine.plan(models))
        for name, outcome in result.outcomes.items():
            # a 2xx is the acknowledgement, whatever its body: recorded as started
            assert outcome.started, (name, outcome)
            events = [e.event for e in await engine.state.history(name)]
            assert events == ["intent", "triggered"], (name, events)
    for t in PROVIDERS:
        assert len(train_calls(sandbox, t)) == 1


# ====================================================================== hostile values

HOSTILE = ["../x?y#z", "..", ".", "%2F..%2Fadmin", "a b/c", "?q=1&api_key=x", "#frag"]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_ids_are_one_encoded_path_segment(workspace: Workspace, value: str) -> None:
    ws = workspace
    ws.write("a.yaml", roboflow_model("hostile", workspace=json.dumps(value), epochs=10))
    res = ws.run("plan", "--output", "json")
    assert res.code == 1  # not found, never another resource
    assert res.json()["models"][0]["reasons"][0]["code"] == "not-found"
    (req,) = ws.sandbox.requests("roboflow")
    path = req.raw_path.partition("?")[0]
    segments = path.split("/")
    assert segments[:2] == ["", "roboflow"] and len(segments) == 5, req.raw_path
    assert segments[2] == path_segment(value) and unquote(segments[2]) == value
    assert set(json.loads(json.dumps(req.query))) == {"api_key", "nocache"}  # no smuggled parameter


def test_path_segment_encodes_everything_that_could_change_a_path() -> None:
    for value in [*HOSTILE, "...", "%", "a/../../b", "\u00e9\u4e2d", "\n", "x" * 300]:
        seg = path_segment(value)
        assert "/" not in seg and "?" not in seg and "#" not in seg and " " not in seg
        assert seg.strip(".") != ""  # never a dot-segment that URL normalisation would remove
        assert unquote(seg) == value
        url = httpx.URL("https://h/base/" + seg + "/end")
        assert url.raw_path.decode().split("/")[2] == seg
    assert path_segment("..") == "%2E%2E" and path_segment(3) == "3"


def test_hostile_ids_of_every_provider_stay_in_their_segment(workspace: Workspace) -> None:
    ws = workspace
    copy_quickstart(ws.specs)
    hostile = "../x?y#z"
    fields = {
        "rebase.yaml": "a923653c-26f1-1b29-955d-ffde5d182276",
        "photogpt.yaml": "018f5f29-7c2b-7b4e-9a8c-4f8b4c2d1e0f",
        "predicthq.yaml": "Oa1D2XvT-IXfFQ_osoTZjQ",
        "lucid.yaml": "shop-recs",
    }
    for name, ident in fields.items():
        if (ws.specs / name).exists():
            path = ws.specs / name
            path.write_text(path.read_text().replace(ident, json.dumps(hostile)))
    res = ws.run("plan", "--output", "json")
    assert "Traceback" not in res.output
    encoded = quote(hostile, safe="")
    for r in ws.sandbox.requests():
        raw_path, _, raw_query = r.raw_path.partition("?")
        assert "../" not in raw_path and "#" not in r.raw_path, r.raw_path
        if hostile in json.dumps(r.query):
            assert encoded in raw_query or quote(hostile, safe="").replace("%20", "+") in raw_query
    touched = {r.provider for r in ws.sandbox.requests() if encoded in r.raw_path}
    assert touched >= {t for t in ("rebase", "photogpt", "predicthq") if t in PROVIDERS}


# ====================================================================== secrets and transport security

SECRETS = {t: f"sk-{t}-S3cr3t/+=&?%-{i}7x9Q" for i, t in enumerate(QUICKSTART)}


def _leaks(text: str | bytes) -> list[str]:
    raw = text if isinstance(text, bytes) else text.encode("utf-8", "replace")
    found = []
    for t, key in SECRETS.items():
        for form in secret_forms(key):
            if form.encode() in raw:
                found.append(f"{t}: {form}")
    return found


def test_no_key_in_output_logs_state_or_daemon_status(tmp_path: Path) -> None:
    sb = Sandbox(tmp_path / "world", training_seconds=0.3, api_keys=dict(SECRETS)).start()
    try:
        ws = Workspace(tmp_path / "project", sb)
        copy_quickstart(ws.specs)
        env = ws.env(RECONCILER_HTTP_TIMEOUT="0.5s")
        assert all(env[f"{t.upper()}_API_KEY"] == SECRETS[t] for t in PROVIDERS)
        outputs = []

        def run(*args: str, environ: dict[str, str] | None = None) -> None:
            res = ws.run(*args, env=environ or env)
            assert "Traceback" not in res.output, res.output
            outputs.append((args, res.stdout + res.stderr))

        run("validate")
        run("-vv", "plan", "--output", "json")
        # providers echoing the key back: in an error body, in a 200 garbage body, in a message
        for t in PROVIDERS:
            sb.inject(Fault(provider=t, method="GET", status=401, body={"error": f"bad key {SECRETS[t]}"}))
        run("-vv", "plan")
        for t in PROVIDERS:
            body = f"<html>your key {SECRETS[t]} and {quote(SECRETS[t], safe='')}</html>"
            sb.inject(Fault(provider=t, method="GET", status=200, body=body, times=-1))
        run("-vv", "status", "--output", "json")
        run("-vv", "apply")
        sb.clear_faults()
        for t in PROVIDERS:
            sb.inject(
                Fault(
                    provider=t,
                    method=TRAIN_METHOD.get(t, "POST"),
                    path=r"/train$",
                    status=500,
                    body={"message": f"internal error for key={SECRETS[t]}", "status": "NOK", "err": SECRETS[t]},
                )
            )
        run("-vv", "apply")
        sb.clear_faults()
        run("-vv", "apply", "--wait")
        run("-vv", "plan")
        run("status")
        for name in [m for t in PROVIDERS for m in QUICKSTART[t]]:
            run("history", name, "--output", "json")
        # a provider that is down: connection errors name the URL, and Roboflow's carries ?api_key=
        down = dict(env, RECONCILER_ROBOFLOW_BASE_URL=f"http://127.0.0.1:{closed_port()}/roboflow")
        run("-vv", "plan", environ=down)
        run("-vv", "apply", environ=down)
        status = _daemon_status(ws, env) if HAS_DAEMON else ""
        for args, text in outputs:
            assert not _leaks(text), (args, _leaks(text), text[-2000:])
        assert not _leaks(status), status
        for db in ws.root.glob("state.db*"):
            assert not _leaks(db.read_bytes()), db
        assert any("error" in text for _, text in outputs)  # the faults above were hit
    finally:
        sb.stop()


def test_an_observation_is_copied_only_to_mask_the_key() -> None:
    """`redacted` masks the key wherever an observation quotes the provider (its texts and the
    training read back) and returns an observation without it as it is: no copy of 10,000."""
    from reconciler.domain import Observation, TrainingStatus
    from reconciler.providers.base import redacted

    def redact(text: str) -> str:
        return text.replace("s3cret", "***")

    clean = Observation(status=TrainingStatus.SUCCEEDED, message="finished", observed_training={"epochs": 3})
    assert redacted(clean, redact) is clean
    for echoed in (
        Observation(status=TrainingStatus.FAILED, message="bad key s3cret", observed_training={"epochs": 3}),
        Observation(status=TrainingStatus.SUCCEEDED, marker="m", observed_training={"model_type": "x-s3cret"}),
    ):
        masked = redacted(echoed, redact)
        assert masked is not echoed and "s3cret" not in repr(masked) and "***" in repr(masked)
        assert masked.observed_training.get("epochs", 3) == 3 and masked.status is echoed.status


def _daemon_status(ws: Workspace, env: dict[str, str]) -> str:
    """GET /status of a running daemon (`-vv`) on the same workspace, and all it logged."""
    d = DaemonProcess(ws, env=env, global_args=("-vv",))
    try:

        def models() -> str | None:
            if d.proc.poll() is not None:
                raise AssertionError(d.stderr()[-2000:])
            try:
                got = d.get("/status")
                return got.text if got.status_code == 200 and got.json().get("models") else None
            except (httpx.HTTPError, ValueError):
                return None

        status = wait_until(models, 20, "the daemon's /status to list the models", interval=0.05)
    finally:
        d.terminate(timeout=30)
        d.kill()
    return status + d.stdout() + d.stderr()


async def test_key_in_an_httpx_exception_url_is_masked(fast_backoff: None) -> None:
    key = "sk/+= &?%secret-1234"
    transport = Scripted(httpx.ConnectError, httpx.ConnectError, httpx.ConnectError, httpx.ConnectError)
    http = client(transport, key=key)
    with pytest.raises(RequestNotSentError) as info:
        await http.request("GET", "/ws/proj/3")
    assert "api_key=" in str(transport.requests[0].url)  # the scripted message quotes the URL with it
    text = str(info.value)
    assert "scripted ConnectError" in text
    assert not any(form in text for form in secret_forms(key)), text
    await http.aclose()
    # the same for a garbage body that quotes the key on a 200 and on an error
    for status in (200, 400):
        body = f"<p>{key} {quote(key, safe='')} {json.dumps(key)}</p>".encode()
        http = client(httpx.MockTransport(lambda r, b=body, s=status: httpx.Response(s, content=b)), key=key)
        with pytest.raises((BadResponseError, InvalidRequestError)) as caught:
            (await http.request("GET", "/x")).json()
        assert not any(form in str(caught.value) for form in secret_forms(key)), str(caught.value)
        await http.aclose()


INSECURE_PROVIDER = """\
apiVersion: reconciler/v1
kind: Provider
metadata: {name: roboflow-prod}
spec:
  type: roboflow
  base_url: URL
EXTRA"""


@pytest.mark.parametrize(
    ("url", "extra", "ok"),
    [
        ("http://api.roboflow.com", "", False),
        ("http://10.0.0.5:8080", "", False),
        ("http://api.roboflow.com", "  allow_insecure_http: true\n", True),
        ("http://127.0.0.1:9", "", True),
        ("http://localhost:9", "", True),
        ("http://[::1]:9", "", True),
        ("https://api.roboflow.com", "", True),
        ("ftp://api.roboflow.com", "", False),
    ],
)
def test_plain_http_only_to_loopback_or_by_opt_in_in_a_manifest(
    workspace: Workspace, url: str, extra: str, ok: bool
) -> None:
    ws = workspace
    path = ws.write("provider.yaml", INSECURE_PROVIDER.replace("URL", url).replace("EXTRA", extra))
    # the operator allows each http(s) origin, so only the plain-http rule is under test here
    res = ws.run("validate", env=ws.env(RECONCILER_ALLOWED_ORIGINS=url if url.startswith("http") else ""))
    assert (res.code == 0) is ok, res.output
    if not ok:
        assert f"{path.relative_to(ws.root)}:6:" in res.stderr or f"{path}:6:" in res.stderr, res.stderr


# hosts that can never answer (.invalid, TEST-NET-1): the opt-in below really tries to connect
@pytest.mark.parametrize("url", ["http://api.roboflow.invalid", "http://192.0.2.10/roboflow"])
def test_plain_http_base_url_from_the_environment_is_refused(workspace: Workspace, url: str) -> None:
    ws = workspace
    copy_quickstart(ws.specs, ("roboflow",))
    res = ws.run("plan", "--output", "json", env=ws.env(RECONCILER_ROBOFLOW_BASE_URL=url))
    assert res.code == 1
    (entry,) = res.json()["models"]
    assert entry["action"] == "error" and "unencrypted" in entry["reasons"][0]["detail"]
    # refused while building the client, so no connection (carrying the key) is ever opened
    no_state: Any = None  # building an adapter never touches the state
    engine = Engine(
        load_manifests([ws.specs]), no_state, env={"RECONCILER_ROBOFLOW_BASE_URL": url, "ROBOFLOW_API_KEY": "k"}
    )
    with pytest.raises(ConfigError, match="unencrypted"):
        engine.adapter("roboflow")
    assert engine._adapters == {}
    # the same plain-http URL is accepted when a Provider manifest opts in
    ws.write(
        "roboflow.yaml",
        (ws.specs / "roboflow.yaml").read_text().replace("requests_per_second: 1000", "allow_insecure_http: true"),
    )
    opted = ws.run(
        "plan", "--output", "json", env=ws.env(RECONCILER_ROBOFLOW_BASE_URL=url, RECONCILER_HTTP_TIMEOUT="0.2s")
    )
    (entry,) = opted.json()["models"]
    assert entry["reasons"][0]["code"] == "provider-unavailable", entry  # it did try: nothing listens there


def test_keys_are_never_read_from_manifests(workspace: Workspace) -> None:
    ws = workspace
    ws.write(
        "p.yaml",
        "apiVersion: reconciler/v1\nkind: Provider\nmetadata: {name: rf}\nspec: {type: roboflow, api_key: sk-123}\n",
    )
    res = ws.run("validate")
    assert res.code == 1 and "p.yaml:4:" in res.stderr and "unknown field 'spec.api_key'" in res.stderr
    ws.write(
        "p.yaml",
        "apiVersion: reconciler/v1\nkind: Provider\nmetadata: {name: rf}\nspec: {type: roboflow, api_key_env: sk-123}\n",
    )
    res = ws.run("validate")
    assert res.code == 1 and "never the key" in res.stderr and "sk-123" in res.stderr  # the value the user wrote


def test_a_refused_train_call_does_not_stop_another_models(workspace: Workspace) -> None:
    """Isolation within one provider: one model's refused train call, the other still trains."""
    ws = workspace
    ws.write("m0.yaml", roboflow_model("m0", epochs=10))
    ws.write("m1.yaml", roboflow_model("m1", project="forklifts", version=2, epochs=10))
    ws.sandbox.inject(
        Fault(provider="roboflow", method="POST", path=r"hardhats/3/train$", status=422, body={"error": "bad"})
    )
    res = ws.run("apply", "--output", "json")
    assert res.code == 1
    outcomes = res.json()["outcomes"]
    assert outcomes["m0"]["started"] is False and outcomes["m1"]["started"] is True
    events = [e["event"] for e in ws.run("history", "m0", "--output", "json").json()["events"]]
    assert events == ["intent", "refused"]


def test_a_failure_while_preparing_is_not_started_never_held(workspace: Workspace) -> None:
    """A 503 on a PhotoGPT image upload comes before the train call: nothing can have started, so
    the intent is withdrawn at once instead of being held for the settle window."""
    ws = workspace
    copy_quickstart(ws.specs, ("photogpt",))
    ws.sandbox.inject(Fault(provider="photogpt", method="POST", path=r"/images/upload$", status=503, times=-1))
    res = ws.run("apply", "--output", "json")
    assert res.code == 1
    outcome = res.json()["outcomes"]["ada-portrait"]
    assert outcome["started"] is False and outcome["ambiguous"] is False
    events = [e["event"] for e in ws.run("history", "ada-portrait", "--output", "json").json()["events"]]
    assert events == ["intent", "not-started"]
    assert train_calls(ws.sandbox, "photogpt") == []
    ws.sandbox.clear_faults()
    again = ws.run("plan", "--output", "json").json()["models"][0]
    assert again["action"] == "train", again  # not held as an unconfirmed intent
