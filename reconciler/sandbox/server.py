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

import contextlib
import logging
import re
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from reconciler.sandbox.control import CONTROL_PREFIX, ControlAPI
from reconciler.sandbox.faults import Fault, LoggedRequest, Traffic
from reconciler.sandbox.registry import SANDBOX_API_KEYS, available_simulators, base_url_env, key_env
from reconciler.sandbox.simulator import Simulator
from reconciler.sandbox.wire import SimRequest, SimResponse
from reconciler.sandbox.world import WorldStore

log = logging.getLogger("reconciler.sandbox")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # idle keep-alive connections must not block stop()
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], sandbox: Sandbox, provider: str | None = None) -> None:
        self.sandbox = sandbox
        self.provider = provider  # a simulator's own port: every path is that simulator's
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _RequestHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client that goes away mid-request (killed, timed out) is normal for a simulator: one
        # debug line, not socketserver's traceback on stderr (which a CLI in the same process shares)
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):
            log.debug("client %s went away: %s", client_address, exc)
            return
        log.exception("sandbox request from %s failed", client_address)


class _Dropped(Exception):
    """The answer must be: close the connection without a response."""


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real APIs
    timeout = 120  # idle keep-alive connections are closed after this (clients expire sooner)
    # An answer goes out in one write (`_send`), but one past a segment ends in a small one:
    # without TCP_NODELAY, Nagle plus delayed ACKs could add ~40 ms to it.
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("sandbox: %s " + format, self.address_string(), *args)

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks: list[bytes] = []
            while True:
                size_line = self.rfile.readline(65537)
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        if len(body) < length:
            # the client went away mid-request (killed, timed out): like a real server, never act
            # on a truncated request
            raise ConnectionError(f"request body cut off after {len(body)} of {length} bytes")
        return body

    def _dispatch(self) -> None:
        try:
            body = self._read_body()
        except (ValueError, OSError):
            self.close_connection = True
            return
        try:
            response = self.server.sandbox._serve(self, body)
        except _Dropped:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        except Exception as exc:  # never let a bug kill the connection without an answer
            log.exception("sandbox: request failed: %s %s", self.command, self.path)
            response = SimResponse(500, {"error": f"sandbox internal error: {type(exc).__name__}: {exc}"})
        try:
            self._send(response)
        except OSError:  # the client went away (timed out on a delayed answer, ...)
            self.close_connection = True

    def _send(self, response: SimResponse) -> None:
        payload = response.encode()
        self.send_response(response.status)
        no_body = response.status in (204, 304) or 100 <= response.status < 200
        if not no_body:
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(payload)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        body = bool(payload) and not no_body and self.command != "HEAD"
        if body and self.request_version != "HTTP/0.9":
            # Headers and body in one write (~12% of the CPU of a small GET): end_headers's b"\r\n"
            # and the body join http.server's buffer of the pending headers.
            self._headers_buffer.extend((b"\r\n", payload))  # type: ignore[attr-defined]
            self.flush_headers()
        else:
            self.end_headers()
            if body:
                self.wfile.write(payload)
        self.wfile.flush()

    # Every method OpenAPI names (3.2 adds QUERY): without a do_<METHOD>, http.server answers an
    # HTML 501 where an API server answers 405 with `Allow`.
    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_TRACE = do_QUERY = _dispatch


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
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # guards the request log and the faults
        self._log: deque[LoggedRequest] = deque(maxlen=max_logged)
        self._lifecycle = threading.Lock()
        self._faults: list[Fault] = []
        self.root_ports: dict[str, int] | None = (
            dict(root_ports) if isinstance(root_ports, dict) else ({} if root_ports else None)
        )
        self._root_servers: list[tuple[_Server, threading.Thread]] = []
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
        server = _Server((self.host, self.port), self)
        self._server = server
        self.port = server.server_address[1]
        self.url = f"http://{self.host}:{self.port}"
        for type_name, sim in self._sims.items():
            sim.base_url = self.base_url(type_name)
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"reconciler-sandbox-{self.port}",
            daemon=True,
        )
        self._thread.start()
        if self.root_ports is not None:
            for type_name in self._sims:
                own = _Server((self.host, self.root_ports.get(type_name, 0)), self, provider=type_name)
                # kept, so that a restarted sandbox answers on the same ports (like `port`)
                self.root_ports[type_name] = own.server_address[1]
                thread = threading.Thread(
                    target=own.serve_forever,
                    kwargs={"poll_interval": 0.05},
                    name=f"reconciler-sandbox-{type_name}-{own.server_address[1]}",
                    daemon=True,
                )
                thread.start()
                self._root_servers.append((own, thread))
        log.info("sandbox serving %s on %s", ", ".join(self._sims), self.url)

    def stop(self) -> None:
        """Stop serving and close open connections (worlds are already on disk)."""
        with self._lifecycle:
            self._stop()

    def _stop(self) -> None:
        server = self._server
        if server is None:
            return
        self._stopping.set()  # wakes requests sleeping in a delay
        servers = [(server, self._thread), *self._root_servers]
        for each, _ in servers:
            each.shutdown()
        for each, thread in servers:
            with each.connections_lock:
                conns = list(each.connections)
            for conn in conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            each.server_close()
            if thread is not None:
                thread.join(timeout=5)
        self._root_servers = []
        for sim in self._sims.values():
            if sim.store is not None:
                sim.store.close()
        self._server = None
        self._thread = None

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

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)

    def _serve(self, handler: _RequestHandler, body: bytes) -> SimResponse:
        method = handler.command.upper()
        split = urlsplit(handler.path)
        query = parse_qs(split.query, keep_blank_values=True)
        headers = {k.lower(): v for k, v in handler.headers.items()}
        if handler.server.provider is not None:
            # a simulator's own port: the whole path is the provider's (no control API here)
            first, rest = handler.server.provider, "/" + split.path.lstrip("/")
        else:
            segments = split.path.lstrip("/").split("/", 1)
            first = unquote(segments[0])
            rest = "/" + segments[1] if len(segments) > 1 else "/"
        if handler.server.provider is None and first == CONTROL_PREFIX:
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
                    LoggedRequest(first, method, sub, query, headers, body, 0, time.time(), handler.path),
                    answer.status,
                )
                return answer
            sub = sub[len(base) :] or "/"
        self.traffic.enter(first)
        entered = time.monotonic()
        try:
            return self._answer(sim, first, handler, method, sub, query, headers, body)
        finally:
            self.traffic.leave(first, time.monotonic() - entered)

    def _answer(
        self,
        sim: Simulator,
        first: str,
        handler: _RequestHandler,
        method: str,
        sub: str,
        query: dict[str, list[str]],
        headers: dict[str, str],
        body: bytes,
    ) -> SimResponse:
        entry = LoggedRequest(first, method, sub, query, headers, body, 0, time.time(), handler.path)
        req = SimRequest(method, sub, query, headers, body, first)

        self._sleep(self.latency)
        fault = self._take_fault(first, method, sub)
        response: SimResponse | None = None
        if fault is not None and not fault.after_handling:
            self._sleep(fault.delay)
            if fault.drop:
                self._record(entry, 0)
                raise _Dropped
            if fault.status is not None:
                response = fault.response()
        if response is None:
            response = sim.handle(req)
        if fault is not None and fault.after_handling:
            self._sleep(fault.delay)
            if fault.drop:
                self._record(entry, 0)
                raise _Dropped
            if fault.status is not None:
                response = fault.response()
        self._record(entry, response.status)
        return response

    def _record(self, entry: LoggedRequest, status: int) -> None:
        entry.status = status
        with self._lock:
            self._log.append(entry)
