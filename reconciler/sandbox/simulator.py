"""The base class of the provider simulators and the training state every simulator derives.

Trainings "take seconds": simulators store wall-clock facts (when a training started, how long it
lasts, whether it will fail) and derive its state from the clock on every request, so a world
reloaded by another process after a training's end shows it finished without anyone writing.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from reconciler.sandbox.wire import SimHTTPError, SimRequest, SimResponse
from reconciler.sandbox.world import WorldStore

log = logging.getLogger("reconciler.sandbox")

#: Fraction of a training's duration it spends queued before it runs (every simulator).
QUEUED_FRACTION = 0.1


@dataclass(frozen=True)
class TrainingState:
    """A training's state derived from its record and the clock (see `Simulator.new_training`).

    phase: "queued" | "running" | "succeeded" | "failed" | "cancelled".
    progress: fraction of the running part done, 0..1 (frozen at the end/cancel time).
    """

    phase: str
    progress: float
    started_at: float
    running_at: float
    ends_at: float
    message: str | None = None

    @property
    def active(self) -> bool:
        """Queued or running."""
        return self.phase in ("queued", "running")

    @property
    def ended_at(self) -> float | None:
        """When it ended (None while active)."""
        return None if self.active else self.ends_at


class Simulator:
    """Base class of the provider simulators: one subclass per provider type.

    The world is a JSON-able dict persisted by the Sandbox; handlers mutate `self.world` and
    call `self.save()`. Do not keep references to parts of the world across requests: it is
    reloaded in place when another process changed the file. All entry points (HTTP requests
    via `handle`, test helpers via `transaction`) hold `self.lock`. The key "_sandbox" of the
    world is the framework's own (pending `fail_next_trainings`).

    A simulator in short:

        class AcmeSimulator(Simulator):
            type = "acme"

            def seed(self) -> None:
                self.world["models"] = {"m1": {"trainings": []}}

            def authenticate(self, req: SimRequest) -> None:
                if req.header("authorization") != f"Bearer {self.api_key}":
                    raise SimHTTPError(401, {"error": "Authorization required"})

            @route("POST", r"/v1/models/(?P<model_id>[^/]+)/train")
            def train(self, req: SimRequest, model_id: str) -> SimResponse:
                self.world["models"][model_id]["trainings"].append(self.new_training())
                self.save()
                return SimResponse(204)

    and derive statuses with `self.training_state(record).phase` on every read.
    """

    type: ClassVar[str]
    base_path: ClassVar[str] = ""
    _routes: ClassVar[list[tuple[str, re.Pattern[str], str]]] = []

    def __init__(
        self,
        world: dict[str, Any],
        *,
        api_key: str,
        training_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.world = world
        self.api_key = api_key
        self.training_seconds = training_seconds
        self.clock = clock
        self.lock = threading.RLock()
        self.store: WorldStore | None = None  # set by the Sandbox when persisting
        self.base_url = ""  # set by the Sandbox once serving, for links in responses
        #: how often `sync` reloaded the world: what a subclass derived from it is stale after a change
        self.reloads = 0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own: list[tuple[str, re.Pattern[str], str]] = []
        for name, attr in cls.__dict__.items():
            for method, pattern in getattr(attr, "__sim_routes__", []):
                own.append((method, re.compile(pattern), name))
        # Dispatch is by name, so an inherited route also reaches an override of its handler.
        cls._routes = own + [r for r in cls._routes if r not in own]

    # -- to override ------------------------------------------------------------------------

    def seed(self) -> None:
        """Fill an empty world with the default entities the quickstart manifests use."""

    def authenticate(self, req: SimRequest) -> None:
        """Raise SimHTTPError with the provider's 401 body when the key is wrong or missing."""

    def not_found(self, req: SimRequest) -> SimResponse:
        """The answer to an unknown route."""
        return SimResponse(404, {"error": f"Not found: {req.method} {req.path}"})

    def method_not_allowed(self, req: SimRequest) -> SimResponse:
        """The answer to a known path with the wrong method (defaults to the 404 answer)."""
        return self.not_found(req)

    # -- dispatch ---------------------------------------------------------------------------

    def route(self, req: SimRequest) -> SimResponse:
        """Dispatch to the first matching route; unknown route -> `not_found`."""
        path_matched = False
        for method, pattern, name in self._routes:
            match = pattern.fullmatch(req.path)
            if match is None:
                continue
            path_matched = True
            if method != req.method and not (method == "GET" and req.method == "HEAD"):
                continue
            result = getattr(self, name)(req, **match.groupdict())
            return result if isinstance(result, SimResponse) else SimResponse(200, result)
        return self.method_not_allowed(req) if path_matched else self.not_found(req)

    def allowed_methods(self, path: str) -> list[str]:
        """The methods the routes accept on `path` (HEAD wherever GET is), for a 405's `Allow`."""
        methods = {method for method, pattern, _ in self._routes if pattern.fullmatch(path)}
        if "GET" in methods:
            methods.add("HEAD")
        return sorted(methods)

    def handle(self, req: SimRequest) -> SimResponse:
        """Serve one request: sync the world, authenticate, route; errors become responses."""
        try:
            with self.transaction(save=False):
                self.authenticate(req)
                return self.route(req)
        except SimHTTPError as err:
            self._discard_unsaved()
            return err.response()
        except Exception as exc:  # a bug in a simulator must not kill the server
            self._discard_unsaved()
            log.exception("sandbox %s: handler failed for %s %s", self.type, req.method, req.path)
            return SimResponse(500, {"error": f"sandbox internal error: {type(exc).__name__}: {exc}"})

    def _discard_unsaved(self) -> None:
        # A handler that raised may have half-mutated the world: reload it from disk next time.
        if self.store is not None:
            self.store.invalidate()

    # -- persistence ------------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self, save: bool = True) -> Iterator[dict[str, Any]]:
        """Lock, reload the world if another process changed it, yield it, then save.

        For test helpers: `with sim.transaction() as world: world[...] = ...`.
        """
        with self.lock:
            store = self.store
            with store.locked() if store is not None else contextlib.nullcontext():
                self.sync()
                yield self.world
                if save:
                    self.save()

    def sync(self) -> None:
        """Reload the world in place when its file changed on disk (call under the lock)."""
        store = self.store
        if store is not None and store.changed():
            fresh = store.load()
            self.world.clear()
            self.world.update(fresh)
            self.reloads += 1

    def save(self) -> None:
        """Persist the world (atomic write); in-memory sandboxes have nothing to do."""
        if self.store is not None:
            with self.lock:
                self.store.save(self.world)

    # -- helpers for subclasses ---------------------------------------------------------------

    def now(self) -> float:
        """The simulator's clock (epoch seconds)."""
        return self.clock()

    def _meta(self) -> dict[str, Any]:
        meta = self.world.setdefault("_sandbox", {})
        assert isinstance(meta, dict)
        return meta

    def fail_next_trainings(self, n: int = 1, message: str = "simulated failure") -> None:
        """The next `n` trainings started end in the provider's failed state."""
        with self.transaction():
            self._meta().setdefault("fail_next", []).extend([message] * n)

    def clear_failures(self) -> int:
        """Drop the pending `fail_next_trainings` entries (they persist with the world); how many."""
        with self.transaction():
            return len(self._meta().pop("fail_next", None) or [])

    def take_failure(self) -> str | None:
        """Consume one pending `fail_next_trainings` entry: its message, or None."""
        pending = self._meta().get("fail_next") or []
        if not pending:
            return None
        message = pending.pop(0)
        return str(message)

    def new_id(self, prefix: str = "", nbytes: int = 8) -> str:
        """A random URL-safe id."""
        return prefix + secrets.token_urlsafe(nbytes).replace("-", "x").replace("_", "y")

    def new_training(self, **fields: Any) -> dict[str, Any]:
        """A JSON-able training record starting now and lasting `training_seconds`.

        It fails at its end when `fail_next_trainings` asked for it. Store it in the world and
        derive its state with `training_state`; set "cancelled_at" (or "stopped_at": an early,
        successful end) to a timestamp to end it early.
        """
        failure = self.take_failure()
        record: dict[str, Any] = {
            "started_at": self.now(),
            "duration": float(self.training_seconds),
            "outcome": "failed" if failure is not None else "succeeded",
            "failure_message": failure,
            "cancelled_at": None,
            "stopped_at": None,
        }
        record.update(fields)
        return record

    def finished_training(self, end: float, duration: float, **fields: Any) -> dict[str, Any]:
        """A record like `new_training`'s of a training that succeeded at `end`: for helpers that
        simulate a model trained by hand, outside reconciler (an unknown baseline)."""
        record: dict[str, Any] = {
            "started_at": end - duration,
            "duration": duration,
            "outcome": "succeeded",
            "failure_message": None,
            "cancelled_at": None,
            "stopped_at": None,
        }
        record.update(fields)
        return record

    def training_state(self, record: dict[str, Any], now: float | None = None) -> TrainingState:
        """The state of a `new_training` record at `now` (default: the clock)."""
        now = self.now() if now is None else now
        started = float(record["started_at"])
        duration = max(float(record.get("duration", 0.0)), 0.0)
        running_at = started + QUEUED_FRACTION * duration
        ends_at = started + duration
        phase_end = str(record.get("outcome", "succeeded"))
        message = record.get("failure_message") if phase_end == "failed" else None
        cancelled_at = record.get("cancelled_at")
        stopped_at = record.get("stopped_at")
        if cancelled_at is not None and float(cancelled_at) < ends_at:
            ends_at, phase_end, message = float(cancelled_at), "cancelled", None
        elif stopped_at is not None and float(stopped_at) < ends_at:
            ends_at, phase_end, message = float(stopped_at), "succeeded", None
        run_span = (started + duration) - running_at

        def progress_at(t: float) -> float:
            if run_span <= 0:
                return 1.0 if t >= running_at else 0.0
            return min(max((t - running_at) / run_span, 0.0), 1.0)

        if now >= ends_at:
            return TrainingState(phase_end, progress_at(ends_at), started, running_at, ends_at, message)
        if now < running_at:
            return TrainingState("queued", 0.0, started, running_at, ends_at)
        return TrainingState("running", progress_at(now), started, running_at, ends_at)
