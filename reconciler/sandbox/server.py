"""The sandbox: local fakes of the provider HTTP APIs, served over real HTTP on 127.0.0.1.

One `Sandbox` serves every registered `Simulator` under its own prefix
(`http://127.0.0.1:PORT/<type><base_path>/...`, `base_url(type)`) and also at the root of a port of
its own (`root_url(type)`): vendor clients such as `predicthq` join their paths onto the host and
drop any prefix. It keeps a log of the requests it received,
injects faults (`Fault`), and persists each provider's world as `<directory>/<type>.json` so that
separate processes (`reconciler sandbox`, `apply --sandbox`, `plan --sandbox`) see the same models.

Only the standard library is used, so the sandbox starts in-process in milliseconds.

A control API for out-of-process use is served under `/_sandbox/` (see `ControlAPI`).
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from reconciler.sandbox.control import CONTROL_PREFIX, ControlAPI
from reconciler.sandbox.faults import Fault, LoggedRequest, Traffic
from reconciler.sandbox.http11 import Dropped, HTTPRequest, Server, bind
from reconciler.sandbox.registry import SANDBOX_API_KEYS, available_simulators, base_url_env, key_env
from reconciler.sandbox.simulator import Simulator
from reconciler.sandbox.wire import SimRequest, SimResponse
from reconciler.sandbox.world import WorldStore

log = logging.getLogger("reconciler.sandbox")


class Sandbox:
    """Serves the simulators on 127.0.0.1 in a background thread.

    directory: where each provider's world persists as `<type>.json` (None: in memory only).
    port: 0 picks a free port. training_seconds: how long every training takes.
    latency: seconds added to every provider request. api_keys: per-type overrides of
    SANDBOX_API_KEYS. providers: the types to serve (default: every available simulator).
    simulators: extra simulator classes by type, beside the registry (tests, plugins).
    clock: the simulators' clock (epoch seconds), for tests that skip time.
    max_logged: the request log keeps the most recent this many requests (long-running use).
    root_ports: serve each simulator also at the root of a port of its own (`root_url`); a dict
    picks the ports by type (0 or missing: a free one), False serves the prefixes only.
    """

    def __init__(
        self,
        directory: Path | str | None = None,
        *,
        port: int = 0,
        training_seconds: float = 3.0,
        latency: float = 0.0,
        api_keys: dict[str, str] | None = None,
        providers: list[str] | None = None,
        host: str = "127.0.0.1",
        clock: Callable[[], float] = time.time,
        simulators: dict[str, type[Simulator]] | None = None,
        max_logged: int = 100_000,
        root_ports: bool | dict[str, int] = True,
    ) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.port = port
        self.host = host
        self.training_seconds = training_seconds
        self.latency = latency
        self.api_keys = {**SANDBOX_API_KEYS, **(api_keys or {})}
        self.providers = list(providers) if providers is not None else None
        self.clock = clock
        self.extra_simulators = dict(simulators or {})
        self.url = ""
        self._sims: dict[str, Simulator] = {}
        self._server: Server | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # guards the request log and the faults
        self._log: deque[LoggedRequest] = deque(maxlen=max_logged)
        self._lifecycle = threading.Lock()
        self._faults: list[Fault] = []
        self.root_ports: dict[str, int] | None = (
            dict(root_ports) if isinstance(root_ports, dict) else ({} if root_ports else None)
        )
        #: requests in flight per simulator (`GET /_sandbox/traffic`)
        self.traffic = Traffic()

    # -- lifecycle ------------------------------------------------------------------------

    def _build_simulators(self) -> None:
        available = {**available_simulators(), **self.extra_simulators}
        wanted = self.providers if self.providers is not None else list(available)
        missing = [t for t in wanted if t not in available]
        if missing:
            raise ValueError(
                f"no sandbox simulator for: {', '.join(missing)} (available: {', '.join(sorted(available)) or 'none'})"
            )
        for type_name in wanted:
            cls = available[type_name]
            store = None
            world: dict[str, Any] = {}
            if self.directory is not None:
                store = WorldStore(self.directory / f"{type_name}.json")
            sim = cls(
                world,
                api_key=self.api_keys.get(type_name, f"sandbox-{type_name}-key"),
                training_seconds=self.training_seconds,
                clock=self.clock,
            )
            sim.store = store
            with sim.transaction(save=False) as current:
                if not current:
                    sim.seed()
                    sim.save()
            self._sims[type_name] = sim

    def start(self) -> Sandbox:
        """Build the simulators (loading or seeding their worlds) and start serving."""
        with self._lifecycle:
            self._start()
        return self

    def _start(self) -> None:
        if self._server is not None:
            return
        self._stopping.clear()
        self._build_simulators()
        sockets: list[tuple[socket.socket, str | None]] = [(bind(self.host, self.port), None)]
        self.port = sockets[0][0].getsockname()[1]
        self.url = f"http://{self.host}:{self.port}"
        for type_name, sim in self._sims.items():
            sim.base_url = self.base_url(type_name)
        if self.root_ports is not None:
            for type_name in self._sims:
                own = bind(self.host, self.root_ports.get(type_name, 0))
                # kept, so that a restarted sandbox answers on the same ports (like `port`)
                self.root_ports[type_name] = own.getsockname()[1]
                sockets.append((own, type_name))
        # One loop serves every port: the simulators' CPU runs under one GIL either way.
        server = Server(self._serve, name=f"reconciler-sandbox-{self.port}")
        try:
            server.serve(sockets)
        except BaseException:
            for sock, _ in sockets:
                sock.close()
            raise
        self._server = server
        log.info("sandbox serving %s on %s", ", ".join(self._sims), self.url)

    def stop(self) -> None:
        """Stop serving and close open connections (worlds are already on disk)."""
        with self._lifecycle:
            self._stop()

    def _stop(self) -> None:
        server = self._server
        if server is None:
            return
        self._stopping.set()
        server.close()  # cancels requests waiting out a delay
        for sim in self._sims.values():
            if sim.store is not None:
                sim.store.close()
        self._server = None

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def serve_forever(self) -> None:
        """Start (if needed) and block until interrupted (for `reconciler sandbox`)."""
        self.start()
        try:
            while not self._stopping.wait(0.5):
                pass
        finally:
            self.stop()

    # -- what clients need ----------------------------------------------------------------

    @property
    def served(self) -> list[str]:
        """The provider types being served."""
        return list(self._sims)

    def base_url(self, type: str) -> str:
        """The base URL a client of `type` uses: f"{url}/{type}{base_path}"."""
        return f"{self.url}/{type}{self.sim(type).base_path}"

    def root_url(self, type: str) -> str:
        """The simulator of `type` at the root of its own port: f"http://HOST:PORT{base_path}".

        For clients that join absolute paths onto the host (`predicthq`'s `urljoin`).
        """
        ports = self.root_ports or {}
        if type not in ports or self._server is None:
            raise KeyError(f"sandbox serves no root port for {type!r} (root_ports={self.root_ports!r})")
        return f"http://{self.host}:{ports[type]}{self.sim(type).base_path}"

    def env(self) -> dict[str, str]:
        """`RECONCILER_<TYPE>_BASE_URL` and the key variable of every served provider."""
        env: dict[str, str] = {}
        for type_name, sim in self._sims.items():
            env[base_url_env(type_name)] = self.base_url(type_name)
            env[key_env(type_name)] = sim.api_key
        return env

    def sim(self, type: str) -> Simulator:
        """The simulator serving `type` (KeyError if not served or not started)."""
        try:
            return self._sims[type]
        except KeyError:
            raise KeyError(f"sandbox does not serve {type!r} (serving: {self.served})") from None

    # -- request log and faults -------------------------------------------------------------

    def requests(
        self, provider: str | None = None, *, method: str | None = None, path: str | None = None
    ) -> list[LoggedRequest]:
        """Logged requests, oldest first; filter by provider, method, and a regex on the path."""
        with self._lock:
            entries = list(self._log)
        return [
            r
            for r in entries
            if (provider is None or r.provider == provider)
            and (method is None or r.method == method.upper())
            and (path is None or re.search(path, r.path) is not None)
        ]

    def clear_requests(self) -> None:
        """Forget the logged requests."""
        with self._lock:
            self._log.clear()

    def inject(self, fault: Fault) -> None:
        """Add a fault (matched after those injected before it)."""
        re.compile(fault.path)
        with self._lock:
            self._faults.append(fault)

    def clear_faults(self) -> None:
        """Remove every pending fault."""
        with self._lock:
            self._faults.clear()

    def clear_failures(self) -> int:
        """Drop every simulator's pending `fail_next_trainings` (kept in the worlds' files, so
        they outlive a restart); how many were pending."""
        return sum(self.sim(t).clear_failures() for t in self.served)

    def faults(self) -> list[Fault]:
        """The pending faults."""
        with self._lock:
            return list(self._faults)

    def _take_fault(self, provider: str, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.times != 0 and fault.matches(provider, method, path):
                    if fault.times > 0:
                        fault.times -= 1
                    if fault.times == 0:
                        self._faults.remove(fault)
                    return fault
        return None

    # -- serving ----------------------------------------------------------------------------

    @staticmethod
    async def _sleep(seconds: float) -> None:
        if seconds > 0:
            await asyncio.sleep(seconds)

    async def _serve(self, request: HTTPRequest, provider: str | None) -> SimResponse:
        method = request.method
        body = request.body
        split = urlsplit(request.target)
        query = parse_qs(split.query, keep_blank_values=True)
        headers: dict[str, str] = {}
        for name, value in request.headers:
            # the last of repeated headers wins, as before
            headers[name.lower()] = value
        if provider is not None:
            # a simulator's own port: the whole path is the provider's (no control API here)
            first, rest = provider, "/" + split.path.lstrip("/")
        else:
            segments = split.path.lstrip("/").split("/", 1)
            first = unquote(segments[0])
            rest = "/" + segments[1] if len(segments) > 1 else "/"
        if provider is None and first == CONTROL_PREFIX:
            return ControlAPI(self).handle(method, unquote(rest), query, body)
        sim = self._sims.get(first)
        if sim is None:
            return SimResponse(404, {"error": f"no sandbox provider {first!r}; serving: {self.served}"})
        sub = unquote(rest)
        base = sim.base_path.rstrip("/")
        if base:
            if sub != base and not sub.startswith(base + "/"):
                # Outside the documented base path: logged as received, answered 404.
                miss = SimRequest(method, sub, query, headers, body, first)
                answer = sim.not_found(miss)
                self._record(
                    LoggedRequest(first, method, sub, query, headers, body, 0, time.time(), request.target),
                    answer.status,
                )
                return answer
            sub = sub[len(base) :] or "/"
        self.traffic.enter(first)
        entered = time.monotonic()
        try:
            return await self._answer(sim, first, request, method, sub, query, headers, body)
        finally:
            self.traffic.leave(first, time.monotonic() - entered)

    async def _answer(
        self,
        sim: Simulator,
        first: str,
        request: HTTPRequest,
        method: str,
        sub: str,
        query: dict[str, list[str]],
        headers: dict[str, str],
        body: bytes,
    ) -> SimResponse:
        entry = LoggedRequest(first, method, sub, query, headers, body, 0, time.time(), request.target)
        req = SimRequest(method, sub, query, headers, body, first)

        await self._sleep(self.latency)
        fault = self._take_fault(first, method, sub)
        response: SimResponse | None = None
        if fault is not None and not fault.after_handling:
            await self._sleep(fault.delay)
            if fault.drop:
                self._record(entry, 0)
                raise Dropped
            if fault.status is not None:
                response = fault.response()
        if response is None:
            response = sim.handle(req)
        if fault is not None and fault.after_handling:
            await self._sleep(fault.delay)
            if fault.drop:
                self._record(entry, 0)
                raise Dropped
            if fault.status is not None:
                response = fault.response()
        self._record(entry, response.status)
        return response

    def _record(self, entry: LoggedRequest, status: int) -> None:
        entry.status = status
        with self._lock:
            self._log.append(entry)
