"""The sandbox framework: HTTP serving, routing, faults, request log, control API, persistence."""

from __future__ import annotations

import http.client
import json
import socket
import struct
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import Clock

from reconciler.sandbox import (
    Fault,
    Sandbox,
    SimHTTPError,
    SimRequest,
    SimResponse,
    Simulator,
    available_simulators,
    register_simulator,
    route,
    simulator_class,
    unregister_simulator,
)


class EchoSim(Simulator):
    """A tiny provider: bearer auth, a persistent counter, trainings, and some odd answers."""

    type = "echo"

    def seed(self) -> None:
        self.world["counter"] = 0
        self.world["trainings"] = {}

    def authenticate(self, req: SimRequest) -> None:
        if req.header("Authorization") != f"Bearer {self.api_key}":
            raise SimHTTPError(401, {"error": "Authorization required"})

    @route("GET", r"/counter")
    def get_counter(self, req: SimRequest) -> dict[str, Any]:
        return {"counter": self.world["counter"]}

    @route("POST", r"/counter")
    def increment(self, req: SimRequest) -> SimResponse:
        body = req.json(default={})
        self.world["counter"] += int(body.get("by", 1))
        self.save()
        return SimResponse(201, {"counter": self.world["counter"]})

    @route("POST", r"/echo/(?P<name>\w+)")
    def echo(self, req: SimRequest, name: str) -> dict[str, Any]:
        return {"name": name, "query": req.query, "json": req.json(default=None), "q": req.q("x")}

    @route("POST", r"/form")
    def form(self, req: SimRequest) -> dict[str, Any]:
        return {
            name: [{"filename": p.filename, "type": p.content_type, "text": p.text} for p in parts]
            for name, parts in req.form().items()
        }

    @route("GET", r"/boom")
    def boom(self, req: SimRequest) -> SimResponse:
        raise RuntimeError("kaboom")

    @route("POST", r"/half")
    def half_done(self, req: SimRequest) -> SimResponse:
        self.world["counter"] += 100  # mutated, then a bug before save()
        raise KeyError("oops")

    @route("GET", r"/raw")
    def raw(self, req: SimRequest) -> SimResponse:
        return SimResponse(200, b"plain bytes", content_type="text/plain")

    @route("DELETE", r"/thing")
    def delete_thing(self, req: SimRequest) -> SimResponse:
        return SimResponse(204)

    @route("POST", r"/trainings/(?P<name>\w+)")
    def start_training(self, req: SimRequest, name: str) -> SimResponse:
        self.world["trainings"][name] = self.new_training()
        self.save()
        return SimResponse(202, {"started": name})

    @route("GET", r"/trainings/(?P<name>\w+)")
    def get_training(self, req: SimRequest, name: str) -> dict[str, Any]:
        record = self.world["trainings"].get(name)
        if record is None:
            raise SimHTTPError(404, {"error": "no such training"})
        state = self.training_state(record)
        return {"phase": state.phase, "progress": state.progress, "message": state.message}


class ApiSim(EchoSim):
    """Same routes (inherited) behind a documented base path, as PhotoGPT's /api."""

    type = "apisim"
    base_path = "/api"


SIMS: dict[str, type[Simulator]] = {"echo": EchoSim, "apisim": ApiSim}
AUTH = {"Authorization": "Bearer sandbox-echo-key"}


def make_sandbox(directory: Path | None, **kwargs: Any) -> Sandbox:
    kwargs.setdefault("training_seconds", 0.5)
    return Sandbox(directory, providers=["echo", "apisim"], simulators=SIMS, **kwargs)


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    with make_sandbox(tmp_path / "sandbox") as sb:
        yield sb


def call(
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
) -> tuple[int, dict[str, str], bytes]:
    """One request with urllib: (status, headers, raw body), never raising on HTTP errors."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers.items()), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers.items()), err.read()


def call_json(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    status, _, raw = call(method, url, body, headers)
    return status, json.loads(raw) if raw else None


def counter(sb: Sandbox) -> int:
    return int(call_json("GET", f"{sb.base_url('echo')}/counter", headers=AUTH)[1]["counter"])


# -- serving -----------------------------------------------------------------------------------


def test_urls_env_and_keep_alive(sandbox: Sandbox) -> None:
    assert sandbox.url.startswith("http://127.0.0.1:")
    assert sandbox.base_url("echo") == f"{sandbox.url}/echo"
    assert sandbox.base_url("apisim") == f"{sandbox.url}/apisim/api"
    env = sandbox.env()
    assert env["RECONCILER_ECHO_BASE_URL"] == sandbox.base_url("echo")
    assert env["ECHO_API_KEY"] == "sandbox-echo-key"
    assert env["RECONCILER_APISIM_BASE_URL"].endswith("/apisim/api")

    # HTTP/1.1 keep-alive: several requests over one connection.
    conn = http.client.HTTPConnection("127.0.0.1", sandbox.port, timeout=5)
    try:
        conn.request("GET", "/echo/counter", headers=AUTH)
        first = conn.getresponse()
        assert first.status == 200 and json.loads(first.read()) == {"counter": 0}
        sock = conn.sock
        conn.request("POST", "/echo/counter", body=b'{"by": 2}', headers=AUTH)
        second = conn.getresponse()
        assert second.status == 201 and json.loads(second.read()) == {"counter": 2}
        assert conn.sock is sock
    finally:
        conn.close()


def test_routing_auth_errors_and_robustness(sandbox: Sandbox) -> None:
    base = sandbox.base_url("echo")
    assert call_json("GET", f"{base}/counter") == (401, {"error": "Authorization required"})
    status, body = call_json("GET", f"{base}/nowhere", headers=AUTH)
    assert status == 404 and "error" in body
    assert call_json("GET", f"{sandbox.url}/nosuchprovider/x")[0] == 404
    assert call_json("PUT", f"{base}/counter", headers=AUTH)[0] == 404  # known path, wrong method

    # A handler bug is a 500 with a JSON body, and the server keeps serving.
    status, body = call_json("GET", f"{base}/boom", headers=AUTH)
    assert status == 500 and "kaboom" in body["error"]
    assert counter(sandbox) == 0
    # ... and a half-done mutation of a failed handler is discarded, not saved later.
    assert call("POST", f"{base}/half", headers=AUTH)[0] == 500
    assert counter(sandbox) == 0

    status, _, raw = call("POST", f"{base}/counter", b"{not json", headers=AUTH)
    assert status == 400 and "Invalid JSON" in json.loads(raw)["error"]

    status, headers, raw = call("GET", f"{base}/raw", headers=AUTH)
    assert (status, headers["Content-Type"], raw) == (200, "text/plain", b"plain bytes")
    status, _, raw = call("DELETE", f"{base}/thing", headers=AUTH)
    assert (status, raw) == (204, b"")

    status, body = call_json("POST", f"{base}/echo/hello?x=1&x=2&empty=", {"a": [1]}, headers=AUTH)
    assert body == {"name": "hello", "query": {"x": ["1", "2"], "empty": [""]}, "json": {"a": [1]}, "q": "1"}


def test_base_path_and_inherited_routes(sandbox: Sandbox) -> None:
    auth = {"Authorization": "Bearer sandbox-apisim-key"}
    assert call_json("GET", f"{sandbox.base_url('apisim')}/counter", headers=auth) == (200, {"counter": 0})
    assert call_json("GET", f"{sandbox.url}/apisim/counter", headers=auth)[0] == 404
    assert sandbox.requests("apisim")[0].path == "/counter"


def test_multipart_form_parsing(sandbox: Sandbox) -> None:
    png = bytes(range(256)) + b"\r\n--not-a-boundary\r\n"
    resp = httpx.post(
        f"{sandbox.base_url('echo')}/form",
        headers=AUTH,
        data={"data": json.dumps({"modelID": "m1", "type": "modelInput"})},
        files={"file": ("face.png", png, "image/png")},
    )
    assert resp.status_code == 200
    body = resp.json()
    assert json.loads(body["data"][0]["text"]) == {"modelID": "m1", "type": "modelInput"}
    assert body["file"][0]["filename"] == "face.png" and body["file"][0]["type"] == "image/png"
    # The raw bytes survive (checked through the request log, which keeps the body).
    assert png in sandbox.requests("echo")[-1].body


# -- request log -------------------------------------------------------------------------------


def test_request_log_contents(sandbox: Sandbox) -> None:
    before = time.time()
    call("POST", f"{sandbox.base_url('echo')}/counter?api_key=k1&x=y", {"by": 3}, headers=AUTH)
    call("GET", f"{sandbox.base_url('echo')}/counter", headers={"X-Trace": "abc"})  # 401
    entries = sandbox.requests("echo")
    assert [(e.method, e.path, e.status) for e in entries] == [("POST", "/counter", 201), ("GET", "/counter", 401)]
    first = entries[0]
    assert first.provider == "echo"
    assert first.query == {"api_key": ["k1"], "x": ["y"]}
    assert first.q("api_key") == "k1"
    assert first.headers["authorization"] == "Bearer sandbox-echo-key"
    assert first.json() == {"by": 3} and first.body == b'{"by": 3}'
    assert before <= first.at <= entries[1].at
    assert entries[1].headers["x-trace"] == "abc"
    assert sandbox.requests(method="POST") == [first]
    assert sandbox.requests(path="^/counter$") == entries
    assert sandbox.requests("apisim") == []
    sandbox.clear_requests()
    assert sandbox.requests() == []


# -- faults ------------------------------------------------------------------------------------


def test_fault_status_with_and_without_retry_after(sandbox: Sandbox) -> None:
    url = f"{sandbox.base_url('echo')}/counter"
    sandbox.inject(Fault(provider="echo", method="POST", path="^/counter$", status=429, retry_after=2))
    status, headers, raw = call("POST", url, {"by": 1}, headers=AUTH)
    assert status == 429 and headers["Retry-After"] == "2"
    assert json.loads(raw) == {"error": "sandbox fault: HTTP 429"}
    assert counter(sandbox) == 0  # answered instead of handling: nothing happened

    sandbox.inject(Fault(path="/counter", status=503, body="<html>down</html>", content_type="text/html"))
    status, headers, raw = call("GET", url, headers=AUTH)
    assert (status, raw, headers["Content-Type"]) == (503, b"<html>down</html>", "text/html")
    assert "Retry-After" not in headers

    sandbox.inject(Fault(status=500, body={"error": "custom"}))
    assert call_json("GET", url, headers=AUTH) == (500, {"error": "custom"})
    assert call_json("GET", url, headers=AUTH) == (200, {"counter": 0})  # times=1: used up
    assert [e.status for e in sandbox.requests("echo")] == [429, 200, 503, 500, 200]


def test_fault_times_and_matching(sandbox: Sandbox) -> None:
    url = f"{sandbox.base_url('echo')}/counter"
    sandbox.inject(Fault(provider="apisim", status=500, times=-1))  # other provider: never applies
    sandbox.inject(Fault(method="POST", status=502, times=-1))  # other method
    sandbox.inject(Fault(path="^/nomatch", status=502, times=-1))  # other path
    sandbox.inject(Fault(provider="echo", path="counter", status=503, times=2))
    sandbox.inject(Fault(provider="echo", status=504))  # only once the one before is used up
    statuses = [call("GET", url, headers=AUTH)[0] for _ in range(4)]
    assert statuses == [503, 503, 504, 200]

    sandbox.clear_faults()
    sandbox.inject(Fault(provider="echo", method="GET", status=500, times=-1))
    assert [call("GET", url, headers=AUTH)[0] for _ in range(3)] == [500, 500, 500]
    assert len(sandbox.faults()) == 1
    sandbox.clear_faults()
    assert call("GET", url, headers=AUTH)[0] == 200


def test_fault_delay_and_client_timeout(sandbox: Sandbox) -> None:
    url = f"{sandbox.base_url('echo')}/counter"
    sandbox.inject(Fault(provider="echo", delay=0.3))
    started = time.monotonic()
    assert call_json("GET", url, headers=AUTH) == (200, {"counter": 0})
    assert time.monotonic() - started >= 0.3

    sandbox.inject(Fault(provider="echo", delay=1.0))
    with pytest.raises((TimeoutError, socket.timeout, urllib.error.URLError)):
        call("GET", url, headers=AUTH, timeout=0.2)
    assert counter(sandbox) == 0  # the server survives a client that gave up


def test_fault_drop(sandbox: Sandbox) -> None:
    url = f"{sandbox.base_url('echo')}/counter"
    sandbox.inject(Fault(provider="echo", method="POST", drop=True))
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError, urllib.error.URLError)):
        call("POST", url, {"by": 5}, headers=AUTH)
    assert counter(sandbox) == 0  # dropped before handling
    assert sandbox.requests("echo", method="POST")[0].status == 0
    with pytest.raises(httpx.RemoteProtocolError):
        sandbox.inject(Fault(provider="echo", drop=True))
        httpx.get(url, headers=AUTH)


def test_fault_after_handling(sandbox: Sandbox) -> None:
    url = f"{sandbox.base_url('echo')}/counter"
    # The provider did it, but the answer was lost.
    sandbox.inject(Fault(provider="echo", method="POST", drop=True, after_handling=True))
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError, urllib.error.URLError)):
        call("POST", url, {"by": 5}, headers=AUTH)
    assert counter(sandbox) == 5

    # ... or replaced by an error.
    sandbox.inject(Fault(provider="echo", method="POST", status=502, after_handling=True))
    assert call("POST", url, {"by": 1}, headers=AUTH)[0] == 502
    assert counter(sandbox) == 6

    # ... or late.
    sandbox.inject(Fault(provider="echo", method="POST", delay=0.2, after_handling=True))
    started = time.monotonic()
    assert call_json("POST", url, {"by": 1}, headers=AUTH) == (201, {"counter": 7})
    assert time.monotonic() - started >= 0.2


def test_latency(tmp_path: Path) -> None:
    with make_sandbox(None, latency=0.15) as sb:
        started = time.monotonic()
        assert counter(sb) == 0
        assert time.monotonic() - started >= 0.15


# -- control API -------------------------------------------------------------------------------


def test_control_api(sandbox: Sandbox) -> None:
    control = f"{sandbox.url}/_sandbox"
    status, info = call_json("GET", control)
    assert status == 200 and info["providers"]["echo"] == sandbox.base_url("echo")
    assert info["env"]["ECHO_API_KEY"] == "sandbox-echo-key"

    call("POST", f"{sandbox.base_url('echo')}/counter?api_key=k", {"by": 1}, headers=AUTH)
    status, entries = call_json("GET", f"{control}/requests")
    assert status == 200 and len(entries) == 1
    entry = entries[0]
    assert (entry["provider"], entry["method"], entry["path"], entry["status"]) == ("echo", "POST", "/counter", 201)
    assert entry["query"] == {"api_key": ["k"]} and entry["body"] == '{"by": 1}'
    assert call_json("GET", f"{control}/requests?provider=apisim") == (200, [])
    assert call_json("DELETE", f"{control}/requests") == (200, {"cleared": 1})
    assert sandbox.requests() == []

    fault = {"provider": "echo", "path": "^/counter$", "status": 503, "retry_after": 1.5, "times": 2}
    status, created = call_json("POST", f"{control}/faults", fault)
    assert status == 201 and created["status"] == 503
    status, headers, _ = call("GET", f"{sandbox.base_url('echo')}/counter", headers=AUTH)
    assert status == 503 and headers["Retry-After"] == "1.5"
    status, faults = call_json("GET", f"{control}/faults")
    assert status == 200 and [f["times"] for f in faults] == [1]
    assert call_json("DELETE", f"{control}/faults") == (200, {"cleared": 1, "faults": 1, "fail_next": 0})
    assert counter(sandbox) == 1  # the one POST above

    assert call_json("POST", f"{control}/faults", {"bogus": 1})[0] == 400
    assert call_json("POST", f"{control}/faults", {"path": "("})[0] == 400
    assert call_json("POST", f"{control}/faults", {"status": "x"})[0] == 400
    assert call("POST", f"{control}/faults", b"[1]")[0] == 400

    assert call_json("POST", f"{control}/echo/fail-next", {"n": 2}) == (200, {"pending": 2})
    assert call_json("POST", f"{control}/echo/fail-next", {"n": -1})[0] == 400
    status, world = call_json("GET", f"{control}/echo/world")
    assert status == 200 and world["counter"] == 1
    assert world["_sandbox"]["fail_next"] == ["simulated failure"] * 2
    # a pending fail-next is cleared with the faults, or on its own; it no longer fails a training
    assert call_json("DELETE", f"{control}/faults") == (200, {"cleared": 2, "faults": 0, "fail_next": 2})
    assert call_json("POST", f"{control}/echo/fail-next", {"n": 1}) == (200, {"pending": 1})
    assert call_json("DELETE", f"{control}/echo/fail-next") == (200, {"cleared": 1, "pending": 0})
    assert sandbox.sim("echo").new_training()["outcome"] == "succeeded"
    assert call_json("GET", f"{control}/nope")[0] == 404
    assert call_json("POST", f"{control}/nosuch/fail-next", {"n": 1})[0] == 404
    assert [e.path for e in sandbox.requests()] == ["/counter", "/counter"]  # control calls are not logged


# -- trainings ---------------------------------------------------------------------------------


def test_training_state_machine_from_the_clock() -> None:
    now = [1000.0]
    sim = EchoSim({}, api_key="k", training_seconds=10.0, clock=lambda: now[0])
    sim.seed()
    record = sim.new_training()
    assert (record["started_at"], record["duration"], record["outcome"]) == (1000.0, 10.0, "succeeded")
    assert sim.training_state(record).phase == "queued"  # first 10%
    now[0] = 1001.0
    state = sim.training_state(record)
    assert state.phase == "running" and state.progress == 0.0 and state.active
    now[0] = 1005.5
    assert sim.training_state(record).progress == pytest.approx(0.5)
    now[0] = 1010.0
    state = sim.training_state(record)
    assert (state.phase, state.progress, state.ended_at, state.active) == ("succeeded", 1.0, 1010.0, False)

    sim.fail_next_trainings(1, "out of GPUs")
    failing = sim.new_training()
    assert sim.training_state(failing, now=1019.0).phase == "running"
    state = sim.training_state(failing, now=1020.0)
    assert (state.phase, state.message) == ("failed", "out of GPUs")
    assert sim.training_state(sim.new_training(), now=1030.0).phase == "succeeded"  # only one failure

    cancelled = sim.new_training(cancelled_at=1012.0)
    state = sim.training_state(cancelled, now=1015.0)
    assert (state.phase, state.ended_at) == ("cancelled", 1012.0) and state.progress == pytest.approx(1 / 9)
    stopped = sim.new_training(stopped_at=1014.5)
    state = sim.training_state(stopped, now=1015.0)
    assert state.phase == "succeeded" and state.progress == pytest.approx(3.5 / 9)


def test_a_request_cut_off_mid_body_is_never_acted_on(sandbox: Sandbox) -> None:
    """A client killed between headers and body: the simulator, like a real server, does nothing."""
    host, port = sandbox.url.removeprefix("http://").split(":")
    body = json.dumps({"by": 5}).encode()
    with socket.create_connection((host, int(port))) as conn:
        head = (
            f"POST /echo/counter HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Authorization: {AUTH['Authorization']}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        conn.sendall(head.encode() + body[:3])
    time.sleep(0.3)
    assert counter(sandbox) == 0
    assert sandbox.requests("echo", method="POST") == []


def test_training_over_http_and_fail_next(tmp_path: Path, clock: Clock) -> None:
    with make_sandbox(tmp_path / "sandbox", clock=clock) as sandbox:
        base = sandbox.base_url("echo")
        sandbox.sim("echo").fail_next_trainings(1, "boom")
        assert call("POST", f"{base}/trainings/a", headers=AUTH)[0] == 202
        assert call("POST", f"{base}/trainings/b", headers=AUTH)[0] == 202
        assert call_json("GET", f"{base}/trainings/a", headers=AUTH)[1]["phase"] in ("queued", "running")
        clock.advance(0.55)  # trainings take 0.5 s
        assert call_json("GET", f"{base}/trainings/a", headers=AUTH)[1] == {
            "phase": "failed",
            "progress": 1.0,
            "message": "boom",
        }
        assert call_json("GET", f"{base}/trainings/b", headers=AUTH)[1]["phase"] == "succeeded"


# -- persistence -------------------------------------------------------------------------------


def test_worlds_persist_and_reload_across_instances(tmp_path: Path) -> None:
    directory = tmp_path / "sandbox"
    with make_sandbox(directory) as first:
        call("POST", f"{first.base_url('echo')}/counter", {"by": 4}, headers=AUTH)
        assert json.loads((directory / "echo.json").read_text())["counter"] == 4
        # A second sandbox on the same folder at the same time (as another process would be)
        # sees the change, and its own writes are seen by the first one.
        with make_sandbox(directory) as second:
            assert counter(second) == 4
            call("POST", f"{second.base_url('echo')}/counter", {"by": 1}, headers=AUTH)
            assert counter(first) == 5
            call("POST", f"{first.base_url('echo')}/counter", {"by": 1}, headers=AUTH)
            assert counter(second) == 6
            # Helpers see other instances' writes too.
            with first.sim("echo").transaction() as world:
                assert world["counter"] == 6
                world["counter"] = 10
            assert counter(second) == 10
    with make_sandbox(directory) as third:
        assert counter(third) == 10
    leftovers = sorted(p.name for p in directory.iterdir())
    assert leftovers == ["apisim.json", "apisim.json.lock", "echo.json", "echo.json.lock"]


def test_training_started_in_one_instance_finishes_in_another(tmp_path: Path, clock: Clock) -> None:
    directory = tmp_path / "sandbox"
    with make_sandbox(directory, training_seconds=0.3, clock=clock) as first:
        call("POST", f"{first.base_url('echo')}/trainings/t", headers=AUTH)
        assert call_json("GET", f"{first.base_url('echo')}/trainings/t", headers=AUTH)[1]["phase"] in (
            "queued",
            "running",
        )
    clock.advance(0.35)
    # Nobody was serving while it "trained": the state comes from the stored timestamps.
    with make_sandbox(directory, training_seconds=30, clock=clock) as second:
        assert call_json("GET", f"{second.base_url('echo')}/trainings/t", headers=AUTH)[1]["phase"] == "succeeded"


def test_in_memory_sandbox_writes_no_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with make_sandbox(None) as sb:
        call("POST", f"{sb.base_url('echo')}/counter", {"by": 1}, headers=AUTH)
        assert counter(sb) == 1
    assert list(tmp_path.iterdir()) == []


# -- registry and lifecycle --------------------------------------------------------------------


def test_registry_is_lazy_and_skips_missing_modules() -> None:
    assert "roboflow" in available_simulators()
    register_simulator("ghost", "reconciler.sandbox.ghost_that_does_not_exist:Ghost")
    try:
        assert simulator_class("ghost") is None
        assert "ghost" not in available_simulators()
    finally:
        unregister_simulator("ghost")
    register_simulator("echo-registered", EchoSim)
    try:
        assert simulator_class("echo-registered") is EchoSim
    finally:
        unregister_simulator("echo-registered")
    with pytest.raises(ValueError, match="no sandbox simulator for: nope"):
        Sandbox(providers=["nope"]).start()


def test_stop_is_quick_with_idle_keep_alive_connections(tmp_path: Path) -> None:
    sb = make_sandbox(tmp_path).start()
    conn = http.client.HTTPConnection("127.0.0.1", sb.port, timeout=5)
    conn.request("GET", "/echo/counter", headers=AUTH)
    conn.getresponse().read()
    started = time.monotonic()
    sb.stop()
    assert time.monotonic() - started < 2
    conn.close()
    sb.stop()  # idempotent


def test_a_client_that_resets_its_connection_prints_no_traceback(
    sandbox: Sandbox, capfd: pytest.CaptureFixture[str]
) -> None:
    # a killed `apply` resets its connections; socketserver would print a traceback to stderr,
    # which an in-process CLI (and a terminal running `reconciler sandbox`) shares
    host, port = sandbox.url.removeprefix("http://").split(":")
    for _ in range(3):
        with socket.create_connection((host, int(port))) as conn:
            conn.sendall(b"GET /roboflow/acme HTTP/1.1\r\nHost: x\r\n")  # headers never finished
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
    # the server is still serving, and said nothing on stderr
    with httpx.Client() as client:
        assert client.get(sandbox.url + "/_sandbox/requests").status_code == 200
    assert "Traceback" not in capfd.readouterr().err


def test_pipelined_requests_are_answered_in_order_on_one_connection(sandbox: Sandbox) -> None:
    head = "Authorization: Bearer sandbox-echo-key\r\nHost: x\r\n"
    raw = (
        f"POST /echo/counter HTTP/1.1\r\n{head}Content-Length: 9\r\n\r\n" + '{"by": 2}'
        f"GET /echo/counter HTTP/1.1\r\n{head}\r\n"
        f"HEAD /echo/counter HTTP/1.1\r\n{head}\r\n"
        f"GET /echo/counter HTTP/1.1\r\n{head}Connection: close\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", sandbox.port), timeout=5) as sock:
        sock.sendall(raw.encode())
        stream = sock.makefile("rb")

        class OneStream:  # every response read from one buffer, as the answers arrive together
            def makefile(self, *args: Any) -> Any:
                return self

            def __getattr__(self, name: str) -> Any:
                return getattr(stream, name)

            def close(self) -> None:  # http.client closes its file after each answer
                pass

        answers = []
        for method in ("POST", "GET", "HEAD", "GET"):
            resp = http.client.HTTPResponse(OneStream(), method=method)  # type: ignore[arg-type]
            resp.begin()
            answers.append((resp.status, resp.read()))
        assert stream.read(1) == b""  # closed after the request that asked for it
    assert [s for s, _ in answers] == [201, 200, 200, 200]
    assert json.loads(answers[1][1]) == {"counter": 2} and answers[2][1] == b""


def test_a_delayed_request_does_not_hold_up_other_connections(sandbox: Sandbox) -> None:
    sandbox.inject(Fault(provider="echo", method="GET", delay=600))
    slow = socket.create_connection(("127.0.0.1", sandbox.port), timeout=5)
    try:
        slow.sendall(b"GET /echo/counter HTTP/1.1\r\nAuthorization: Bearer sandbox-echo-key\r\n\r\n")
        deadline = time.monotonic() + 5
        while sandbox.traffic.stats().get("echo", {}).get("in_flight", 0) < 1:
            assert time.monotonic() < deadline, "the slow request never reached the simulator"
            time.sleep(0.01)
        # answered while the first request still waits out its delay
        assert call_json("POST", f"{sandbox.base_url('echo')}/counter", body=b'{"by": 1}', headers=AUTH) == (
            201,
            {"counter": 1},
        )
        assert sandbox.traffic.stats()["echo"]["in_flight"] == 1
    finally:
        slow.close()
