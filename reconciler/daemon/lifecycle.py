"""The daemon's life: serve, load, lead or stand by, reconcile until SIGTERM, shut down in order.

Daemons sharing one state elect a leader with the state's lease (`StateStore.lease`): the
leader alone triggers and polls, and proves its lease (the fence) before every trigger; the others
stand by (`/readyz` 503, `/status` role `standby`), try the lease every LEASE_RETRY_SECONDS and
take over when the leader dies or loses its database session. A leader whose lease check fails
stops triggering at once, says so in its log and stands by.

`Daemon` wires the parts together: a `ManifestTracker` (what is declared), a `WorkQueue` and a
`Schedule` (what to reconcile when), a `PlanBook` (what was decided), `Metrics` and the HTTP
app. Two workers reconcile queued model names in batches: one takes saved changes and Lucid
callbacks, the other full resyncs, polls of in-flight trainings (at each provider's own interval)
and retries, so a person's edit never waits behind a resync of every model. When both lanes plan
one model at once they are two writers on the state: the intent's compare-and-set lets one
trigger and makes the other re-plan (it then sees the intent), so a training is never triggered
twice; each lane's plans count against the other's concurrency limits, and a shutdown waits for
the batch in flight in each lane. Everything it decides
comes from `Engine.plan` and everything it writes goes through `Engine.apply` /
`Engine.persist_refresh`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import time
from collections.abc import Iterable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler import runtime
from reconciler.daemon.app import WEBHOOK_SECRET_ENV, HttpServer
from reconciler.daemon.metrics import Metrics
from reconciler.daemon.options import DaemonOptions
from reconciler.daemon.plans import PlanBook
from reconciler.daemon.queue import Schedule, WorkQueue, batch_trigger
from reconciler.daemon.systemd import sd_notify, watchdog, watchdog_interval
from reconciler.daemon.tracker import RESCAN_SECONDS, ManifestTracker, watch
from reconciler.errors import Problem, ReconcilerError, StateError
from reconciler.logs import Redactor
from reconciler.plan import Action, ModelPlan
from reconciler.providers.clients import SharedClients
from reconciler.seams import Seams

if TYPE_CHECKING:
    from reconciler.engine import Engine
    from reconciler.notify import Notifier
    from reconciler.sandbox.server import Sandbox
    from reconciler.spec import ManifestSet
    from reconciler.state.base import Lease, StateStore

log = logging.getLogger("reconciler.daemon")

#: A batch of at least this many models is followed by returning freed memory to the OS.
TRIM_AFTER_MODELS = 100
#: SIGTERM to exit: in-flight work gets this long, the HTTP server the rest of the 10 s budget.
WORK_GRACE_SECONDS = 6.0
#: A standby tries the lease, and the leader checks it, this often: a dead leader's lease is
#: taken within this (plus the server noticing the dead session), well inside the 15 s promise.
LEASE_RETRY_SECONDS = 2.0
#: A leader that lost its lease waits this long before trying it again, so that a standby (which
#: tries every LEASE_RETRY_SECONDS) takes over rather than the daemon whose session just failed.
STEP_DOWN_PAUSE_SECONDS = 2.5 * LEASE_RETRY_SECONDS


def _url_passwords(url: str) -> list[str]:
    from urllib.parse import unquote, urlsplit

    try:
        password = urlsplit(url).password
    except ValueError:
        return []
    return [password, unquote(password)] if password else []


class Daemon:
    """State and tasks of one daemon process; `run()` is its whole life."""

    def __init__(
        self,
        opts: DaemonOptions,
        *,
        redactor: Redactor | None = None,
        env: Mapping[str, str] | None = None,
        seams: Seams | None = None,
    ) -> None:
        """`seams` (tests) replace the engine's clock, transport and the rest (see `reconciler.seams`)."""
        self.opts = opts
        self.seams = seams or Seams()
        self.env = env if env is not None else os.environ
        self.redactor = redactor or Redactor(self.env)
        self.webhook_secret = self.env.get(WEBHOOK_SECRET_ENV) or None
        self.tracker = ManifestTracker(opts.paths, self.redactor, runtime.trust(self.env))
        self.queue = WorkQueue()
        self.schedule = Schedule()
        self.plans = PlanBook()
        self.metrics = Metrics(
            plans=self.current_plans,
            queue_depth=lambda: len(self.queue),
            manifest_errors=lambda: len(self.tracker.problems),
            leader=lambda: 1 if self.locked else 0,
        )
        self.last_errors: dict[str, str] = {}  # model name -> the error last written to history
        self.stopping = asyncio.Event()
        self.loaded = False
        self.locked = False  # holds the leader lease: the one daemon that triggers and polls
        self.lease: Lease | None = None
        self._stepped_down_at = -STEP_DOWN_PAUSE_SECONDS  # monotonic time the lease was last lost
        self.state: StateStore | None = None
        self.sandbox: Sandbox | None = None
        self.engine: Engine | None = None
        self.notifier: Notifier | None = None
        self._engine_stale = True
        self._retired: list[Engine] = []  # replaced engines a batch may still be using
        self._engine_users: dict[int, int] = {}  # id(engine) -> batches using it
        #: one HTTP client per provider for every engine: the two lanes may run on two engines at
        #: once (after a saved edit), and a provider's rate and in-flight limit must hold for both
        self.clients = SharedClients()
        self._essential: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------ what the endpoints read

    @property
    def manifests(self) -> ManifestSet:
        return self.tracker.manifests

    @property
    def role(self) -> str:
        """`leader` while holding the lease, else `standby` (design.md, "Many writers")."""
        return "leader" if self.locked else "standby"

    @property
    def problems(self) -> list[Problem]:
        return self.tracker.problems

    @property
    def pending(self) -> dict[str, str]:
        return self.queue.pending

    def current_plans(self) -> list[ModelPlan]:
        """Each declared model's newest plan: one snapshot for `/status` and `reconciler_models`."""
        return self.plans.current(self.manifests.models)

    def task_problems(self) -> list[str]:
        """The essential tasks that have stopped (while not stopping)."""
        return [
            f"the {t.get_name()} task has stopped" for t in self._essential if t.done() and not self.stopping.is_set()
        ]

    def _tasks_alive(self) -> bool:
        return all(not t.done() for t in self._essential)

    def enqueue(self, names: Iterable[str], trigger: str) -> None:
        """Ask the worker to reconcile these models (coalesced with what is already queued)."""
        self.queue.put(names, trigger)

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> int:
        """Serve, load, lead or stand by, reconcile until asked to stop; the exit code."""
        from reconciler.state import open_state

        opts = self.opts
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig)
        async with contextlib.AsyncExitStack() as stack:
            try:
                self.sandbox = stack.enter_context(runtime.sandbox_for(opts.sandbox, opts.state_url))
                if self.sandbox is not None:
                    from reconciler.sandbox.registry import SANDBOX_API_KEYS

                    self.redactor.add_values(SANDBOX_API_KEYS.values())
                # HTTP first: /healthz answers from the start, /readyz says why not ready
                try:
                    http = HttpServer(self, opts.host, opts.port)
                except OSError as exc:
                    log.error("cannot listen on %s:%s: %s", opts.host, opts.port, exc.strerror or exc)
                    return 1
                http.start()
                stack.push_async_callback(http.stop)
                # a bad RECONCILER_NOTIFY_URL stops the start; the URLs are secrets, masked in logs
                self.redactor.add_values(runtime.notify_urls(self.env))
                self.state = await open_state(opts.state_url)
                stack.push_async_callback(self.state.close)
                self.notifier = runtime.notifier(
                    self.state, on_result=self.metrics.on_notification, redact=self.redactor, env=self.env
                )
                if self.notifier is not None:
                    stack.push_async_callback(self.notifier.aclose)  # before the state closes
                self.redactor.add_values(_url_passwords(opts.state_url))
                self.lease = self.state.lease(runtime.holder("daemon"))
                stack.push_async_callback(self._step_down_on_exit)
            except ReconcilerError as exc:
                log.error("error: %s", exc)
                return 1
            return await self._serve_until_stopped()
        return 0  # unreachable: the stack's body returns (mypy cannot see that)

    async def _step_down_on_exit(self) -> None:
        self.locked = False
        if self.lease is not None:
            await self.lease.release()

    # ------------------------------------------------------------ leadership

    async def _leadership(self) -> None:
        """Take the lease when free (standby), prove it when held (leader), every LEASE_RETRY_SECONDS."""
        assert self.lease is not None and self.state is not None
        announced = False
        while not self.stopping.is_set():
            if self.locked:
                await self.fence()
            elif time.monotonic() - self._stepped_down_at < STEP_DOWN_PAUSE_SECONDS:
                pass  # just lost it: give a standby the first try
            else:
                try:
                    got = await self.lease.acquire()
                except StateError as exc:  # the database is away: stay standby, try again
                    log.warning("cannot try the leader lease: %s", exc)
                    got = False
                if got and not self.stopping.is_set():
                    self._lead()
                elif not got and not announced:
                    log.info("standing by: the leader is %s", await self.lease.held_by())
                    announced = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), LEASE_RETRY_SECONDS)

    def _lead(self) -> None:
        assert self.lease is not None and self.state is not None
        self.locked = True
        log.info("leader: holding the lease on %s as %s", self.state.url, self.lease.holder)
        sd_notify(f"STATUS=leader, reconciling {len(self.manifests.models)} models", self.env)
        self.enqueue(self.manifests.models, "startup")

    async def fence(self) -> bool:
        """Prove the lease is still held (before every trigger); on failure stand by at once."""
        if not self.locked or self.lease is None:
            return False
        if await self.lease.check():
            return True
        if self.locked:
            self.locked = False
            self._stepped_down_at = time.monotonic()
            log.error(
                "lost the leader lease on %s (its database session ended or the check failed): "
                "stopped triggering; standing by and trying to take it again",
                self.state.url if self.state else "the state",
            )
            sd_notify("STATUS=standby (lost the leader lease)", self.env)
        return False

    async def _serve_until_stopped(self) -> int:
        self._load("startup")
        self.metrics.last_resync.set(time.time())
        self.loaded = True
        tasks = {
            "leadership": self._leadership(),
            "worker": self._worker("bulk"),
            "urgent-worker": self._worker("urgent"),
            "scheduler": self._scheduler(),
            "watcher": watch(self.opts.paths, self.stopping, self._files_changed),
        }
        self._essential = [asyncio.create_task(coro, name=name) for name, coro in tasks.items()]
        dog = None
        interval = watchdog_interval(self.env)
        if interval:
            dog = asyncio.create_task(watchdog(interval, self._tasks_alive, self.env), name="watchdog")
        models = len(self.manifests.models)
        log.info(
            "daemon started: %d models from %s, listening on %s:%d",
            models,
            ", ".join(self.opts.paths),
            self.opts.host,
            self.opts.port,
            extra={"models": models},
        )
        sd_notify(f"READY=1\nSTATUS={models} models; {self.role}", self.env)
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
        await self._shutdown(dog)
        log.info("daemon stopped")
        return code

    def request_stop(self, sig: int | None = None) -> None:
        """Stop taking new work; `run()` finishes the batch in flight and exits."""
        if sig is not None and not self.stopping.is_set():
            log.info("received %s: finishing in-flight work, then exiting", signal.Signals(sig).name)
        self.stopping.set()
        self.queue.close()

    async def _shutdown(self, dog: asyncio.Task[None] | None) -> None:
        by_name = {t.get_name(): t for t in self._essential}
        workers = [by_name[n] for n in ("worker", "urgent-worker") if n in by_name]
        others = [t for t in by_name.values() if t not in workers]
        if dog:
            others.append(dog)
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        busy = [w for w in workers if not w.done()]
        if busy:
            worker = asyncio.gather(*busy)
            # the batches in flight finish their requests and state writes; no new batch starts
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
        for engine in [*self._retired, *([self.engine] if self.engine is not None else [])]:
            with contextlib.suppress(Exception):
                await engine.aclose()
        self._retired = []
        with contextlib.suppress(Exception):
            await self.clients.aclose()

    # ------------------------------------------------------------ worker

    async def _worker(self, lane: str) -> None:
        """One lane of work: "urgent" (saved changes, webhooks) runs beside "bulk" (resyncs, polls),
        so an edit reaches its train call without waiting for a resync of every model: not in the
        queue, and not for a provider request slot either (its requests go first)."""
        with runtime.urgent_requests() if lane == "urgent" else contextlib.nullcontext():
            await self._work(lane)

    async def _work(self, lane: str) -> None:
        while not self.stopping.is_set():
            batch = await self.queue.take(lane)
            if not batch or not self.locked:
                continue  # a standby triggers and polls nothing
            for i, part in enumerate(self._parts(batch)):
                if i and self.stopping.is_set():
                    break  # shutting down: the rest is planned again on the next start
                engine = await self._refresh_engine()
                self._engine_users[id(engine)] = self._engine_users.get(id(engine), 0) + 1
                try:
                    await self._reconcile(part, engine)
                finally:
                    self._engine_users[id(engine)] -= 1
                    await self._close_retired()
                if len(part) >= TRIM_AFTER_MODELS:
                    # a resync's records, observations and previous plans are garbage now: give
                    # their pages back (benchmarks/daemon_scale.py: the RSS after many resyncs)
                    runtime.release_freed_memory()

    def _parts(self, batch: dict[str, str]) -> list[dict[str, str]]:
        """A big batch (a resync) one provider at a time: only one provider's observations and new
        plans are alive beside the settled ones, and each provider's list endpoint is still read
        once; a small batch whole."""
        if len(batch) < TRIM_AFTER_MODELS:
            return [batch]
        models = self.manifests.models
        by_provider: dict[str, dict[str, str]] = {}
        for name, trigger in batch.items():
            m = models.get(name)
            by_provider.setdefault(m.provider if m is not None else "", {})[name] = trigger
        return [by_provider[p] for p in sorted(by_provider)] if len(by_provider) > 1 else [batch]

    async def _refresh_engine(self) -> Engine:
        if self._engine_stale or self.engine is None:
            assert self.state is not None
            if self.engine is not None:
                self._retired.append(self.engine)  # closed once the other lane's batch is done with it
            from reconciler.budget import Limits

            # the metrics observe every provider request through the engine's HTTP clients
            observers = (*self.seams.request_observers, self.metrics.on_request)
            seams = dataclasses.replace(self.seams, request_observers=observers)
            events = self.notifier.emit if self.notifier is not None else None
            limits = Limits(writer="daemon", per_hour=self.opts.max_trainings_per_hour)
            runtime.settle_heap(freeze=False)
            self.engine = runtime.build_engine(
                self.manifests, self.state, self.sandbox, self.opts.paths, seams, limits, events, self.clients
            )
            self._engine_stale = False
            await self._close_retired()
        return self.engine

    async def _close_retired(self) -> None:
        for old in [e for e in self._retired if not self._engine_users.get(id(e))]:
            self._retired.remove(old)
            self._engine_users.pop(id(old), None)
            await old.aclose()

    async def _reconcile(self, batch: Mapping[str, str], engine: Engine | None = None) -> None:
        """Plan and apply one batch with `engine` (default: the current one)."""
        engine = engine or self.engine
        assert engine is not None
        names = sorted(n for n in batch if n in self.manifests.models)
        if not names:
            return
        trigger = batch_trigger(batch)
        models = [self.manifests.models[n] for n in names]
        started = time.monotonic()
        try:
            # max_concurrent_trainings counts the trainings of every model, not only this batch's
            plans = await engine.plan(models, others=self.plans.others(names, self.manifests.models))
            # shown from now on, so no reader takes a model for in sync while its training starts
            self.plans.decide(plans)
            if self.stopping.is_set():
                # no new trainings during shutdown; still store what observing learned
                await engine.persist_refresh(plans)
                result = None
            else:
                result = await engine.apply([p for p in plans if self._worth_applying(p)], fence=self.fence)
        except Exception as exc:  # the state or a bug: keep the daemon alive, try these again later
            self.plans.abandon(names)
            self._retry_later(names, exc)
            return
        finally:
            self.metrics.reconcile_seconds.labels(trigger).observe(time.monotonic() - started)
        self.schedule.succeeded(names)
        self._after(plans, result.outcomes if result else {}, result.adopted if result else [], trigger)

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
        delay = self.schedule.failed(names)
        if isinstance(exc, ReconcilerError):
            log.error("reconciling %s failed: %s; retrying in %.0fs", ", ".join(names), exc, delay)
        else:
            log.exception("reconciling %s failed; retrying in %.0fs", ", ".join(names), delay)

    def _after(self, plans: list[ModelPlan], outcomes: Mapping[str, Any], adopted: list[str], trigger: str) -> None:
        """Log what changed, count it, settle the plans for /status and the scheduler."""
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
            previous = self.plans.settled.get(p.name)
            codes = [r.code for r in p.reasons]
            if previous is None or previous.action is not p.action or [r.code for r in previous.reasons] != codes:
                detail = "; ".join(f"{r.code}: {r.detail}" if r.detail else r.code for r in p.reasons) or "in sync"
                level = logging.WARNING if p.action is Action.ERROR else logging.INFO
                log.log(level, "%s: %s (%s)", p.name, p.action.value, detail, extra={**fields, "reasons": codes})
            o = outcomes.get(p.name)
            if o is not None and o.over_budget:  # nothing sent: another writer spent the budget first
                log.info("%s: held: %s", p.name, o.detail, extra={**fields, "outcome": "budget"})
            elif o is not None and o.superseded:  # nothing sent: another writer, or the lease lost
                log.info("%s: %s", p.name, o.detail, extra={**fields, "outcome": "superseded"})
                if p.triggers and self.locked:
                    self.enqueue([p.name], "retry")
            elif o is not None:
                outcome = "started" if o.started else "unconfirmed" if o.ambiguous else "not-started"
                self.metrics.trainings.labels(provider, outcome).inc()
                if o.started:
                    log.info("%s: training started (%s)", p.name, o.detail, extra={**fields, "outcome": outcome})
                else:
                    log.warning("%s: training not started: %s", p.name, o.detail, extra={**fields, "outcome": outcome})
            if p.name in adopted:
                log.info("%s: adopted the provider's model as matching the spec", p.name, extra=fields)
            self.schedule.schedule_wake(p)
        self.plans.settle(plans)

    # ------------------------------------------------------------ scheduler

    def _not_to_poll(self, name: str) -> bool:
        return name not in self.manifests.models or name in self.pending

    def _poll_interval(self, provider: str) -> timedelta:
        engine = self.engine
        try:
            base = engine.poll_interval(provider) if engine is not None else None
        except KeyError:  # the engine predates this provider; the next batch refreshes it
            base = None
        if base is None:
            cfg = self.manifests.providers.get(provider)
            base = cfg.poll_interval if cfg else timedelta(seconds=60)
        return base

    async def _scheduler(self) -> None:
        now = time.monotonic()
        resync = max(self.opts.resync.total_seconds(), 1.0)
        next_resync = now + resync
        next_rescan = now + RESCAN_SECONDS
        while not self.stopping.is_set():
            now = time.monotonic()
            if now >= next_resync:
                self.tracker.revalidate()  # a missed file event is caught here at the latest
                self._load("resync")
                self.enqueue(self.manifests.models, "resync")
                self.metrics.last_resync.set(time.time())
                log.info("full resync of %d models", len(self.manifests.models))
                next_resync = now + resync
            elif now >= next_rescan:
                self._load("rescan")
                next_rescan = now + RESCAN_SECONDS
            polls = self.schedule.due_polls(now, self.plans.settled, self._not_to_poll, self._poll_interval)
            self.enqueue(polls, "poll")
            self.enqueue(self.schedule.due_wakes(self.manifests.models), "retry")
            sleep = min([next_resync, next_rescan, *self.schedule.poll_due.values()]) - time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), max(0.05, min(sleep, 1.0)))

    # ------------------------------------------------------------ manifests

    def _files_changed(self, paths: set[Path]) -> None:
        self.tracker.files_changed(paths)
        self._load("change")
        self.enqueue(self.tracker.local_files_changed(paths), "change")

    def _load(self, trigger: str) -> None:
        """Re-read changed manifest files (by digest) and queue the models whose spec changed."""
        change = self.tracker.load()
        if change is None:
            return
        if change.before.models and len(change.touched) + len(change.gone) >= TRIM_AFTER_MODELS:
            runtime.release_freed_memory()  # many old manifests replaced
        self._engine_stale = True
        for name in change.gone:
            self.plans.forget(name)
            self.queue.discard(name)
            self.schedule.forget(name)
            self.last_errors.pop(name, None)
        if change.touched and self.loaded:
            log.info("manifests changed (%s): reconciling %s", trigger, ", ".join(sorted(change.touched)))
            self.enqueue(change.touched, "change")
