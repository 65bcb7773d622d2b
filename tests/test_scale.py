"""Issue 14: requests in flight (Little's law, AIMD on 429), and reads of many models through the
providers' list endpoints, falling back to single reads where the list cannot answer."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import one_simulator, sim
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.domain import DesiredModel, TrainingStatus
from reconciler.providers.base import ProviderAdapter, ProviderContext
from reconciler.providers.concurrency import ConcurrencyController, ConcurrencyGate
from reconciler.providers.http import HttpClient
from reconciler.providers.lucid.adapter import LucidAdapter
from reconciler.providers.photogpt.adapter import PhotoGPTAdapter
from reconciler.providers.policy import Auth
from reconciler.providers.predicthq import adapter as phq_adapter
from reconciler.providers.predicthq.adapter import PredictHQAdapter
from reconciler.sandbox.faults import Fault
from reconciler.sandbox.lucid.simulator import LucidSimulator
from reconciler.sandbox.photogpt.simulator import PhotoGPTSimulator
from reconciler.sandbox.predicthq.simulator import PredictHQSimulator
from reconciler.sandbox.registry import SANDBOX_API_KEYS
from reconciler.sandbox.server import Sandbox
from reconciler.sandbox.wire import SimRequest
from reconciler.spec import load_manifests


class Ticks:
    """An injected monotonic clock."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# ====================================================================== the controller (pure)


def test_in_flight_follows_littles_law_capped_by_what_the_provider_allows() -> None:
    c = ConcurrencyController(ceiling=16, requests_per_second=5.0, clock=Ticks())
    assert c.allowed() == 16  # nothing measured yet: what the provider allows
    c.answered(0.02)
    assert c.allowed() == 1  # 5/s x 20 ms = 0.1 in flight: one is enough
    # a request in flight for 0.5 s stands for that latency: 5/s x 0.5 s, it holds nothing back
    assert c.allowed(oldest_age=0.5) == 3
    fast = ConcurrencyController(ceiling=16, requests_per_second=400.0, clock=Ticks())
    fast.answered(0.02)
    assert fast.allowed() == 8  # 400/s x 20 ms
    unlimited = ConcurrencyController(ceiling=16, requests_per_second=10_000.0, clock=Ticks())
    unlimited.answered(0.02)
    assert unlimited.allowed() == 16  # 200 wanted, 16 allowed


def test_a_429_halves_the_limit_once_per_round_trip_and_successes_add_one_per_round_trip() -> None:
    clock = Ticks()
    c = ConcurrencyController(ceiling=16, requests_per_second=10_000.0, clock=clock)
    c.answered(0.05)
    assert c.throttled(0.05) and c.allowed() == 8
    assert not c.throttled(0.05) and c.allowed() == 8  # the same overload, answered to requests already sent
    clock.now += 0.06
    assert c.throttled(0.05) and c.allowed() == 4 and c.decreases == 2
    for _ in range(3):
        c.answered(0.05)
    assert c.allowed() == 4  # a round trip of 4 answers is not complete yet
    c.answered(0.05)
    assert c.allowed() == 5
    for _ in range(200):
        c.answered(0.05)
    assert c.allowed() == 16  # back to what the provider allows, never above


@settings(max_examples=200, deadline=None)
@given(
    ceiling=st.integers(1, 64),
    rate=st.floats(0, 1000),
    events=st.lists(st.tuples(st.booleans(), st.floats(0, 0.5), st.floats(0, 0.2), st.floats(0, 5)), max_size=200),
)
def test_the_limit_stays_between_one_and_the_ceiling_and_grows_by_at_most_one(
    ceiling: int, rate: float, events: list[tuple[bool, float, float, float]]
) -> None:
    clock = Ticks()
    c = ConcurrencyController(ceiling=ceiling, requests_per_second=rate, clock=clock)
    for throttled, latency, later, age in events:
        before = c.cap
        if throttled:
            allowed = c.allowed()
            if c.throttled(latency):
                assert c.cap == max(1, allowed // 2)  # multiplicative decrease
            else:
                assert c.allowed() == allowed  # the same round trip, or already at one
        else:
            c.answered(latency)
            assert c.cap in (before, before + 1)  # additive increase
        assert 1 <= c.allowed(age) <= c.cap <= ceiling
        if c.latency is not None and rate > 0:
            assert c.allowed(age) <= max(1, math.ceil(rate * max(c.latency, age)))  # Little's law
        clock.now += later


async def test_the_gate_never_lets_more_than_the_limit_through() -> None:
    c = ConcurrencyController(ceiling=3, requests_per_second=0, clock=Ticks())
    gate = ConcurrencyGate(c)
    peak = 0

    async def one(i: int) -> None:
        nonlocal peak
        slot = await gate.acquire()
        try:
            peak = max(peak, gate.in_flight)
            await asyncio.sleep(0)
            if i == 5:
                c.throttled(1.0)  # down to 1 while others wait
        finally:
            gate.release(slot)

    await asyncio.gather(*(one(i) for i in range(30)))
    assert peak == 3 and gate.in_flight == 0 and c.allowed() == 1


async def test_a_request_in_flight_long_enough_lets_the_next_one_through() -> None:
    clock = Ticks()
    c = ConcurrencyController(ceiling=16, requests_per_second=10.0, clock=clock)
    c.answered(0.005)  # 10/s x 5 ms: one in flight
    gate = ConcurrencyGate(c)
    first = await gate.acquire()
    second = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0.06)
    assert not second.done()  # the first has been in flight 0 s on the test's clock
    clock.now += 0.15  # now it stands for 150 ms: 10/s x 0.15 s = 2 in flight
    assert await asyncio.wait_for(second, 5) != first and gate.in_flight == 2


async def settled(check: Any) -> None:
    """Let the loop run the tasks started until `check()` holds (no clock involved)."""
    for _ in range(1000):
        if check():
            return
        await asyncio.sleep(0)
    raise AssertionError("the tasks never got there")


async def test_a_change_lane_request_gets_the_next_free_slot_before_queued_resync_requests() -> None:
    c = ConcurrencyController(ceiling=2, requests_per_second=0, clock=Ticks())
    gate = ConcurrencyGate(c)
    held = [await gate.acquire(), await gate.acquire()]  # full: a resync's requests in flight
    order: list[str] = []
    peak = 0

    async def one(name: str, urgent: bool) -> int:
        nonlocal peak
        slot = await gate.acquire(urgent=urgent)
        order.append(name)
        peak = max(peak, gate.in_flight)
        return slot

    resync = [asyncio.create_task(one(f"resync-{i}", False)) for i in range(5)]
    await settled(lambda: gate.waiting == 5)
    edit = asyncio.create_task(one("edit", True))
    await settled(lambda: gate.waiting == 6)
    gate.release(held.pop())
    await settled(lambda: order)
    assert order == ["edit"] and gate.in_flight == 2  # the next free slot, and still only two
    gate.release(edit.result())
    gate.release(held.pop())
    for task in resync:
        gate.release(await task)
    assert order == ["edit", *(f"resync-{i}" for i in range(5))] and peak == 2 and gate.in_flight == 0


async def test_a_change_lane_request_gets_the_next_slot_the_rate_allows() -> None:
    clock = Ticks()
    c = ConcurrencyController(ceiling=16, requests_per_second=10.0, clock=clock)
    gate = ConcurrencyGate(c)
    first = await gate.acquire()  # the next one only 0.1 s later (10/s)
    order: list[str] = []

    async def one(name: str, urgent: bool) -> int:
        slot = await gate.acquire(urgent=urgent)
        order.append(name)
        return slot

    resync = [asyncio.create_task(one(f"resync-{i}", False)) for i in range(3)]
    await settled(lambda: gate.waiting == 3)
    edit = asyncio.create_task(one("edit", True))
    await settled(lambda: gate.waiting == 4)
    gate.wake()
    assert order == []  # not before the rate allows, urgent or not
    clock.now += 0.1
    gate.wake()
    await settled(lambda: order)
    assert order == ["edit"]  # one slot per interval: the edit's
    clock.now += 0.1
    gate.wake()
    await settled(lambda: len(order) == 2)
    assert order == ["edit", "resync-0"] and gate.waiting == 2
    for task in resync[1:]:
        task.cancel()
    await asyncio.gather(*resync[1:], return_exceptions=True)
    assert gate.waiting == 0 and gate.in_flight == 3  # cancelled waiters took nothing
    for slot in (first, edit.result(), resync[0].result()):
        gate.release(slot)


async def test_requests_started_in_the_urgent_context_go_first_through_the_client() -> None:
    """The daemon's change lane runs in `urgent_requests()`: the tasks it starts inherit it."""
    from reconciler.providers.concurrency import urgent_requests

    answer_next = asyncio.Event()
    sent: list[str] = []

    async def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request.url.path)
        await answer_next.wait()
        answer_next.clear()
        return httpx.Response(200, json={})

    http = HttpClient(
        "roboflow",
        "https://api.example.com",
        api_key="k",
        auth=Auth(query_param="api_key"),
        requests_per_second=0,
        max_concurrent=1,
        transport=httpx.MockTransport(answer),
    )
    resync = [asyncio.create_task(http.request("GET", f"/resync-{i}")) for i in range(4)]
    await settled(lambda: sent == ["/resync-0"])
    with urgent_requests():
        edit = asyncio.create_task(http.request("GET", "/edit"))
    await settled(lambda: http._gate.waiting == 4)
    for _ in range(5):
        answer_next.set()
        await settled(lambda: not answer_next.is_set())
    await asyncio.gather(edit, *resync)
    await http.aclose()
    assert sent == ["/resync-0", "/edit", "/resync-1", "/resync-2", "/resync-3"]


async def test_a_429_lowers_the_requests_in_flight_and_the_run_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    answers = iter([429, 429, 200])

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(next(answers), json={"message": "slow down"})

    http = HttpClient(
        "roboflow",
        "https://api.example.com",
        api_key="k3y-value",
        auth=Auth(query_param="api_key"),
        requests_per_second=0,
        max_concurrent=16,
        transport=httpx.MockTransport(answer),
        sleep=lambda s: asyncio.sleep(0),
    )
    with caplog.at_level(logging.DEBUG, logger="reconciler.providers.http"):
        await http.request("GET", "/a")  # 429, retried after backoff: 429 again, then 200
    await http.aclose()
    assert http.concurrency.decreases == 2 and http.concurrency.allowed() == 4
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "roboflow answered 429" in warnings[0].getMessage() and "from 16 to 8" in warnings[0].getMessage()
    assert "k3y-value" not in caplog.text


# ====================================================================== list endpoints


@pytest.fixture
def phq_sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    with one_simulator(tmp_path / "world", "predicthq") as sb:
        yield sb


def manifests(tmp_path: Path, provider: str, models: list[str]) -> list[DesiredModel]:
    docs = []
    for i, spec in enumerate(models):
        docs.append(
            f"apiVersion: reconciler/v1\nkind: TrainedModel\nmetadata: {{name: m{i:03d}}}\n"
            f"spec:\n  provider: {provider}\n{spec}"
        )
    path = tmp_path / f"{provider}.yaml"
    path.write_text("---\n".join(docs))
    return list(load_manifests([path]).models.values())


def adapter_for(cls: type[ProviderAdapter[Any, Any]], sb: Sandbox, provider: str, tmp_path: Path) -> Any:
    path = tmp_path / "provider.yaml"
    path.write_text(
        f"apiVersion: reconciler/v1\nkind: Provider\nmetadata: {{name: {provider}}}\n"
        f"spec: {{type: {provider}, requests_per_second: 10000}}\n"
    )
    cfg = load_manifests([path]).providers[provider]
    http = HttpClient(
        provider, sb.base_url(provider), api_key=SANDBOX_API_KEYS[provider], auth=cls.auth, requests_per_second=0
    )
    return cls(ProviderContext(config=cfg, http=http))


async def test_predicthq_reads_many_models_from_the_list_pages(
    phq_sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(phq_adapter, "LIST_PAGE_SIZE", 10)
    s = sim(phq_sandbox, "predicthq", PredictHQSimulator)
    s.set_max_depth(1000)
    ids = [s.add_model(name=f"m{i}") for i in range(45)]
    for mid in ids[:30]:
        s.mark_trained(mid)
    models = manifests(
        tmp_path, "predicthq", [f"  model: {{model_id: {i}}}\n  training: {{forecast_window: 7d}}\n" for i in ids]
    )
    adapter = adapter_for(PredictHQAdapter, phq_sandbox, "predicthq", tmp_path)
    try:
        phq_sandbox.clear_requests()
        many = await adapter.observe_many(models, {})
        listed = phq_sandbox.requests("predicthq")
        # the seeded model and 45 more: 5 pages of 10, not 45 reads
        assert sorted(r.q("offset") or "" for r in listed) == ["0", "10", "20", "30", "40"]
        assert all(r.path == "/v1/forecasts/models" for r in listed)
        for m in models[::7]:
            assert many[m.name] == await adapter.observe(m, None)
        assert [many[m.name].status for m in models[29:31]] == [TrainingStatus.SUCCEEDED, TrainingStatus.NONE]
    finally:
        await adapter.http.aclose()


async def test_predicthq_reads_alone_what_the_list_cannot_show(
    phq_sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(phq_adapter, "LIST_PAGE_SIZE", 10)
    s = sim(phq_sandbox, "predicthq", PredictHQSimulator)
    s.set_max_depth(20)  # the plan's maximum depth: offsets past 10 are refused (400)
    ids = [s.add_model(name=f"m{i}") for i in range(25)]
    for mid in ids:
        s.mark_trained(mid)
    specs = [f"  model: {{model_id: {i}}}\n  training: {{forecast_window: 7d}}\n" for i in ids]
    models = manifests(
        tmp_path, "predicthq", [*specs, "  model: {model_id: gone}\n  training: {forecast_window: 7d}\n"]
    )
    adapter = adapter_for(PredictHQAdapter, phq_sandbox, "predicthq", tmp_path)
    try:
        phq_sandbox.clear_requests()
        many = await adapter.observe_many(models, {})
        singles = phq_sandbox.requests("predicthq", path=r"^/v1/forecasts/models/")
        # the first 19 (with the seeded model) came from two pages; the rest and the unknown id alone
        assert len(singles) == 26 - 19
        assert all(many[m.name].status is TrainingStatus.SUCCEEDED for m in models[:-1])  # type: ignore[union-attr]
        assert "Model not found" in str(many["m025"])

        # a list that leaves out a field the observation reads (train_dt) is not trusted for it
        auth = {"authorization": f"Bearer {SANDBOX_API_KEYS['predicthq']}"}
        query = {"limit": ["10"], "offset": ["0"]}
        page = s.handle(SimRequest("GET", "/v1/forecasts/models", query, auth, b"", "predicthq")).body
        assert isinstance(page, dict)
        for entry in page["results"]:
            del entry["train_dt"]
        phq_sandbox.inject(
            Fault(provider="predicthq", method="GET", path=r"^/v1/forecasts/models$", status=200, body=page)
        )
        phq_sandbox.clear_requests()
        again = await adapter.observe_many(models[:3], {})
        assert len(phq_sandbox.requests("predicthq", path=r"^/v1/forecasts/models/")) == 3
        assert all(o.status is TrainingStatus.SUCCEEDED for o in again.values())  # type: ignore[union-attr]
    finally:
        await adapter.http.aclose()


async def test_photogpt_reads_alone_the_models_its_list_shows_without_a_status(tmp_path: Path) -> None:
    with one_simulator(tmp_path / "world", "photogpt") as sb:
        s = sim(sb, "photogpt", PhotoGPTSimulator)
        ids = [s.add_model(f"p{i}", trained=True) for i in range(4)]
        images = tmp_path / "img"
        images.mkdir()
        png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
        for k in range(12):
            (images / f"{k}.png").write_bytes(png + bytes([k]))
        models = manifests(
            tmp_path,
            "photogpt",
            [f"  model: {{model_id: {i}}}\n  training: {{input_images: 'img/*.png'}}\n" for i in ids],
        )
        adapter = adapter_for(PhotoGPTAdapter, sb, "photogpt", tmp_path)
        try:
            sb.clear_requests()
            many = await adapter.observe_many(models, {})
            assert [r.path for r in sb.requests("photogpt")] == ["/models"]
            assert all(o.status is TrainingStatus.SUCCEEDED for o in many.values())  # type: ignore[union-attr]

            listed = [{k: v for k, v in s.model_view(i).items() if k != "status" or i != ids[0]} for i in ids]
            sb.inject(
                Fault(
                    provider="photogpt",
                    method="GET",
                    path=r"^/models$",
                    status=200,
                    body={"status": "OK", "result": listed},
                )
            )
            sb.clear_requests()
            again = await adapter.observe_many(models, {})
            assert [r.path for r in sb.requests("photogpt")] == ["/models", f"/models/{ids[0]}"]
            assert all(o.status is TrainingStatus.SUCCEEDED for o in again.values())  # type: ignore[union-attr]
        finally:
            await adapter.http.aclose()


async def test_lucid_asks_per_tag_set_when_the_batch_list_hides_the_tags(tmp_path: Path) -> None:
    with one_simulator(tmp_path / "world", "lucid") as sb:
        s = sim(sb, "lucid", LucidSimulator)
        for tags in (["shop"], ["blog"]):
            s.add_batch(tags)
        models = manifests(
            tmp_path,
            "lucid",
            [
                f"  model: {{model_id: r{i}}}\n  training: {{data_tags: [{t}]}}\n"
                for i, t in enumerate(["shop", "blog", "shop"])
            ],
        )
        adapter = adapter_for(LucidAdapter, sb, "lucid", tmp_path)
        try:
            sb.clear_requests()
            await adapter.observe_many(models, {})
            assert [tuple(r.query.get("tags", [])) for r in sb.requests("lucid", path="/data_batch$")] == [()]

            untagged = [{"batch_id": b, "timestamp": "2023-11-14T00:00:00Z"} for b in s.batch_ids()]
            sb.inject(Fault(provider="lucid", method="GET", path="/data_batch$", status=200, body=untagged))
            sb.clear_requests()
            many = await adapter.observe_many(models, {})
            queries = sorted(tuple(r.query.get("tags", [])) for r in sb.requests("lucid", path="/data_batch$"))
            assert queries == [(), ("blog",), ("shop",)]
            assert many["m000"].data_marker == sorted(s.batch_ids(["shop"]))  # type: ignore[union-attr]
        finally:
            await adapter.http.aclose()


async def test_a_plan_of_a_few_models_reads_only_their_records(tmp_path: Path) -> None:
    from reconciler.engine import Engine
    from reconciler.state import open_state

    with one_simulator(tmp_path / "world", "predicthq") as sb:
        s = sim(sb, "predicthq", PredictHQSimulator)
        ids = [s.add_model(name=f"m{i}") for i in range(33)]
        specs = [f"  model: {{model_id: {i}}}\n  training: {{forecast_window: 7d}}\n" for i in ids]
        models = manifests(tmp_path, "predicthq", specs)
        state = await open_state(f"sqlite:///{tmp_path / 'state.db'}")
        read_all = 0
        real_all = state.all

        async def counting_all() -> Any:
            nonlocal read_all
            read_all += 1
            return await real_all()

        state.all = counting_all  # type: ignore[method-assign]
        try:
            loaded = load_manifests([tmp_path / "predicthq.yaml"])
            endpoints = {"predicthq": (sb.base_url("predicthq"), SANDBOX_API_KEYS["predicthq"])}
            async with Engine(loaded, state, endpoints=endpoints) as engine:
                plans = await engine.plan(models[:1])
                assert read_all == 0 and [p.name for p in plans] == ["m000"]
                await engine.plan(models)  # many models: their records by name, never every record
                assert read_all == 0
        finally:
            await state.close()


async def test_no_cyclic_collection_runs_while_a_plan_reads_and_decides(tmp_path: Path) -> None:
    """Collections during a plan of 10,000 models walked its young survivors again and again (8%
    of its CPU) to free about 400 cyclic objects; `heap.collector_paused` keeps them out."""
    import gc

    from reconciler.engine import Engine
    from reconciler.seams import Seams
    from reconciler.state import open_state

    collector_on: list[bool] = []

    def answer(request: httpx.Request) -> httpx.Response:
        collector_on.append(gc.isenabled())
        return httpx.Response(404, json={"error": "project not found"})

    (tmp_path / "specs").mkdir()
    docs = [
        f"apiVersion: reconciler/v1\nkind: TrainedModel\nmetadata: {{name: m{i}}}\nspec:\n  provider: roboflow\n"
        f"  model: {{workspace: acme, project: p{i}}}\n  training: {{version: 1, model_type: rfdetr-nano}}\n"
        for i in range(5)
    ]
    (tmp_path / "specs" / "models.yaml").write_text("---\n".join(docs))
    state = await open_state(f"sqlite:///{tmp_path / 'state.db'}")
    seams = Seams(transport=httpx.MockTransport(answer))
    engine = Engine(load_manifests([tmp_path / "specs"]), state, env={"ROBOFLOW_API_KEY": "k"}, seams=seams)
    assert gc.isenabled()
    try:
        plans = await engine.plan(list(engine.manifests.models.values()))
    finally:
        await engine.aclose()
        await state.close()
    assert len(plans) == 5 and collector_on == [False] * 5
    assert gc.isenabled()  # on again after it


async def test_each_provider_reads_its_own_records_by_name_before_its_first_request(tmp_path: Path) -> None:
    """A plan of many models reads records per provider (`get_many`), each before that provider's
    first request: a provider's reads start, and its models are decided, while others still read."""
    from reconciler.engine import Engine
    from reconciler.seams import Seams
    from reconciler.state import open_state

    n = 40
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "provider.yaml").write_text(
        "apiVersion: reconciler/v1\nkind: Provider\nmetadata: {name: roboflow-b}\n"
        "spec: {type: roboflow, api_key_env: ROBOFLOW_B_API_KEY}\n"
    )
    docs = [
        f"apiVersion: reconciler/v1\nkind: TrainedModel\nmetadata: {{name: {p}-{i}}}\nspec:\n  provider: {p}\n"
        f"  model: {{workspace: acme, project: {p}-{i}}}\n  training: {{version: 1, model_type: rfdetr-nano}}\n"
        for p in ("roboflow", "roboflow-b")
        for i in range(n)
    ]
    (specs / "models.yaml").write_text("---\n".join(docs))
    events: list[tuple[str, str]] = []
    keys = {"key-a": "roboflow", "key-b": "roboflow-b"}

    def answer(request: httpx.Request) -> httpx.Response:
        events.append(("request", keys[request.url.params["api_key"]]))
        return httpx.Response(404, json={"error": "project not found"})

    state = await open_state(f"sqlite:///{tmp_path / 'state.db'}")
    real_get_many = state.get_many

    async def get_many(names: Any) -> Any:
        names = list(names)
        (provider,) = {name.rsplit("-", 1)[0] for name in names}
        events.append(("records", provider))
        assert len(names) == n
        return await real_get_many(names)

    async def every_record() -> Any:
        raise AssertionError("a plan read every record")

    state.get_many = get_many  # type: ignore[method-assign]
    state.all = every_record  # type: ignore[method-assign]
    env = {"ROBOFLOW_API_KEY": "key-a", "ROBOFLOW_B_API_KEY": "key-b"}
    seams = Seams(transport=httpx.MockTransport(answer))
    engine = Engine(load_manifests([specs]), state, env=env, seams=seams)
    try:
        plans = await engine.plan(list(engine.manifests.models.values()))
    finally:
        await engine.aclose()
        await state.close()
    assert [p.name for p in plans] == [f"{p}-{i}" for p in ("roboflow", "roboflow-b") for i in range(n)]
    for provider in ("roboflow", "roboflow-b"):
        mine = [kind for kind, who in events if who == provider]
        assert mine[0] == "records" and mine.count("records") == 1 and mine.count("request") >= n
