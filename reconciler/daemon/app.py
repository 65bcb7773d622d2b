"""The daemon's HTTP side: `/healthz`, `/readyz`, `/metrics`, `/status`, `/hooks/lucid` and its auth.

Handlers only read the daemon through `DaemonView` (queueing is their one write), so the app can
be served in-process by a test with `httpx.ASGITransport`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import socket
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from reconciler.daemon.metrics import Metrics
from reconciler.orphans import Orphan
from reconciler.report.views import status_entry
from reconciler.state_commands import read_orphans

if TYPE_CHECKING:
    from reconciler.errors import Problem
    from reconciler.plan import ModelPlan
    from reconciler.spec import ManifestSet
    from reconciler.state.base import StateStore

log = logging.getLogger("reconciler.daemon")

#: Holds the shared secret that authenticates `/hooks/lucid`.
WEBHOOK_SECRET_ENV = "RECONCILER_LUCID_WEBHOOK_SECRET"
SIGNATURE_HEADER = "x-reconciler-signature"
#: `/hooks/lucid?token=<secret>`: set RECONCILER_LUCID_CALLBACK_URL=https://host/hooks/lucid?token=...
TOKEN_PARAM = "token"
MAX_HOOK_BODY = 1 << 20
#: On SIGTERM the HTTP server gets this long after in-flight work (10 s budget in all).
HTTP_GRACE_SECONDS = 1


class DaemonView(Protocol):
    """What the endpoints read from the running daemon (`lifecycle.Daemon` provides it)."""

    metrics: Metrics
    webhook_secret: str | None
    stopping: asyncio.Event
    locked: bool
    loaded: bool
    state: StateStore | None

    @property
    def manifests(self) -> ManifestSet: ...

    @property
    def role(self) -> str:
        """`leader` or `standby`."""
        ...

    @property
    def problems(self) -> list[Problem]: ...

    @property
    def pending(self) -> dict[str, str]: ...

    def task_problems(self) -> list[str]:
        """Essential tasks that stopped while not stopping."""
        ...

    def current_plans(self) -> list[ModelPlan]:
        """The plans `/status` and the `reconciler_models` gauge show."""
        ...

    def enqueue(self, names: Iterable[str], trigger: str) -> None:
        """Ask the worker to reconcile these models."""
        ...


def hook_authorized(secret: str, body: bytes, headers: Mapping[str, str], token: str | None = None) -> bool:
    """True when the request carries `X-Reconciler-Signature: sha256=<hex HMAC-SHA256(body)>`,
    `Authorization: Bearer <secret>` or the `?token=<secret>` query parameter (Lucid is only given
    a callback URL); all compared in constant time."""
    key = secret.encode()
    ok = token is not None and hmac.compare_digest(key, token.encode())
    signature = headers.get(SIGNATURE_HEADER)
    if signature is not None:
        expected = b"sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest().encode()
        ok = hmac.compare_digest(expected, signature.strip().lower().encode())
    authorization = headers.get("authorization")
    if authorization is not None:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() == "bearer":
            ok = hmac.compare_digest(key, token.strip().encode()) or ok
    return ok


def _json(doc: Any, status: int = 200) -> Response:
    return Response(json.dumps(doc, default=str), status_code=status, media_type="application/json")


def _client(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "unknown client"


class Endpoints:
    """The request handlers, over one daemon."""

    def __init__(self, daemon: DaemonView) -> None:
        self.daemon = daemon

    async def healthz(self, request: Request) -> Response:
        """Process alive (and its worker, scheduler and watcher running)."""
        dead = self.daemon.task_problems()
        return _json({"status": "ok" if not dead else "failing", "problems": dead}, 200 if not dead else 503)

    async def readyz(self, request: Request) -> Response:
        """Ready: the leader (its lease held), manifests loaded, state reachable, not stopping.
        A standby is alive but not ready, so a readiness probe sends webhooks to the leader only."""
        d = self.daemon
        problems = d.task_problems()
        if d.stopping.is_set():
            problems.append("shutting down")
        if not d.locked:
            problems.append("waiting for the state lock")
        if not d.loaded:
            problems.append("manifests not loaded yet")
        if d.state is not None:
            try:
                await asyncio.wait_for(d.state.ping(), 3.0)
            except Exception as exc:
                problems.append(f"state unreachable: {exc or type(exc).__name__}")
        else:
            problems.append("state not open yet")
        d.metrics.ready.set(0 if problems else 1)
        body = {"ready": not problems, "role": d.role, "problems": problems, "models": len(d.manifests.models)}
        return _json(body, 503 if problems else 200)

    async def metrics(self, request: Request) -> Response:
        """Prometheus text exposition."""
        return Response(self.daemon.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def status(self, request: Request) -> Response:
        """Like `reconciler status --output json` (its orphans too), plus the manifest problems."""
        d = self.daemon
        doc = {
            "format_version": 1,
            "role": d.role,
            "models": [status_entry(p) for p in d.current_plans()],
            "orphans": [o.entry() for o in await self._orphans()],
            "manifest_errors": [str(p) for p in d.problems],
            "pending": sorted(d.pending),
        }
        return _json(doc)

    async def _orphans(self) -> list[Orphan]:
        """As `status` lists them, reading the names of every record and the orphans' records only
        (never all 10,000 records per request)."""
        state = self.daemon.state
        if state is None:
            return []
        return await read_orphans(state, self.daemon.manifests.models)

    async def lucid_hook(self, request: Request) -> Response:
        """Lucid's training callback: observe the models with that model_id at once."""
        d = self.daemon
        if not d.webhook_secret:
            d.metrics.webhooks.labels("lucid", "disabled").inc()
            return _json({"error": f"webhook disabled: set {WEBHOOK_SECRET_ENV}"}, 503)
        if d.stopping.is_set():
            return _json({"error": "shutting down"}, 503)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_HOOK_BODY:
            return _json({"error": "body too large"}, 413)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_HOOK_BODY:
                return _json({"error": "body too large"}, 413)
        # the query string carries the secret: it is read here and never logged, counted or stored
        token = request.query_params.get(TOKEN_PARAM)
        if not hook_authorized(d.webhook_secret, body, request.headers, token):
            d.metrics.webhooks.labels("lucid", "unauthorized").inc()
            log.warning("rejected a /hooks/lucid call without a valid signature from %s", _client(request))
            return _json({"error": "invalid or missing signature"}, 401)
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            doc = None
        model_id = doc.get("model_id") if isinstance(doc, dict) else None
        if not isinstance(model_id, str) or not model_id:
            d.metrics.webhooks.labels("lucid", "invalid").inc()
            return _json({"error": "expected a JSON object with a string model_id"}, 400)
        names = sorted(
            m.name
            for m in d.manifests.models.values()
            if m.provider_type == "lucid" and getattr(m.model, "model_id", None) == model_id
        )
        d.metrics.webhooks.labels("lucid", "accepted" if names else "unmatched").inc()
        if names:
            log.info("lucid callback for model_id %s: observing %s", model_id, ", ".join(names))
            d.enqueue(names, "webhook")
        else:
            log.warning("lucid callback for model_id %s, which no manifest declares", model_id)
        return _json({"accepted": True, "models": names}, 202)


def build_app(daemon: DaemonView) -> Starlette:
    """The daemon's HTTP endpoints."""
    e = Endpoints(daemon)
    routes = [
        Route("/healthz", e.healthz, methods=["GET", "HEAD"]),
        Route("/readyz", e.readyz, methods=["GET", "HEAD"]),
        Route("/metrics", e.metrics, methods=["GET"]),
        Route("/status", e.status, methods=["GET"]),
        Route("/hooks/lucid", e.lucid_hook, methods=["POST"]),
    ]
    return Starlette(routes=routes)


class _Server(uvicorn.Server):
    """uvicorn without its signal handling: the daemon owns SIGTERM/SIGINT and the shutdown order."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(host: str, port: int) -> socket.socket:
    host = host.strip("[]")
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class HttpServer:
    """The app served by uvicorn on a socket bound before anything else starts."""

    def __init__(self, daemon: DaemonView, host: str, port: int) -> None:
        """Bind at once (OSError when the address is taken), serve once `start` is called."""
        self.sock = _bind(host, port)
        config = uvicorn.Config(
            build_app(daemon),
            log_config=None,
            access_log=False,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=HTTP_GRACE_SECONDS,
        )
        self.server = _Server(config)
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Serve in a task of the running loop."""
        self.task = asyncio.create_task(self.server.serve(sockets=[self.sock]), name="http")

    async def stop(self) -> None:
        """Stop serving within HTTP_GRACE_SECONDS (+1); a slow client never delays the exit."""
        self.server.should_exit = True
        if self.task is not None:
            try:
                await asyncio.wait_for(self.task, HTTP_GRACE_SECONDS + 1)
            except Exception:  # TimeoutError included
                self.task.cancel()
                await asyncio.gather(self.task, return_exceptions=True)
        self.sock.close()
