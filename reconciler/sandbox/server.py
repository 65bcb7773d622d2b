"""The sandbox: local fakes of the provider HTTP APIs, served over real HTTP on 127.0.0.1.

One `Sandbox` serves every registered `Simulator` under its own prefix
(`http://127.0.0.1:PORT/<type><base_path>/...`), keeps a log of the requests it received,
injects faults (`Fault`), and persists each provider's world as `<directory>/<type>.json` so that
separate processes (`reconciler sandbox`, `apply --sandbox`, `plan --sandbox`) see the same models.

Only the standard library is used, so the sandbox starts in-process in milliseconds.

Trainings "take seconds": simulators store wall-clock facts (when a training started, how long it
lasts, whether it will fail) and derive its state from the clock on every request, so a world
reloaded by another process after a training's end shows it finished without anyone writing.

A control API for out-of-process use is served under `/_sandbox/` (see `_ControlAPI`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import logging
import os
import re
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import policy as email_policy
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

try:  # POSIX only: cross-process locking of a world file; elsewhere we rely on atomic writes.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("reconciler.sandbox")

PROVIDER_TYPES: tuple[str, ...] = ("predicthq", "rebase", "roboflow", "lucid", "photogpt")

#: The API key each simulator accepts by default (`Sandbox(api_keys=...)` overrides).
SANDBOX_API_KEYS: dict[str, str] = {t: f"sandbox-{t}-key" for t in PROVIDER_TYPES}

#: The environment variable each provider type reads its key from (design.md).
KEY_ENV: dict[str, str] = {
    "roboflow": "ROBOFLOW_API_KEY",
    "predicthq": "PREDICTHQ_API_KEY",
    "rebase": "REBASE_API_KEY",
    "lucid": "LUCID_API_KEY",
    "photogpt": "PHOTOGPT_API_KEY",
}

#: Built-in simulators, imported lazily so a module that does not exist yet is simply skipped.
SIMULATOR_PATHS: dict[str, str] = {
    "roboflow": "reconciler.sandbox.roboflow:RoboflowSimulator",
    "predicthq": "reconciler.sandbox.predicthq:PredictHQSimulator",
    "rebase": "reconciler.sandbox.rebase:RebaseSimulator",
    "lucid": "reconciler.sandbox.lucid:LucidSimulator",
    "photogpt": "reconciler.sandbox.photogpt:PhotoGPTSimulator",
}

#: Fraction of a training's duration it spends queued before it runs (every simulator).
QUEUED_FRACTION = 0.1

CONTROL_PREFIX = "_sandbox"


def base_url_env(type: str) -> str:
    """The variable that overrides a provider type's base URL: `RECONCILER_<TYPE>_BASE_URL`."""
    return f"RECONCILER_{type.upper()}_BASE_URL"


def key_env(type: str) -> str:
    """The variable a provider type reads its API key from."""
    return KEY_ENV.get(type, f"{type.upper()}_API_KEY")


# --------------------------------------------------------------------------------------------
# Requests and responses as simulators see them
# --------------------------------------------------------------------------------------------


class SimHTTPError(Exception):
    """Raise inside a handler to answer with this status and body (JSON-able, bytes or None)."""

    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"HTTP {status}: {body!r}")
        self.status = status
        self.body = body
        self.headers = dict(headers or {})

    def response(self) -> SimResponse:
        """This error as a response."""
        return SimResponse(self.status, self.body, headers=dict(self.headers))


@dataclass
class FormPart:
    """One field of a multipart/form-data or urlencoded body."""

    name: str
    data: bytes
    filename: str | None = None
    content_type: str = "text/plain"

    @property
    def text(self) -> str:
        """The part decoded as UTF-8 (undecodable bytes replaced)."""
        return self.data.decode("utf-8", "replace")


_MISSING: Any = object()


@dataclass
class SimRequest:
    """What a simulator's handler receives.

    `path` is the path after the provider prefix (and after the simulator's `base_path`),
    percent-decoded, always starting with "/". Header names are lower-cased.
    """

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    provider: str = ""

    def json(self, default: Any = _MISSING) -> Any:
        """The body parsed as JSON; an empty body gives `default` when one is given.

        Raises SimHTTPError(400) on bad JSON (or on an empty body without a default).
        """
        if not self.body.strip():
            if default is not _MISSING:
                return default
            raise SimHTTPError(400, {"error": "Request body must be JSON."})
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise SimHTTPError(400, {"error": f"Invalid JSON body: {exc}"}) from exc

    def q(self, name: str, default: str | None = None) -> str | None:
        """The first value of query parameter `name`, else `default`."""
        values = self.query.get(name)
        return values[0] if values else default

    def header(self, name: str, default: str | None = None) -> str | None:
        """A header by case-insensitive name."""
        return self.headers.get(name.lower(), default)

    @property
    def content_type(self) -> str:
        """The media type of the body, lower-cased, without parameters."""
        return (self.headers.get("content-type") or "").split(";")[0].strip().lower()

    def form(self) -> dict[str, list[FormPart]]:
        """The body parsed as multipart/form-data or application/x-www-form-urlencoded.

        Raises SimHTTPError(400) for any other content type or an unparsable body.
        """
        ctype = self.content_type
        fields: dict[str, list[FormPart]] = {}
        if ctype == "application/x-www-form-urlencoded":
            parsed = parse_qs(self.body.decode("utf-8", "replace"), keep_blank_values=True)
            for name, values in parsed.items():
                fields[name] = [FormPart(name, v.encode()) for v in values]
            return fields
        if ctype != "multipart/form-data":
            raise SimHTTPError(400, {"error": f"Expected multipart/form-data, got {ctype!r}."})
        # The email package parses MIME multipart (cgi is gone from the stdlib in 3.13).
        raw_ct = self.headers.get("content-type", "")
        message = BytesParser(policy=email_policy.HTTP).parsebytes(
            b"Content-Type: " + raw_ct.encode("latin-1") + b"\r\n\r\n" + self.body
        )
        if not message.is_multipart():
            raise SimHTTPError(400, {"error": "Malformed multipart body."})
        for part in message.iter_parts():
            field_name = part.get_param("name", header="content-disposition")
            if not isinstance(field_name, str):
                continue
            payload = part.get_payload(decode=True)
            data = payload if isinstance(payload, bytes) else b""
            fields.setdefault(field_name, []).append(
                FormPart(field_name, data, part.get_filename(), part.get_content_type())
            )
        return fields


@dataclass
class SimResponse:
    """What a handler returns: `body` is JSON-able (serialised), bytes (raw) or None (no body)."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"

    def encode(self) -> bytes:
        """The body as bytes on the wire."""
        if self.body is None:
            return b""
        if isinstance(self.body, bytes | bytearray):
            return bytes(self.body)
        if isinstance(self.body, str) and not self.content_type.endswith("json"):
            return self.body.encode("utf-8")
        return json.dumps(self.body).encode("utf-8")


# --------------------------------------------------------------------------------------------
# Persistence
# --------------------------------------------------------------------------------------------


class WorldStore:
    """One provider's world as a JSON file: atomic writes, reload when another process wrote it.

    Change detection uses (inode, mtime_ns, size): an atomic replace always makes a new inode,
    so a write by another process is seen even within one mtime tick. Callers serialise access
    with the simulator's lock; `locked()` adds an flock so processes do not interleave.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._signature: tuple[int, int, int] | None = None
        self._lock_fd: int | None = None
        self._depth = 0

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def invalidate(self) -> None:
        """Forget what was read, so the next `changed()` is true and the file is reloaded."""
        self._signature = None

    def changed(self) -> bool:
        """Whether the file differs from what this process last read or wrote."""
        return self._stat() != self._signature

    def load(self) -> dict[str, Any]:
        """Read the world ({} when there is no file yet)."""
        try:
            with open(self.path, "rb") as fh:
                st = os.fstat(fh.fileno())
                raw = fh.read()
        except FileNotFoundError:
            self._signature = None
            return {}
        self._signature = (st.st_ino, st.st_mtime_ns, st.st_size)
        if not raw.strip():
            return {}
        world = json.loads(raw)
        if not isinstance(world, dict):
            raise ValueError(f"{self.path}: a sandbox world must be a JSON object")
        return world

    def save(self, world: dict[str, Any]) -> None:
        """Write the world atomically (temporary file in the same folder, then rename)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(world, indent=1, sort_keys=True).encode("utf-8")
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            st = os.fstat(fh.fileno())
        os.replace(tmp, self.path)
        # The rename keeps inode and mtime, so this is the signature of the file now in place.
        self._signature = (st.st_ino, st.st_mtime_ns, st.st_size)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold an exclusive flock on `<file>.lock` (re-entrant; no-op without fcntl)."""
        if fcntl is None:
            yield
            return
        if self._depth == 0:
            if self._lock_fd is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                lock_path = self.path.with_name(self.path.name + ".lock")
                self._lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0 and self._lock_fd is not None:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Release the lock file descriptor."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


# --------------------------------------------------------------------------------------------
# Simulators
# --------------------------------------------------------------------------------------------

Handler = Callable[..., Any]
H = TypeVar("H", bound=Handler)


def route(method: str, pattern: str) -> Callable[[H], H]:
    """Declare a simulator method as the handler of `METHOD pattern`.

    `pattern` is a regex fully matched against `SimRequest.path`; its named groups are passed
    as keyword arguments: `@route("GET", r"/(?P<ws>[^/]+)") def get_ws(self, req, ws): ...`.
    Routes are tried in definition order (subclass routes before inherited ones). A handler
    returns a SimResponse, or any JSON-able value for a 200.
    """

    def decorate(fn: H) -> H:
        routes = list(getattr(fn, "__sim_routes__", []))
        routes.append((method.upper(), pattern))
        fn.__sim_routes__ = routes  # type: ignore[attr-defined]
        return fn

    return decorate


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


_registry: dict[str, type[Simulator] | str] = dict(SIMULATOR_PATHS)


def register_simulator(provider_type: str, target: type[Simulator] | str) -> None:
    """Register a simulator class (or its "module:Class" import path) under a provider type."""
    _registry[provider_type] = target


def unregister_simulator(provider_type: str) -> None:
    """Forget a registered simulator type (tests)."""
    _registry.pop(provider_type, None)


def simulator_class(provider_type: str) -> type[Simulator] | None:
    """The simulator class of a type, importing it on first use; None if not available."""
    target = _registry.get(provider_type)
    if target is None:
        return None
    if isinstance(target, str):
        module_name, _, attr = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                return None  # not written yet: skipped quietly
            log.warning("sandbox: cannot import simulator %s: %s", target, exc)
            return None
        except ImportError as exc:
            log.warning("sandbox: cannot import simulator %s: %s", target, exc)
            return None
        cls = getattr(module, attr, None)
        if not (isinstance(cls, type) and issubclass(cls, Simulator)):
            log.warning("sandbox: %s is not a Simulator subclass", target)
            return None
        _registry[provider_type] = cls
        return cls
    return target


def available_simulators() -> dict[str, type[Simulator]]:
    """Every registered simulator that can be imported, by type."""
    found: dict[str, type[Simulator]] = {}
    for type_name in list(_registry):
        cls = simulator_class(type_name)
        if cls is not None:
            found[type_name] = cls
    return found


# --------------------------------------------------------------------------------------------
# Faults and the request log
# --------------------------------------------------------------------------------------------


@dataclass
class Fault:
    """A misbehaviour injected in front of the simulators, matched in order of injection.

    Matches requests by provider, method and a regex searched in the path after the provider
    prefix. Then: sleep `delay`; `drop` closes the connection without an answer; `status`
    answers with that status (`body`, `content_type`, `retry_after`) instead of handling.
    With `after_handling` the real handler runs first (the world changes) and the fault then
    replaces or loses its answer: "the provider did it but the answer was lost".
    """

    provider: str | None = None
    method: str | None = None
    path: str = ".*"
    status: int | None = None
    body: bytes | str | dict[str, Any] | list[Any] | None = None
    content_type: str = "application/json"
    retry_after: float | None = None
    delay: float = 0.0
    drop: bool = False
    after_handling: bool = False
    times: int = 1  # -1: forever

    def matches(self, provider: str, method: str, path: str) -> bool:
        """Whether this fault applies to a request."""
        if self.provider is not None and self.provider != provider:
            return False
        if self.method is not None and self.method.upper() != method:
            return False
        return re.search(self.path, path) is not None

    def response(self) -> SimResponse:
        """The answer this fault gives (requires `status`)."""
        assert self.status is not None
        headers: dict[str, str] = {}
        if self.retry_after is not None:
            headers["Retry-After"] = f"{self.retry_after:g}"
        body: Any = self.body
        if body is None and self.status not in (204, 304):
            body = {"error": f"sandbox fault: HTTP {self.status}"}
        elif isinstance(body, str):
            body = body.encode("utf-8")
        return SimResponse(self.status, body, headers=headers, content_type=self.content_type)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (bytes bodies as text)."""
        data = dataclasses.asdict(self)
        if isinstance(self.body, bytes):
            data["body"] = self.body.decode("utf-8", "replace")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fault:
        """Build from JSON (the control API); raises ValueError on unknown fields/bad regex."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown fault fields: {', '.join(unknown)}")
        fault = cls(**data)
        re.compile(fault.path)
        checks = [
            (fault.status is None or _is_int(fault.status), "status must be an integer"),
            (_is_int(fault.times), "times must be an integer"),
            (_is_number(fault.delay) and fault.delay >= 0, "delay must be a number >= 0"),
            (fault.retry_after is None or _is_number(fault.retry_after), "bad retry_after"),
            (isinstance(fault.path, str), "path must be a regex string"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        return fault


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass
class LoggedRequest:
    """One request a simulator received. `status` is 0 when the connection was dropped."""

    provider: str
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    status: int
    at: float
    #: the request target exactly as received (percent-encoded, provider prefix and query included)
    raw_path: str = ""

    def json(self) -> Any:
        """The body parsed as JSON (None when empty)."""
        return json.loads(self.body) if self.body.strip() else None

    @property
    def text(self) -> str:
        """The body as text."""
        return self.body.decode("utf-8", "replace")

    def q(self, name: str, default: str | None = None) -> str | None:
        """The first value of a query parameter."""
        values = self.query.get(name)
        return values[0] if values else default

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, body as text (the control API)."""
        data = dataclasses.asdict(self)
        data["body"] = self.text
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoggedRequest:
        """Inverse of `to_dict` (for clients of the control API)."""
        fields = dict(data)
        fields["body"] = str(fields.get("body", "")).encode("utf-8")
        return cls(**fields)


# --------------------------------------------------------------------------------------------
# The HTTP server
# --------------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # idle keep-alive connections must not block stop()
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _RequestHandler)


class _Dropped(Exception):
    """The answer must be: close the connection without a response."""


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real APIs
    timeout = 120  # idle keep-alive connections are closed after this (clients expire sooner)
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle plus delayed ACKs
    # add ~40 ms to every keep-alive request.
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
        self.end_headers()
        if payload and not no_body and self.command != "HEAD":
            self.wfile.write(payload)
        self.wfile.flush()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _dispatch


class Sandbox:
    """Serves the simulators on 127.0.0.1 in a background thread.

    directory: where each provider's world persists as `<type>.json` (None: in memory only).
    port: 0 picks a free port. training_seconds: how long every training takes.
    latency: seconds added to every provider request. api_keys: per-type overrides of
    SANDBOX_API_KEYS. providers: the types to serve (default: every available simulator).
    simulators: extra simulator classes by type, beside the registry (tests, plugins).
    clock: the simulators' clock (epoch seconds), for tests that skip time.
    max_logged: the request log keeps the most recent this many requests (long-running use).
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
        server.shutdown()
        with server.connections_lock:
            conns = list(server.connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
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
        segments = split.path.lstrip("/").split("/", 1)
        first = unquote(segments[0])
        rest = "/" + segments[1] if len(segments) > 1 else "/"
        query = parse_qs(split.query, keep_blank_values=True)
        headers = {k.lower(): v for k, v in handler.headers.items()}
        if first == CONTROL_PREFIX:
            return _ControlAPI(self).handle(method, unquote(rest), query, body)
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


class _ControlAPI:
    """`/_sandbox/...`: the request log, faults and failures for out-of-process users.

    GET /_sandbox                      -> {"url", "providers": {type: base_url}, "env"}
    GET /_sandbox/requests[?provider=] -> [LoggedRequest as JSON, body as text]
    DELETE /_sandbox/requests          -> {"cleared": n}
    GET /_sandbox/faults               -> [Fault as JSON]
    POST /_sandbox/faults              -> 201 (body: Fault fields as JSON)
    DELETE /_sandbox/faults            -> {"cleared": n}
    POST /_sandbox/{type}/fail-next    -> {"pending": n} (body: {"n": 1, "message"?: str})
    GET /_sandbox/{type}/world         -> the simulator's world
    """

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox

    def handle(self, method: str, path: str, query: dict[str, list[str]], body: bytes) -> SimResponse:
        sb = self.sandbox
        parts = [p for p in path.split("/") if p]
        try:
            if not parts and method == "GET":
                return SimResponse(
                    200,
                    {
                        "url": sb.url,
                        "providers": {t: sb.base_url(t) for t in sb.served},
                        "env": sb.env(),
                        "training_seconds": sb.training_seconds,
                    },
                )
            if parts == ["requests"]:
                if method == "GET":
                    provider = query["provider"][0] if query.get("provider") else None
                    return SimResponse(200, [r.to_dict() for r in sb.requests(provider)])
                if method == "DELETE":
                    count = len(sb.requests())
                    sb.clear_requests()
                    return SimResponse(200, {"cleared": count})
            if parts == ["faults"]:
                if method == "GET":
                    return SimResponse(200, [f.to_dict() for f in sb.faults()])
                if method == "POST":
                    data = _json_object(body)
                    try:
                        fault = Fault.from_dict(data)
                    except (TypeError, ValueError, re.error) as exc:
                        return SimResponse(400, {"error": f"bad fault: {exc}"})
                    sb.inject(fault)
                    return SimResponse(201, fault.to_dict())
                if method == "DELETE":
                    count = len(sb.faults())
                    sb.clear_faults()
                    return SimResponse(200, {"cleared": count})
            if len(parts) == 2 and parts[0] in sb.served:
                sim = sb.sim(parts[0])
                if parts[1] == "fail-next" and method == "POST":
                    data = _json_object(body) if body.strip() else {}
                    n = data.get("n", 1)
                    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                        return SimResponse(400, {"error": "n must be a non-negative integer"})
                    sim.fail_next_trainings(n, str(data.get("message", "simulated failure")))
                    with sim.transaction(save=False) as world:
                        pending = len(world.get("_sandbox", {}).get("fail_next", []))
                    return SimResponse(200, {"pending": pending})
                if parts[1] == "world" and method == "GET":
                    with sim.transaction(save=False) as world:
                        return SimResponse(200, json.loads(json.dumps(world)))
        except SimHTTPError as err:
            return err.response()
        return SimResponse(404, {"error": f"unknown sandbox control route: {method} {path}"})


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body or b"{}")
    except ValueError as exc:
        raise SimHTTPError(400, {"error": f"invalid JSON: {exc}"}) from exc
    if not isinstance(data, dict):
        raise SimHTTPError(400, {"error": "expected a JSON object"})
    return data
