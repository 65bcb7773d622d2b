"""The injected seams (reconciler.seams): each test fails when the engine or the HTTP client reads
the wall clock, sleeps for real, opens a connection or resends a train call on its own."""

from __future__ import annotations

import asyncio
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ROOT

from reconciler.domain import DesiredModel, ModelRecord, RecordStatus, TrainingStatus
from reconciler.engine import Engine
from reconciler.errors import RequestNotSentError, TemporaryProviderError
from reconciler.plan import Action
from reconciler.providers.base import ProviderContext
from reconciler.providers.http import HttpClient
from reconciler.providers.photogpt.adapter import PhotoGPTAdapter
from reconciler.providers.photogpt.schema import PhotoGPTModel, PhotoGPTTraining
from reconciler.providers.policy import Auth
from reconciler.providers.predicthq.adapter import PredictHQAdapter
from reconciler.report.views import plan_entry
from reconciler.seams import Seams
from reconciler.spec import default_provider, load_manifests
from reconciler.state import open_state

ROBOFLOW = """\
apiVersion: reconciler/v1
kind: TrainedModel
metadata: {name: hardhats}
spec:
  provider: roboflow
  model: {workspace: acme, project: hardhats}
  training: {version: 3, model_type: rfdetr-nano, epochs: 10}
"""

PHOTOGPT = """\
apiVersion: reconciler/v1
kind: TrainedModel
metadata: {name: ada}
spec:
  provider: photogpt
  model: {model_id: m-1}
  training: {input_images: faces/*.png}
"""


class Recorder:
    """An injected sleep that records what it was asked to wait, and returns at once."""

    def __init__(self) -> None:
        self.slept: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.slept.append(seconds)


def client(handler: Any, sleep: Recorder, **kw: Any) -> HttpClient:
    return HttpClient(
        "predicthq",
        "https://api.predicthq.example",
        api_key="k3y",
        auth=Auth(header="Authorization", prefix="Bearer "),
        requests_per_second=0,
        transport=httpx.MockTransport(handler),
        sleep=sleep,
        **kw,
    )


async def test_an_engine_given_a_transport_plans_without_any_network(tmp_path: Path) -> None:
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "m.yaml").write_text(ROBOFLOW)
    seen: list[httpx.Request] = []
    observed: list[tuple[str, str, str]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(404, json={"error": "project not found"})

    seams = Seams(
        transport=httpx.MockTransport(answer),
        request_observers=(lambda provider, method, outcome, _seconds: observed.append((provider, method, outcome)),),
    )
    state = await open_state(f"sqlite:///{tmp_path / 'state.db'}")
    # the real public host: a connection there would fail in this sandboxed test run
    engine = Engine(load_manifests([tmp_path / "specs"]), state, env={"ROBOFLOW_API_KEY": "k"}, seams=seams)
    try:
        (plan,) = await engine.plan(list(engine.manifests.models.values()))
    finally:
        await engine.aclose()
        await state.close()
    assert plan.action is Action.ERROR and plan.reasons[0].code == "not-found", plan_entry(plan)
    assert seen and all(r.url.host == "api.roboflow.com" for r in seen)
    assert observed == [("roboflow", "GET", "404")] * len(seen)


async def test_retry_after_and_the_retry_budget_are_waited_through_the_injected_sleep() -> None:
    # Retry-After: 1 on a read -> the client sleeps exactly 1.0 s (recorded, not waited)
    answers = [httpx.Response(429, headers={"Retry-After": "1"}, json={"error": "slow down"}), httpx.Response(200)]
    sleep = Recorder()
    http = client(lambda r: answers.pop(0), sleep, retry=PredictHQAdapter.retry)
    started = time.monotonic()
    assert (await http.request("GET", "/v1/models/x")).status == 200
    assert sleep.slept == [1.0]
    await http.aclose()

    # 503 every time: 4 attempts (PredictHQ: 1 try + 3 retries at 1, 2, 4 s +/- 0.5), then the error
    calls: list[httpx.Request] = []

    def unavailable(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(503)

    sleep = Recorder()
    http = client(unavailable, sleep, retry=PredictHQAdapter.retry)
    with pytest.raises(TemporaryProviderError, match="HTTP 503"):
        await http.request("GET", "/v1/models/x")
    await http.aclose()
    assert len(calls) == 4
    assert len(sleep.slept) == 3
    for waited, expected in zip(sleep.slept, (1.0, 2.0, 4.0), strict=True):
        assert expected - 0.5 <= waited <= expected + 0.5, sleep.slept
    assert time.monotonic() - started < 1.0  # nothing was really waited


async def test_a_train_call_that_times_out_after_sending_is_sent_exactly_once() -> None:
    sent: list[httpx.Request] = []

    def read_timeout(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        raise httpx.ReadTimeout("the answer never came", request=request)

    sleep = Recorder()
    http = client(read_timeout, sleep)
    with pytest.raises(TemporaryProviderError, match="settled by observing") as info:
        await http.request("POST", "/v1/models/x/train", json_body={}, idempotent=False)
    await http.aclose()
    assert not isinstance(info.value, RequestNotSentError)
    assert len(sent) == 1 and sleep.slept == []


def _photogpt_model(tmp_path: Path) -> DesiredModel[PhotoGPTModel, PhotoGPTTraining]:
    specs = tmp_path / "specs"
    (specs / "faces").mkdir(parents=True)
    for src in sorted((ROOT / "specs" / "photogpt-images").glob("*.png")):
        shutil.copy(src, specs / "faces" / src.name)
    (specs / "m.yaml").write_text(PHOTOGPT)
    return load_manifests([specs]).models["ada"].typed(PhotoGPTModel, PhotoGPTTraining)


async def test_photogpt_training_timeout_uses_the_injected_clock(tmp_path: Path) -> None:
    model = _photogpt_model(tmp_path)
    triggered = datetime(2020, 1, 1, tzinfo=UTC)  # years ago by the wall clock
    now = [triggered + timedelta(minutes=5)]

    def answer(request: httpx.Request) -> httpx.Response:
        result = {"id": "m-1", "status": "training", "updatedAt": "2020-01-01T00:00:01Z"}
        return httpx.Response(200, json={"status": "OK", "result": result})

    http = client(answer, Recorder())
    ctx = ProviderContext(config=default_provider("photogpt"), http=http, clock=lambda: now[0])
    adapter = PhotoGPTAdapter(ctx)
    record = ModelRecord(
        name=model.name,
        provider=model.provider,
        fingerprint=model.fingerprint,
        training=model.snapshot,
        status=RecordStatus.TRAINING,
        triggered_at=triggered,
        marker="before",
    )
    try:
        assert (await adapter.observe(model, record)).status is TrainingStatus.RUNNING
        now[0] = triggered + timedelta(minutes=40)  # past PhotoGPT's 35 min give-up time
        stuck = await adapter.observe(model, record)
        assert stuck.status is TrainingStatus.FAILED and "35 min" in stuck.message
    finally:
        await http.aclose()


async def test_the_engine_calls_the_step_hook_at_each_crash_point(tmp_path: Path) -> None:
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "m.yaml").write_text(ROBOFLOW)
    steps: list[str] = []
    trains: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            trains.append(request)
            return httpx.Response(200, json={"ok": True})
        return httpx.Response(200, json={"version": {"id": "acme/hardhats/3", "models": {}}})

    seams = Seams(transport=httpx.MockTransport(answer), on_step=steps.append)
    state = await open_state(f"sqlite:///{tmp_path / 'state.db'}")
    engine = Engine(load_manifests([tmp_path / "specs"]), state, env={"ROBOFLOW_API_KEY": "k"}, seams=seams)
    try:
        plans = await engine.plan(list(engine.manifests.models.values()))
        assert [p.action for p in plans] == [Action.TRAIN], [plan_entry(p) for p in plans]
        await engine.apply(plans)
    finally:
        await engine.aclose()
        await state.close()
    assert steps == ["before-intent", "after-intent", "after-train-call"]
    assert len(trains) == 1


def test_no_test_hook_is_read_from_the_environment() -> None:
    package = ROOT / "reconciler"
    for path in package.rglob("*.py"):
        text = path.read_text()
        assert "RECONCILER_TEST_" not in text and "RECONCILER_BACKOFF_SCALE" not in text, path
    assert asyncio.iscoroutinefunction(Seams().sleep)
