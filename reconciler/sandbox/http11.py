"""A small asyncio HTTP/1.1 server for the sandbox: keep-alive, pipelining, chunked request bodies.

One event loop serves every port of a sandbox, so a request waiting out the injected latency is
an await, not a sleeping thread: served time stays close to the latency under thousands of
concurrent requests, where a thread per connection spent it on scheduling and the GIL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus

from reconciler.sandbox.wire import SimResponse

log = logging.getLogger("reconciler.sandbox")

#: Idle keep-alive connections are closed after this (clients expire theirs sooner).
IDLE_TIMEOUT = 120.0
MAX_HEADER_BYTES = 65536
# Every method OpenAPI names (3.2 adds QUERY): the simulators answer 405 with `Allow` for the
# ones a path does not serve; any other method gets 501 as from http.server.
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE", "QUERY"})


class Dropped(Exception):
    """The answer must be: close the connection without a response."""


@dataclass
class HTTPRequest:
    """One parsed request: what the sandbox's dispatch needs."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes


Handler = Callable[[HTTPRequest, str | None], Awaitable[SimResponse]]


class _BadRequest(Exception):
    pass


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (bound now, so the caller learns the port and any error at once)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        # a restarted sandbox answers on the same ports, as http.server's allow_reuse_address
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _header(headers: list[tuple[str, str]], name: str) -> str:
    for key, value in headers:
        if key.lower() == name:
            return value
    return ""


async def _read_body(reader: asyncio.StreamReader, headers: list[tuple[str, str]]) -> bytes:
    if "chunked" in _header(headers, "transfer-encoding").lower():
        chunks: list[bytes] = []
        while True:
            size_line = await reader.readline()
            if not size_line.endswith(b"\n"):
                raise ConnectionError("request body cut off")
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while True:  # trailers
                    line = await reader.readline()
                    if line in (b"\r\n", b"\n"):
                        break
                    if not line:
                        raise ConnectionError("request body cut off")
                break
            chunks.append(await reader.readexactly(size))
            await reader.readline()
        return b"".join(chunks)
    length = int(_header(headers, "content-length") or 0)
    # a client that went away mid-body raises IncompleteReadError: like a real server, never act
    # on a truncated request
    return await reader.readexactly(length) if length > 0 else b""


def _parse_head(raw: bytes) -> tuple[str, str, str, list[tuple[str, str]]]:
    lines = raw.decode("iso-8859-1").split("\r\n")
    parts = lines[0].split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise _BadRequest(f"bad request line {lines[0]!r}")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise _BadRequest(f"bad header line {line!r}")
        headers.append((name.strip(), value.strip()))
    return parts[0], parts[1], parts[2], headers


def _encode(response: SimResponse, method: str, close: bool) -> bytes:
    payload = response.encode()
    try:
        reason = HTTPStatus(response.status).phrase
    except ValueError:
        reason = ""
    lines = [
        f"HTTP/1.1 {response.status} {reason}",
        "Server: reconciler-sandbox",
        f"Date: {formatdate(time.time(), usegmt=True)}",
    ]
    no_body = response.status in (204, 304) or 100 <= response.status < 200
    if not no_body:
        lines.append(f"Content-Type: {response.content_type}")
        lines.append(f"Content-Length: {len(payload)}")
    lines.extend(f"{name}: {value}" for name, value in response.headers.items())
    if close:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    if payload and not no_body and method != "HEAD":
        return head + payload
    return head


class Server:
    """Serves `handler` on listening sockets, all on one event loop in a background thread."""

    def __init__(self, handler: Handler, name: str) -> None:
        self.handler = handler
        self.name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        self._servers: list[asyncio.Server] = []
        self._connections: set[asyncio.Task[None]] = set()
        self.thread: threading.Thread | None = None

    def serve(self, sockets: list[tuple[socket.socket, str | None]]) -> None:
        """Start the loop thread serving each (socket, provider of a root port or None)."""
        loop = asyncio.new_event_loop()
        self.loop = loop
        ready = threading.Event()
        failure: list[BaseException] = []

        def accept(provider: str | None) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
            return lambda reader, writer: self._track(reader, writer, provider)

        async def open_all() -> None:
            for sock, provider in sockets:
                self._servers.append(await asyncio.start_server(accept(provider), sock=sock, limit=MAX_HEADER_BYTES))

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(open_all())
            except BaseException as exc:  # reported to start()
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        thread = threading.Thread(target=run, name=self.name, daemon=True)
        self.thread = thread
        thread.start()
        ready.wait()
        if failure:
            thread.join()
            raise failure[0]

    def close(self) -> None:
        """Stop listening, close every connection (idle keep-alive ones too) and the loop."""
        loop = self.loop
        if loop is None:
            return

        async def shut() -> None:
            for server in self._servers:
                server.close()
            for task in list(self._connections):
                task.cancel()
            if self._connections:
                await asyncio.wait(list(self._connections), timeout=5)
            loop.stop()

        if loop.is_running():
            asyncio.run_coroutine_threadsafe(shut(), loop)
        if self.thread is not None:
            self.thread.join(timeout=5)
        self.loop = None

    async def _track(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, provider: str | None) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            # headers and body go out in one write, but a pipelined client's next answer must not
            # wait out Nagle plus a delayed ACK
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await self._connection(reader, writer, provider)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            log.debug("client went away: %s", exc)
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("sandbox connection failed")
        finally:
            self._connections.discard(task)
            writer.close()

    async def _connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, provider: str | None
    ) -> None:
        while True:
            try:
                raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_TIMEOUT)
            except asyncio.IncompleteReadError:
                return  # closed between requests
            try:
                method, target, version, headers = _parse_head(raw[:-4])
            except _BadRequest as exc:
                writer.write(_encode(SimResponse(400, {"error": str(exc)}), "GET", True))
                await writer.drain()
                return
            connection = _header(headers, "connection").lower()
            close = "close" in connection or (version == "HTTP/1.0" and "keep-alive" not in connection)
            method = method.upper()
            if method not in METHODS:
                writer.write(_encode(SimResponse(501, {"error": f"Unsupported method ({method!r})"}), method, True))
                await writer.drain()
                return
            if _header(headers, "expect").lower() == "100-continue":
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            try:
                body = await _read_body(reader, headers)
            except ValueError:
                return
            try:
                response = await self.handler(HTTPRequest(method, target, headers, body), provider)
            except Dropped:
                return
            except Exception as exc:  # never let a bug kill the connection without an answer
                log.exception("sandbox: request failed: %s %s", method, target)
                response = SimResponse(500, {"error": f"sandbox internal error: {type(exc).__name__}: {exc}"})
            writer.write(_encode(response, method, close))
            await writer.drain()
            if close:
                return
