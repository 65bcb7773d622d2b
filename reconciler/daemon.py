"""`reconciler daemon`: watch the manifests, reconcile continuously, serve health, metrics and hooks.

A thin shell over `reconciler.engine.Engine`; everything it decides comes from `Engine.plan` and
everything it writes goes through `Engine.apply` / `Engine.persist_refresh`. What it adds:

- manifests are parsed per file (`spec.parse_file`) and assembled (`spec.assemble`) from the
  newest version of each file that is valid, else that file's last good version, so a broken
  file is reported while its models keep being reconciled as they were. Files are compared by
  content digest, never by event kind: an editor's atomic save and Kubernetes' ConfigMap swap
  (a `..data` symlink replaced atomically) look the same;
- one worker reconciles queued model names in batches (a saved change, a full resync, a poll of
  in-flight trainings at each provider's own interval, a Lucid callback), so trainings are never
  triggered twice concurrently and a shutdown waits for exactly one batch;
- HTTP (`/healthz`, `/readyz`, `/metrics`, `/status`, `/hooks/lucid`), sd_notify for systemd.

Starlette, uvicorn and prometheus-client are imported here only, and this module is imported only
by the `daemon` command, so other commands start fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import json
import logging
import os
import random
import signal
import socket
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from reconciler import runtime
from reconciler.domain import ProviderConfig, RecordStatus
from reconciler.engine import utcnow
from reconciler.errors import Problem, ReconcilerError, TemporaryProviderError
from reconciler.logs import Redactor, setup_logging
from reconciler.plan import Action, ModelPlan, count_in_flight, limit_concurrency
from reconciler.providers import adapter_class
from reconciler.providers.base import ProviderAdapter
from reconciler.providers.http import REQUEST_OBSERVERS
from reconciler.report.views import status_entry
from reconciler.spec import FileResult, ManifestSet, assemble, find_manifest_files, parse_file

if TYPE_CHECKING:
    from reconciler.domain import DesiredModel
    from reconciler.engine import Engine
    from reconciler.sandbox.server import Sandbox
    from reconciler.state.base import StateStore

log = logging.getLogger("reconciler.daemon")

#: Holds the shared secret that authenticates `/hooks/lucid`.
WEBHOOK_SECRET_ENV = "RECONCILER_LUCID_WEBHOOK_SECRET"
SIGNATURE_HEADER = "x-reconciler-signature"
MAX_HOOK_BODY = 1 << 20
#: SIGTERM to exit: in-flight work gets this long, the HTTP server the rest of the 10 s budget.
WORK_GRACE_SECONDS = 6.0
HTTP_GRACE_SECONDS = 1
#: Safety net beside file events (a missed inotify event, a watched symlink replaced): compare
#: every manifest's digest this often.
RESCAN_SECONDS = 5.0
#: watchfiles groups events for at most this long; a save is reconciled well within 2 s.
WATCH_DEBOUNCE_MS = 400
WATCH_STEP_MS = 50
#: Polls are spread by up to this fraction of the interval, only ever later (PhotoGPT's floor).
POLL_JITTER = 0.1
#: A batch that failed (state unreachable, a bug) is retried after this, doubling up to the cap.
RETRY_FIRST_SECONDS = 5.0
RETRY_CAP_SECONDS = 300.0
#: Which trigger names a batch in the duration histogram when several are mixed.
TRIGGER_ORDER = ("webhook", "change", "startup", "poll", "retry", "resync")
RECONCILE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


@dataclass
class DaemonOptions:
    """What `reconciler daemon` was asked to do (built by the CLI)."""

    paths: list[str]
    state_url: str
    sandbox: bool = False
    resync: timedelta = timedelta(minutes=10)
    host: str = "127.0.0.1"
    port: int = 8080
    log_format: str = "text"  # "text" | "json"
    lock_timeout: float = 60.0


def run_daemon(opts: DaemonOptions) -> int:
    """Run the daemon until SIGTERM/SIGINT; the process exit code (0 after a clean stop)."""
    redactor = setup_logging(opts.log_format)
    try:
        return asyncio.run(Daemon(opts, redactor=redactor).run())
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were installed
        return 130


# ---------------------------------------------------------------- systemd


def sd_notify(message: str, env: Mapping[str, str] | None = None) -> bool:
    """Send a datagram to systemd's $NOTIFY_SOCKET (READY=1, STOPPING=1, WATCHDOG=1, STATUS=...).

    False when not run by systemd (no socket) or the send failed; never raises.
    """
    address = (env if env is not None else os.environ).get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            # never block the event loop on a reader that is not reading: drop the message instead
            sock.setblocking(False)
            sock.connect(address)
            sock.send(message.encode())
    except OSError as exc:
        log.debug("sd_notify %r failed: %s", message, exc)
        return False
    return True


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when not asked for."""
    env = env if env is not None else os.environ
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2 / 1_000_000


# ---------------------------------------------------------------- webhook authentication


def hook_authorized(secret: str, body: bytes, headers: Mapping[str, str]) -> bool:
    """True when the request carries `X-Reconciler-Signature: sha256=<hex HMAC-SHA256(body)>`
    or `Authorization: Bearer <secret>`; both compared in constant time."""
    key = secret.encode()
    ok = False
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


# ---------------------------------------------------------------- metrics


class Metrics:
    """The daemon's Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        # `_created` series double the output and no dashboard uses them
        disable_created_metrics()  # type: ignore[no-untyped-call]
        r = self.registry = CollectorRegistry()
        self.models = Gauge(
            "reconciler_models", "Models by provider and planned action.", ["provider", "action"], registry=r
        )
        self.trainings = Counter(
            "reconciler_trainings_triggered",
            "Train calls by provider and outcome (started, unconfirmed, not-started).",
            ["provider", "outcome"],
            registry=r,
        )
        self.finished = Counter(
            "reconciler_trainings_finished",
            "Trainings seen ending, by provider and status.",
            ["provider", "status"],
            registry=r,
        )
        self.requests = Counter(
            "reconciler_provider_requests",
            "HTTP requests to providers by provider, method and status (HTTP code or transport error).",
            ["provider", "method", "status"],
            registry=r,
        )
        self.errors = Counter(
            "reconciler_provider_errors",
            "Provider requests that failed (non-2xx or transport error) by provider and status.",
            ["provider", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "reconciler_provider_request_duration_seconds", "Provider request latency.", ["provider"], registry=r
        )
        self.reconcile_seconds = Histogram(
            "reconciler_reconcile_duration_seconds",
            "Duration of one reconcile batch (observe, plan, apply) by what triggered it.",
            ["trigger"],
            buckets=RECONCILE_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("reconciler_queue_depth", "Models waiting to be reconciled.", registry=r)
        self.manifest_errors = Gauge(
            "reconciler_manifest_errors",
            "Problems in the manifests (their files' last good version is used).",
            registry=r,
        )
        self.webhooks = Counter(
            "reconciler_webhooks", "Webhook calls by hook and result.", ["hook", "result"], registry=r
        )
        self.last_resync = Gauge(
            "reconciler_last_resync_timestamp_seconds",
            "When the last full resync (or the startup one) was queued (Unix time).",
            registry=r,
        )
        self.ready = Gauge("reconciler_ready", "1 when /readyz would answer 200.", registry=r)

    def on_request(self, provider: str, method: str, outcome: str, seconds: float) -> None:
        """`REQUEST_OBSERVERS` hook: called after every provider HTTP exchange."""
        self.requests.labels(provider, method, outcome).inc()
        self.request_seconds.labels(provider).observe(seconds)
        if not (outcome.isdigit() and 200 <= int(outcome) < 300):
            self.errors.labels(provider, outcome).inc()

    def set_models(self, plans: Iterable[ModelPlan]) -> None:
        counts: dict[tuple[str, str], int] = defaultdict(int)
        for p in plans:
            counts[(p.model.provider, p.action.value)] += 1
        self.models.clear()
        for (provider, action), n in counts.items():
            self.models.labels(provider, action).set(n)

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))


# ---------------------------------------------------------------- manifests, per file


@dataclass
class _FileState:
    digest: str
    latest: FileResult  # the file as it is now
    good: FileResult | None  # its last version that assembled without problems


def _digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        return f"unreadable:{exc.errno}"


def _provider_key(cfg: ProviderConfig | None) -> ProviderConfig | None:
    # where a Provider is written does not change what reconciling its models does
    return dataclasses.replace(cfg, source=None) if cfg is not None else None


def _model_key(m: DesiredModel, providers: Mapping[str, ProviderConfig]) -> tuple[Any, ...]:
    """What, when it changes, makes a model worth reconciling again (not comments or line numbers)."""
    return (m.fingerprint, m.provider, m.policy, _provider_key(providers.get(m.provider)))


def _depends_on_local_files(provider_type: str) -> bool:
    """Types whose spec reads files beside the manifest (PhotoGPT's input_images)."""
    try:
        cls = adapter_class(provider_type)
    except (KeyError, ImportError):
        return False
    return cls.check_local.__func__ is not ProviderAdapter.check_local.__func__  # type: ignore[attr-defined]


def _in_flight(p: ModelPlan) -> bool:
    return (
        p.action is Action.WAIT
        or (p.record is not None and p.record.status in (RecordStatus.INTENT, RecordStatus.TRAINING))
        or (p.observation is not None and p.observation.in_flight)
    )


def _json(doc: Any, status: int = 200) -> Response:
    return Response(json.dumps(doc, default=str), status_code=status, media_type="application/json")


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


# ---------------------------------------------------------------- the daemon


class Daemon:
    """State and tasks of one daemon process; `run()` is its whole life."""

    def __init__(
        self,
        opts: DaemonOptions,
        *,
        redactor: Redactor | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.opts = opts
        self.env = env if env is not None else os.environ
        self.redactor = redactor or Redactor(self.env)
        self.webhook_secret = self.env.get(WEBHOOK_SECRET_ENV) or None
        self.metrics = Metrics()
        self.metrics.queue_depth.set_function(lambda: len(self.pending))
        self.files: dict[str, _FileState] = {}
        self.find_problems: list[Problem] = []
        self.problems: list[Problem] = []
        self.manifests = ManifestSet(models={}, providers={}, files=[])
        self.plans: dict[str, ModelPlan] = {}
        self.pending: dict[str, str] = {}  # model name -> what asked for it
        self.wake_at: dict[str, datetime] = {}  # model name -> reconcile again then (backoff, expiry)
        self.poll_due: dict[str, float] = {}  # provider -> monotonic time of its next poll
        self.failures: dict[str, int] = {}  # model name -> consecutive failed batches
        self.last_errors: dict[str, str] = {}  # model name -> the error last written to history
        self.wakeup = asyncio.Event()
        self.stopping = asyncio.Event()
        self.loaded = False
        self.locked = False
        self.state: StateStore | None = None
        self.sandbox: Sandbox | None = None
        self.engine: Engine | None = None
        self._engine_stale = True
        self._essential: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> int:
        """Serve, take the lock, load, reconcile until asked to stop; the exit code."""
        from reconciler.state import open_state

        opts = self.opts
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig)
        async with contextlib.AsyncExitStack() as stack:
            try:
                self.sandbox = stack.enter_context(runtime.sandbox_for(opts.sandbox, opts.state_url))
                if self.sandbox is not None:
                    from reconciler.sandbox.server import SANDBOX_API_KEYS

                    self.redactor.add_values(SANDBOX_API_KEYS.values())
                # HTTP first: /healthz answers while we wait for the lock, /readyz says why not ready
                try:
                    sock = _bind(opts.host, opts.port)
                except OSError as exc:
                    log.error("cannot listen on %s:%s: %s", opts.host, opts.port, exc.strerror or exc)
                    return 1
                server = self._http_server()
                http_task = asyncio.create_task(server.serve(sockets=[sock]), name="http")
                stack.push_async_callback(self._stop_http, server, http_task, sock)
                self.state = await open_state(opts.state_url)
                stack.push_async_callback(self.state.close)
                self.redactor.add_values(_url_passwords(opts.state_url))
                if not await self._take_lock(stack, runtime.holder("daemon")):
                    return 0  # asked to stop while waiting
                self.locked = True
            except ReconcilerError as exc:  # LockHeldError names the holder
                log.error("error: %s", exc)
                return 1
            REQUEST_OBSERVERS.append(self.metrics.on_request)
            stack.callback(REQUEST_OBSERVERS.remove, self.metrics.on_request)
            return await self._serve_until_stopped()
        return 0  # unreachable: the stack's body returns (mypy cannot see that)

    async def _take_lock(self, stack: contextlib.AsyncExitStack, holder: str) -> bool:
        assert self.state is not None
        waiting = asyncio.create_task(stack.enter_async_context(self.state.lock(holder, self.opts.lock_timeout)))
        stop = asyncio.create_task(self.stopping.wait())
        await asyncio.wait({waiting, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if waiting.done():
            waiting.result()  # LockHeldError propagates
            log.info("holding the state lock on %s as %s", self.state.url, holder)
            return True
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError, ReconcilerError):
            await waiting
        return False

    async def _serve_until_stopped(self) -> int:
        self._load("startup")
        self.enqueue(self.manifests.models, "startup")
        self.metrics.last_resync.set(time.time())
        self.loaded = True
        tasks = {
            "worker": self._worker(),
            "scheduler": self._scheduler(),
            "watcher": self._watcher(),
        }
        self._essential = [asyncio.create_task(coro, name=name) for name, coro in tasks.items()]
        watchdog = None
        interval = watchdog_interval(self.env)
        if interval:
            watchdog = asyncio.create_task(self._watchdog(interval), name="watchdog")
        models = len(self.manifests.models)
        log.info(
            "daemon ready: %d models from %s, listening on %s:%d",
            models,
            ", ".join(self.opts.paths),
            self.opts.host,
            self.opts.port,
            extra={"models": models},
        )
        sd_notify(f"READY=1\nSTATUS=reconciling {models} models", self.env)
        stop = asyncio.create_task(self.stopping.wait())
        done, _ = await asyncio.wait({stop, *self._essential}, return_when=asyncio.FIRST_COMPLETED)
        code = 0
        for task in done:
            if task is not stop and not self.stopping.is_set():
                code = 1
                exc = task.exception() if not task.cancelled() else None
                log.critical("the %s task ended unexpectedly; stopping", task.get_name(), exc_info=exc)
        self.request_stop()
        sd_notify("STOPPING=1", self.env)
        await self._shutdown(watchdog)
        log.info("daemon stopped")
        return code

    def request_stop(self, sig: int | None = None) -> None:
        """Stop taking new work; `run()` finishes the batch in flight and exits."""
        if sig is not None and not self.stopping.is_set():
            log.info("received %s: finishing in-flight work, then exiting", signal.Signals(sig).name)
        self.stopping.set()
        self.wakeup.set()

    async def _shutdown(self, watchdog: asyncio.Task[None] | None) -> None:
        by_name = {t.get_name(): t for t in self._essential}
        others = [t for n, t in by_name.items() if n != "worker"]
        if watchdog:
            others.append(watchdog)
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        worker = by_name.get("worker")
        if worker is not None and not worker.done():
            # the batch in flight finishes its requests and state writes; no new batch starts
            try:
                await asyncio.wait_for(asyncio.shield(worker), WORK_GRACE_SECONDS)
            except TimeoutError:
                log.warning(
                    "in-flight work did not finish within %.0fs; stopping it (an unacknowledged train call is settled "
                    "by observing on the next start)",
                    WORK_GRACE_SECONDS,
                )
                worker.cancel()
                await asyncio.gather(worker, return_exceptions=True)
        if self.engine is not None:
            with contextlib.suppress(Exception):
                await self.engine.aclose()

    def _http_server(self) -> _Server:
        config = uvicorn.Config(
            build_app(self),
            log_config=None,
            access_log=False,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=HTTP_GRACE_SECONDS,
        )
        return _Server(config)

    async def _stop_http(self, server: _Server, task: asyncio.Task[None], sock: socket.socket) -> None:
        server.should_exit = True
        try:
            await asyncio.wait_for(task, HTTP_GRACE_SECONDS + 1)
        except Exception:  # TimeoutError included: never let a slow client delay the exit
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        sock.close()

    async def _watchdog(self, interval: float) -> None:
        while True:
            if all(not t.done() for t in self._essential):  # a dead worker must look dead to systemd
                sd_notify("WATCHDOG=1", self.env)
            await asyncio.sleep(interval)

    # ------------------------------------------------------------ queue

    def enqueue(self, names: Iterable[str], trigger: str) -> None:
        """Ask the worker to reconcile these models (coalesced with what is already queued)."""
        if self.stopping.is_set():
            return
        added = False
        for name in names:
            current = self.pending.get(name)
            if current is None or TRIGGER_ORDER.index(trigger) < TRIGGER_ORDER.index(current):
                self.pending[name] = trigger
            added = True
        if added:
            self.wakeup.set()

    async def _worker(self) -> None:
        while not self.stopping.is_set():
            if not self.pending:
                self.wakeup.clear()
                await self.wakeup.wait()
                continue
            batch, self.pending = self.pending, {}
            await self._refresh_engine()
            await self._reconcile(batch)

    async def _refresh_engine(self) -> None:
        if not self._engine_stale and self.engine is not None:
            return
        assert self.state is not None
        old = self.engine
        self.engine = runtime.build_engine(self.manifests, self.state, self.sandbox, self.opts.paths)
        self._engine_stale = False
        if old is not None:
            await old.aclose()

    async def _reconcile(self, batch: Mapping[str, str]) -> None:
        engine = self.engine
        assert engine is not None
        names = sorted(n for n in batch if n in self.manifests.models)
        if not names:
            return
        trigger = min(batch.values(), key=TRIGGER_ORDER.index)
        models = [self.manifests.models[n] for n in names]
        started = time.monotonic()
        try:
            plans = await engine.plan(models)
            self._limit_across(plans)
            if self.stopping.is_set():
                # no new trainings during shutdown; still store what observing learned
                await engine.persist_refresh(plans)
                result = None
            else:
                result = await engine.apply([p for p in plans if self._worth_applying(p)])
        except Exception as exc:  # the state or a bug: keep the daemon alive, try these again later
            self._retry_later(names, exc)
            return
        finally:
            self.metrics.reconcile_seconds.labels(trigger).observe(time.monotonic() - started)
        for name in names:
            self.failures.pop(name, None)
        self._after(plans, result.outcomes if result else {}, result.adopted if result else [], trigger)

    def _limit_across(self, plans: list[ModelPlan]) -> None:
        """`max_concurrent_trainings` over every model, not only this batch (Engine.plan sees the batch)."""
        names = {p.name for p in plans}
        others = [p for n, p in self.plans.items() if n not in names and n in self.manifests.models]
        counts = count_in_flight(plans)
        for provider, n in count_in_flight(others).items():
            counts[provider] = counts.get(provider, 0) + n
        limits = {name: cfg.max_concurrent_trainings for name, cfg in self.manifests.providers.items()}
        limit_concurrency(plans, limits, counts)

    def _worth_applying(self, p: ModelPlan) -> bool:
        # apply writes an error event per call: write it when the error changes, not every poll
        if p.action is not Action.ERROR:
            self.last_errors.pop(p.name, None)
            return True
        message = str(p.error or "")
        if self.last_errors.get(p.name) == message:
            return False
        self.last_errors[p.name] = message
        return True

    def _retry_later(self, names: list[str], exc: Exception) -> None:
        n = max(self.failures.get(name, 0) for name in names) + 1
        delay = min(RETRY_FIRST_SECONDS * 2 ** (n - 1), RETRY_CAP_SECONDS)
        if isinstance(exc, ReconcilerError):
            log.error("reconciling %s failed: %s; retrying in %.0fs", ", ".join(names), exc, delay)
        else:
            log.exception("reconciling %s failed; retrying in %.0fs", ", ".join(names), delay)
        at = utcnow() + timedelta(seconds=delay)
        for name in names:
            self.failures[name] = n
            self.wake_at[name] = min(self.wake_at.get(name, at), at)

    def _after(self, plans: list[ModelPlan], outcomes: Mapping[str, Any], adopted: list[str], trigger: str) -> None:
        """Log what changed, count it, remember the plans for /status and the scheduler."""
        for p in plans:
            provider = p.model.provider
            fields = {"model": p.name, "provider": provider, "action": p.action.value, "trigger": trigger}
            for ev in p.events:
                if ev.event in ("succeeded", "failed"):
                    self.metrics.finished.labels(provider, ev.event).inc()
                    message = ev.detail.get("message") or ""
                    level = logging.INFO if ev.event == "succeeded" else logging.WARNING
                    log.log(
                        level, "%s: training %s%s", p.name, ev.event, f": {message}" if message else "", extra=fields
                    )
            previous = self.plans.get(p.name)
            codes = [r.code for r in p.reasons]
            if previous is None or previous.action is not p.action or [r.code for r in previous.reasons] != codes:
                detail = "; ".join(f"{r.code}: {r.detail}" if r.detail else r.code for r in p.reasons) or "in sync"
                level = logging.WARNING if p.action is Action.ERROR else logging.INFO
                log.log(level, "%s: %s (%s)", p.name, p.action.value, detail, extra={**fields, "reasons": codes})
            o = outcomes.get(p.name)
            if o is not None:
                outcome = "started" if o.started else "unconfirmed" if o.ambiguous else "not-started"
                self.metrics.trainings.labels(provider, outcome).inc()
                if o.started:
                    log.info("%s: training started (%s)", p.name, o.detail, extra={**fields, "outcome": outcome})
                else:
                    log.warning("%s: training not started: %s", p.name, o.detail, extra={**fields, "outcome": outcome})
            if p.name in adopted:
                log.info("%s: adopted the provider's model as matching the spec", p.name, extra=fields)
            self.plans[p.name] = p
            self._schedule_wake(p)
        self.metrics.set_models(p for n, p in self.plans.items() if n in self.manifests.models)

    def _schedule_wake(self, p: ModelPlan) -> None:
        """Reconcile again when a backoff ends or retrain_after expires, not only at the next resync."""
        self.wake_at.pop(p.name, None)
        rec = p.record
        if rec is None:
            return
        when = None
        if p.action is Action.HOLD and rec.next_attempt_at is not None:
            when = rec.next_attempt_at
        elif rec.status in (RecordStatus.SUCCEEDED, RecordStatus.ADOPTED) and rec.finished_at:
            retrain_after = p.model.policy.retrain_after
            if retrain_after:
                when = rec.finished_at + retrain_after
        # a time already past (retries exhausted, expired but suspended) would wake it in a loop
        if when is not None and when > utcnow():
            self.wake_at[p.name] = when

    # ------------------------------------------------------------ scheduler

    def _poll_interval(self, provider: str) -> float:
        engine = self.engine
        try:
            base = engine.poll_interval(provider) if engine is not None else None
        except KeyError:  # the engine predates this provider; the next batch refreshes it
            base = None
        if base is None:
            cfg = self.manifests.providers.get(provider)
            base = cfg.poll_interval if cfg else timedelta(seconds=60)
        return base.total_seconds() * (1 + random.uniform(0, POLL_JITTER))

    async def _scheduler(self) -> None:
        now = time.monotonic()
        resync = max(self.opts.resync.total_seconds(), 1.0)
        next_resync = now + resync
        next_rescan = now + RESCAN_SECONDS
        while not self.stopping.is_set():
            now = time.monotonic()
            if now >= next_resync:
                self._load("resync")
                self.enqueue(self.manifests.models, "resync")
                self.metrics.last_resync.set(time.time())
                log.info("full resync of %d models", len(self.manifests.models))
                next_resync = now + resync
            elif now >= next_rescan:
                self._load("rescan")
                next_rescan = now + RESCAN_SECONDS
            self._due_polls(now)
            self._due_wakes()
            sleep = min([next_resync, next_rescan, *self.poll_due.values()]) - time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), max(0.05, min(sleep, 1.0)))

    def _due_polls(self, now: float) -> None:
        """Each provider's in-flight trainings (and temporarily failing reads) at its poll interval."""
        by_provider: dict[str, list[str]] = defaultdict(list)
        for name, p in self.plans.items():
            if name not in self.manifests.models or name in self.pending:
                continue
            if _in_flight(p) or isinstance(p.error, TemporaryProviderError):
                by_provider[p.model.provider].append(name)
        for provider in [p for p in self.poll_due if p not in by_provider]:
            del self.poll_due[provider]
        for provider, names in by_provider.items():
            due = self.poll_due.get(provider)
            if due is None:
                self.poll_due[provider] = now + self._poll_interval(provider)
            elif now >= due:
                self.enqueue(names, "poll")
                self.poll_due[provider] = now + self._poll_interval(provider)

    def _due_wakes(self) -> None:
        now = utcnow()
        due = [n for n, at in self.wake_at.items() if at <= now]
        for name in due:
            del self.wake_at[name]
        if due:
            self.enqueue([n for n in due if n in self.manifests.models], "retry")

    # ------------------------------------------------------------ manifests

    async def _watcher(self) -> None:
        from watchfiles import awatch

        roots: set[str] = set()
        for raw in self.opts.paths:
            p = Path(raw)
            # a file is watched through its folder: an atomic save replaces the file's inode
            target = p if p.is_dir() else p.parent if p.parent.is_dir() else None
            if target is None:
                log.warning("%s does not exist: found only by the %.0fs rescan once it does", raw, RESCAN_SECONDS)
                continue
            roots.add(str(target))
        if not roots:
            await self.stopping.wait()
            return
        try:
            async for changes in awatch(
                *sorted(roots),
                watch_filter=None,  # the ConfigMap swap only touches hidden `..data` entries
                debounce=WATCH_DEBOUNCE_MS,
                step=WATCH_STEP_MS,
                ignore_permission_denied=True,
            ):
                self._load("change")
                self._local_files_changed({Path(path) for _, path in changes})
        except Exception as exc:  # a watched folder removed, inotify limits: the rescan still runs
            log.warning(
                "watching %s stopped (%s); changes are found by the %.0fs rescan",
                ", ".join(sorted(roots)),
                exc,
                RESCAN_SECONDS,
            )
        await self.stopping.wait()

    def _local_files_changed(self, paths: set[Path]) -> None:
        """A changed non-manifest file beside a model that reads local files (PhotoGPT images)."""
        others = [p for p in paths if p.suffix not in (".yaml", ".yml")]
        if not others:
            return
        touched = []
        for m in self.manifests.models.values():
            if not _depends_on_local_files(m.provider_type):
                continue
            root = m.manifest_dir.resolve()
            for p in others:
                try:
                    rel = p.resolve().relative_to(root)
                except ValueError:
                    continue
                # hidden entries (.git, .reconciler/ with the state and sandbox) are never inputs,
                # and reacting to our own state writes would loop
                if not any(part.startswith(".") for part in rel.parts):
                    touched.append(m.name)
                    break
        if touched:
            log.info("local files changed for %s", ", ".join(sorted(touched)))
            self.enqueue(touched, "change")

    def _load(self, trigger: str) -> None:
        """Re-read changed manifest files (by digest) and queue the models whose spec changed."""
        files, find_problems = find_manifest_files(self.opts.paths)
        seen: dict[str, _FileState] = {}
        changed = False
        for f in files:
            key = str(f)
            digest = _digest(f)
            st = self.files.get(key)
            if st is None or st.digest != digest:
                st = _FileState(digest, parse_file(f), st.good if st else None)
                changed = True
            seen[key] = st
        removed = sorted(set(self.files) - set(seen))
        if not changed and not removed and find_problems == self.find_problems and self.loaded:
            return
        self.files = seen
        self.find_problems = find_problems
        before = self.manifests
        manifests, problems = self._assemble()
        self._report_problems(problems)
        self.redactor.watch_env(cfg.api_key_env for cfg in manifests.providers.values())
        if manifests.models == before.models and manifests.providers == before.providers:
            return
        self.manifests = manifests
        self._engine_stale = True
        gone = sorted(set(before.models) - set(manifests.models))
        for name in gone:
            for table in (self.plans, self.pending, self.wake_at, self.failures, self.last_errors):
                table.pop(name, None)
        if gone:
            log.info("no longer in the manifests (nothing is deleted at the provider): %s", ", ".join(gone))
        touched = [
            name
            for name, m in manifests.models.items()
            if name not in before.models
            or _model_key(m, manifests.providers) != _model_key(before.models[name], before.providers)
        ]
        if touched and self.loaded:
            log.info("manifests changed (%s): reconciling %s", trigger, ", ".join(sorted(touched)))
            self.enqueue(touched, "change")
        self.metrics.set_models(p for n, p in self.plans.items() if n in self.manifests.models)

    def _assemble(self) -> tuple[ManifestSet, list[Problem]]:
        """Each file's newest version when it assembles cleanly with the rest, else its last good one."""
        chosen: dict[str, FileResult] = {}
        for path, st in self.files.items():
            if not st.latest.problems:
                chosen[path] = st.latest
            elif st.good is not None:
                chosen[path] = st.good
        reported: list[Problem] = list(self.find_problems)
        for st in self.files.values():
            reported.extend(st.latest.problems)
        while True:
            manifests, problems = assemble([chosen[p] for p in sorted(chosen)])
            blamed = {p.file for p in problems}
            fresh = [p for p in chosen if chosen[p] is not self.files[p].good]
            culprits = [p for p in fresh if p in blamed]
            if not culprits and problems and fresh:
                # a new version elsewhere broke a good file (a duplicate name, a Provider removed)
                culprits = fresh
            if not culprits:
                reported.extend(problems)
                break
            reported.extend(problems)
            for path in culprits:
                good = self.files[path].good
                if good is None:
                    del chosen[path]
                else:
                    chosen[path] = good
        for path, result in chosen.items():
            if result is self.files[path].latest:
                self.files[path].good = result
        return manifests, list(dict.fromkeys(reported))

    def _report_problems(self, problems: list[Problem]) -> None:
        old = set(self.problems)
        for p in problems:
            if p not in old:
                kept = self.files.get(p.file)
                note = "; its last good version stays in use" if kept is not None and kept.good is not None else ""
                log.error("manifest error: %s%s", p, note, extra={"file": p.file, "line": p.line, "col": p.col})
        fixed = {p.file for p in old} - {p.file for p in problems}
        for file in sorted(fixed):
            log.info("manifest file %s is valid again", file, extra={"file": file})
        self.problems = problems
        self.metrics.manifest_errors.set(len(problems))

    # ------------------------------------------------------------ HTTP endpoints

    def _healthy(self) -> list[str]:
        return [
            f"the {t.get_name()} task has stopped" for t in self._essential if t.done() and not self.stopping.is_set()
        ]

    async def healthz(self, request: Request) -> Response:
        """Process alive (and its worker, scheduler and watcher running)."""
        dead = self._healthy()
        return _json({"status": "ok" if not dead else "failing", "problems": dead}, 200 if not dead else 503)

    async def readyz(self, request: Request) -> Response:
        """Ready: lock held, manifests loaded, state reachable, not stopping."""
        problems = self._healthy()
        if self.stopping.is_set():
            problems.append("shutting down")
        if not self.locked:
            problems.append("waiting for the state lock")
        if not self.loaded:
            problems.append("manifests not loaded yet")
        if self.state is not None:
            try:
                await asyncio.wait_for(self.state.ping(), 3.0)
            except Exception as exc:
                problems.append(f"state unreachable: {exc or type(exc).__name__}")
        else:
            problems.append("state not open yet")
        self.metrics.ready.set(0 if problems else 1)
        body = {"ready": not problems, "problems": problems, "models": len(self.manifests.models)}
        return _json(body, 503 if problems else 200)

    async def metrics_endpoint(self, request: Request) -> Response:
        """Prometheus text exposition."""
        return Response(self.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def status(self, request: Request) -> Response:
        """Like `reconciler status --output json`, plus the manifest problems."""
        entries = [status_entry(self.plans[n]) for n in sorted(self.plans) if n in self.manifests.models]
        doc = {
            "format_version": 1,
            "models": entries,
            "manifest_errors": [str(p) for p in self.problems],
            "pending": sorted(self.pending),
        }
        return _json(doc)

    async def lucid_hook(self, request: Request) -> Response:
        """Lucid's training callback: observe the models with that model_id at once."""
        if not self.webhook_secret:
            self.metrics.webhooks.labels("lucid", "disabled").inc()
            return _json({"error": f"webhook disabled: set {WEBHOOK_SECRET_ENV}"}, 503)
        if self.stopping.is_set():
            return _json({"error": "shutting down"}, 503)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_HOOK_BODY:
            return _json({"error": "body too large"}, 413)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_HOOK_BODY:
                return _json({"error": "body too large"}, 413)
        if not hook_authorized(self.webhook_secret, body, request.headers):
            self.metrics.webhooks.labels("lucid", "unauthorized").inc()
            log.warning("rejected a /hooks/lucid call without a valid signature from %s", _client(request))
            return _json({"error": "invalid or missing signature"}, 401)
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            doc = None
        model_id = doc.get("model_id") if isinstance(doc, dict) else None
        if not isinstance(model_id, str) or not model_id:
            self.metrics.webhooks.labels("lucid", "invalid").inc()
            return _json({"error": "expected a JSON object with a string model_id"}, 400)
        names = sorted(
            m.name
            for m in self.manifests.models.values()
            if m.provider_type == "lucid" and getattr(m.model, "model_id", None) == model_id
        )
        self.metrics.webhooks.labels("lucid", "accepted" if names else "unmatched").inc()
        if names:
            log.info("lucid callback for model_id %s: observing %s", model_id, ", ".join(names))
            self.enqueue(names, "webhook")
        else:
            log.warning("lucid callback for model_id %s, which no manifest declares", model_id)
        return _json({"accepted": True, "models": names}, 202)


def _client(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "unknown client"


def _url_passwords(url: str) -> list[str]:
    from urllib.parse import unquote, urlsplit

    try:
        password = urlsplit(url).password
    except ValueError:
        return []
    return [password, unquote(password)] if password else []


def build_app(daemon: Daemon) -> Starlette:
    """The daemon's HTTP endpoints."""
    routes = [
        Route("/healthz", daemon.healthz, methods=["GET", "HEAD"]),
        Route("/readyz", daemon.readyz, methods=["GET", "HEAD"]),
        Route("/metrics", daemon.metrics_endpoint, methods=["GET"]),
        Route("/status", daemon.status, methods=["GET"]),
        Route("/hooks/lucid", daemon.lucid_hook, methods=["POST"]),
    ]
    return Starlette(routes=routes)


__all__ = [
    "Daemon",
    "DaemonOptions",
    "Metrics",
    "build_app",
    "hook_authorized",
    "run_daemon",
    "sd_notify",
    "watchdog_interval",
]
