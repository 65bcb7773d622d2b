"""The composition root: options from flags and environment, and the objects built from them.

`cli` and `daemon` are thin shells over this module and never import each other. Everything
that reads the operator's environment (`RECONCILER_*` variables) for wiring lives here, so the
layers below (engine, providers, state) get plain values and can be tested without it.
"""

from __future__ import annotations

import functools
import gc
import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from reconciler.budget import Limits
    from reconciler.engine import Engine
    from reconciler.logs import Redactor
    from reconciler.notify import EventSink, Notifier, ResultObserver
    from reconciler.providers.clients import SharedClients
    from reconciler.providers.origins import TrustPolicy
    from reconciler.report.github import GitHub
    from reconciler.sandbox.server import Sandbox
    from reconciler.seams import Seams
    from reconciler.spec import ManifestSet
    from reconciler.state.base import StateStore

#: The distribution name on the package index (the command and import package are `reconciler`).
DISTRIBUTION = "reconciler-gitops"
DEFAULT_PATHS = ("specs",)
STATE_ENV = "RECONCILER_STATE"
POLL_INTERVAL_ENV = "RECONCILER_POLL_INTERVAL"
SANDBOX_TRAINING_SECONDS_ENV = "RECONCILER_SANDBOX_TRAINING_SECONDS"
DEFAULT_SANDBOX_TRAINING_SECONDS = 3.0
#: How often the sandbox's trainings are polled (`--sandbox`, and printed by `reconciler sandbox`).
SANDBOX_POLL_INTERVAL = "0.5s"
#: Seconds an HTTP request to a provider may take (connect + answer); tests lower it.
HTTP_TIMEOUT_ENV = "RECONCILER_HTTP_TIMEOUT"
#: Comma-separated URLs that receive a JSON POST per transition (secrets: never shown).
NOTIFY_URL_ENV = "RECONCILER_NOTIFY_URL"
#: `apply --max-trainings` when the flag is not given (the blast radius of one commit).
MAX_TRAININGS_ENV = "RECONCILER_MAX_TRAININGS"


def state_url(flag: str | None, env: Mapping[str, str] | None = None) -> str:
    """`--state`, else `RECONCILER_STATE`, else the local SQLite file."""
    from reconciler.state import DEFAULT_STATE_URL

    env = os.environ if env is None else env
    return flag or env.get(STATE_ENV) or DEFAULT_STATE_URL


def state_dir(url: str) -> Path:
    """Where `.reconciler/` files beside the state live (the sandbox world)."""
    if url.startswith("sqlite:///"):
        from reconciler.state import sqlite_path

        return sqlite_path(url).parent
    return Path(".reconciler")


def github(flag: str | None, env: Mapping[str, str] | None = None) -> GitHub:
    """GitHub Actions output: annotations with `--annotations github` (or under `GITHUB_ACTIONS=true`
    unless `--annotations none`), the step summary file when `GITHUB_STEP_SUMMARY` is set."""
    from reconciler.report.github import GitHub

    env = os.environ if env is None else env
    on = flag == "github" or (flag is None and env.get("GITHUB_ACTIONS") == "true")
    workspace = env.get("GITHUB_WORKSPACE")
    summary = env.get("GITHUB_STEP_SUMMARY")
    return GitHub(
        annotations=on,
        workspace=Path(workspace) if workspace else None,
        step_summary=Path(summary) if summary else None,
    )


def live_terminal(stream: TextIO, env: Mapping[str, str] | None = None) -> TextIO | None:
    """`stream` when progress may be drawn on it in place: a terminal, outside CI, not TERM=dumb."""
    env = os.environ if env is None else env
    isatty = getattr(stream, "isatty", None)
    if not callable(isatty) or not isatty() or env.get("CI") or env.get("TERM") == "dumb":
        return None
    return stream


def terminal_width() -> int:
    """The terminal's width in columns (`COLUMNS`, the terminal, else 80)."""
    import shutil

    return shutil.get_terminal_size((80, 24)).columns


def paths_or_default(paths: Sequence[str]) -> list[str]:
    return list(paths or DEFAULT_PATHS)


@functools.cache
def redactor() -> Redactor:
    """The process's redactor: masks every *_API_KEY value, and the variables Provider manifests name."""
    from reconciler.logs import Redactor

    return Redactor()


def trust(env: Mapping[str, str] | None = None) -> TrustPolicy:
    """The operator's trust policy: allowed origins per provider type (built-in base URL,
    `RECONCILER_<TYPE>_BASE_URL`, `RECONCILER_ALLOWED_ORIGINS`) and `RECONCILER_ALLOWED_KEY_ENVS`."""
    from reconciler.errors import ConfigError
    from reconciler.providers.catalog import base_urls
    from reconciler.providers.origins import TrustPolicy

    try:
        return TrustPolicy.from_env(os.environ if env is None else env, base_urls())
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def load(paths: Sequence[str]) -> ManifestSet:
    """The manifests under `paths` (default `specs/`), checked against the operator's trust
    policy; ManifestError lists every problem."""
    from reconciler.heap import collector_paused
    from reconciler.logs import provider_key_envs

    # the manifests live as long as the command: frozen out of the cyclic collector's sight before
    # it resumes, no collection (nor the one at exit) walks their objects (0.1 s a walk at 10,000)
    with collector_paused():
        try:
            # imported under the pause too: pydantic's and PyYAML's modules are long-lived objects as well
            from reconciler.spec import load_manifests

            manifests = load_manifests(paths_or_default(paths), trust=trust(), parallel=True)
        finally:
            gc.freeze()
    # a Provider may name any variable for its key: mask its value in log lines too
    redactor().watch_env([*provider_key_envs(), *(cfg.api_key_env for cfg in manifests.providers.values())])
    return manifests


@contextmanager
def sandbox_for(enabled: bool, url: str, env: Mapping[str, str] | None = None) -> Iterator[Sandbox | None]:
    """Start the in-process simulators for `--sandbox`; their world lives beside the state."""
    if not enabled:
        yield None
        return
    from reconciler.sandbox.server import Sandbox

    sb = Sandbox(state_dir(url) / "sandbox", training_seconds=sandbox_training_seconds(None, env))
    sb.start()
    try:
        yield sb
    finally:
        sb.stop()


def _setting(name: str, env: Mapping[str, str] | None) -> str:
    """An operator variable's value, stripped ("" when unset); `env` defaults to the process's."""
    return (os.environ if env is None else env).get(name, "").strip()


def sandbox_training_seconds(flag: float | None, env: Mapping[str, str] | None = None) -> float:
    """How long a simulated training takes: `--training-seconds`, else
    `RECONCILER_SANDBOX_TRAINING_SECONDS`, else 3."""
    from reconciler.errors import ConfigError

    if flag is not None:
        return flag
    text = _setting(SANDBOX_TRAINING_SECONDS_ENV, env)
    if not text:
        return DEFAULT_SANDBOX_TRAINING_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # also NaN
        raise ConfigError(f"{SANDBOX_TRAINING_SECONDS_ENV} must be a number of seconds (>= 0), got {text!r}")
    return seconds


def sandbox_exports(sandbox: Sandbox) -> dict[str, str]:
    """What `reconciler sandbox` prints as `export` lines: each type's base URL and key, and the
    poll interval that suits trainings of seconds (the providers' own floors are 30 s to 5 min)."""
    return {**sandbox.env(), POLL_INTERVAL_ENV: SANDBOX_POLL_INTERVAL}


def poll_override(sandbox: Sandbox | None, env: Mapping[str, str] | None = None) -> timedelta | None:
    """`RECONCILER_POLL_INTERVAL` replaces every provider's poll interval (and PhotoGPT's 5-minute
    floor): for simulators, whose trainings take seconds. The sandbox polls every 0.5 s."""
    from reconciler.errors import ConfigError
    from reconciler.values import parse_duration

    env = os.environ if env is None else env
    text = env.get(POLL_INTERVAL_ENV) or (SANDBOX_POLL_INTERVAL if sandbox is not None else "")
    if not text:
        return None
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise ConfigError(f"{POLL_INTERVAL_ENV}: {exc}") from None


def http_timeout(env: Mapping[str, str] | None = None) -> float:
    """The HTTP timeout in seconds: `RECONCILER_HTTP_TIMEOUT` (a duration such as 10s) or 30."""
    from reconciler.engine import DEFAULT_HTTP_TIMEOUT
    from reconciler.errors import ConfigError
    from reconciler.values import parse_duration

    env = os.environ if env is None else env
    text = env.get(HTTP_TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_HTTP_TIMEOUT
    try:
        seconds = parse_duration(text).total_seconds()
    except ValueError as exc:
        raise ConfigError(f"{HTTP_TIMEOUT_ENV}: {exc}") from None
    if seconds <= 0:
        raise ConfigError(f"{HTTP_TIMEOUT_ENV} must be more than 0, got {text!r}")
    return seconds


def notify_urls(env: Mapping[str, str] | None = None) -> list[str]:
    """`RECONCILER_NOTIFY_URL`'s URLs (none: no notifications). ConfigError names the variable and
    the URL's position, never the URL: it is a secret (a Slack webhook URL is its own key)."""
    from reconciler.errors import ConfigError
    from reconciler.providers.origins import endpoint_url_problem

    env = os.environ if env is None else env
    urls = [u.strip() for u in env.get(NOTIFY_URL_ENV, "").split(",") if u.strip()]
    # masked in every log line, whatever quotes it
    redactor().add_values(urls)
    for i, url in enumerate(urls, 1):
        if (problem := endpoint_url_problem(url)) is not None:
            where = f"URL {i} of {len(urls)}" if len(urls) > 1 else "the URL"
            raise ConfigError(f"{NOTIFY_URL_ENV}: {where} {problem} (write comma-separated https://... URLs)")
    return urls


def notifier(
    state: StateStore,
    seams: Seams | None = None,
    *,
    on_result: ResultObserver | None = None,
    redact: Redactor | None = None,
    env: Mapping[str, str] | None = None,
) -> Notifier | None:
    """The started background notifier of `RECONCILER_NOTIFY_URL` over this state, or None when
    the variable is unset. Its backoff waits through `seams.sleep`; `on_result` counts outcomes;
    `redact` (default: the process's redactor) masks key values in bodies."""
    from reconciler.notify import Notifier
    from reconciler.seams import Seams

    urls = notify_urls(env)
    if not urls:
        return None
    redact = redact or redactor()
    redact.add_values(urls)
    return Notifier(urls, state, redact=redact, sleep=(seams or Seams()).sleep, on_result=on_result).start()


def max_trainings(flag: int | None, env: Mapping[str, str] | None = None) -> int:
    """`--max-trainings`, else `RECONCILER_MAX_TRAININGS`, else 20: the most trainings one apply starts."""
    from reconciler.budget import DEFAULT_MAX_TRAININGS
    from reconciler.errors import ConfigError

    if flag is not None:
        return flag
    text = _setting(MAX_TRAININGS_ENV, env)
    if not text:
        return DEFAULT_MAX_TRAININGS
    if not text.isdigit():
        raise ConfigError(
            f"{MAX_TRAININGS_ENV} must be a whole number of trainings (0 or more), got {text!r}; "
            f"e.g. {MAX_TRAININGS_ENV}={DEFAULT_MAX_TRAININGS}"
        )
    return int(text)


def build_engine(
    manifests: ManifestSet,
    state: StateStore,
    sandbox: Sandbox | None,
    paths: Sequence[str],
    seams: Seams | None = None,
    limits: Limits | None = None,
    events: EventSink | None = None,
    clients: SharedClients | None = None,
) -> Engine:
    """The engine for these manifests and this state, pointed at the sandbox when it runs.

    It reads provider keys and base URLs from the process environment; `seams` (tests) replace
    its clock, backoff sleep, HTTP transport, request observers and trigger-step hook; `limits`
    (the daemon) say who writes and the hourly rate; `events` receives its transitions (`Notifier.emit`);
    `clients` (the daemon) are HTTP clients shared with its other engines (`providers.clients`).
    """
    from reconciler.engine import Engine
    from reconciler.sandbox.registry import SANDBOX_API_KEYS

    policy = trust()
    endpoints = {}
    if sandbox is not None:
        endpoints = {t: (sandbox.base_url(t), SANDBOX_API_KEYS[t]) for t in SANDBOX_API_KEYS}
        # the operator asked for the simulators: their origins are allowed
        policy = policy.allowing({t: url for t, (url, _) in endpoints.items()})
    return Engine(
        manifests,
        state,
        env=os.environ,
        git_commit=git_commit(paths_or_default(paths), os.environ),
        endpoints=endpoints,
        poll_interval=poll_override(sandbox),
        trust=policy,
        http_timeout=http_timeout(),
        seams=seams,
        limits=limits,
        events=events,
        clients=clients,
    )


#: the cyclic GC's thresholds for a process that plans many models (CPython's default: 700, 10, 10)
GC_THRESHOLDS = (10_000, 20, 20)


def settle_heap(*, freeze: bool) -> None:
    """Make the cyclic garbage collector cheap for a process holding thousands of models.

    A plan of 10,000 models keeps hundreds of thousands of objects alive (manifests, records,
    observations); with CPython's default thresholds the collector walks them over and over, a
    third of the plan's CPU in benchmarks/plan_scale.py. Rarer young collections cut that to a
    tenth. `freeze` (one-shot commands) also leaves what is loaded now out of every later pass;
    frozen objects are still freed by reference counting, so a long-running process that reloads
    manifests (the daemon) does not freeze.
    """
    gc.set_threshold(*GC_THRESHOLDS)
    if freeze:
        gc.freeze()


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim with
        return None
    return trim


def release_freed_memory() -> None:
    """Give the heap pages freed since the last call back to the OS, where glibc allows it.

    A long-running process that builds and drops many objects (the daemon's resync: 10,000
    records, observations and plans, then the previous ones freed) keeps its peak otherwise:
    glibc returns memory only from the top of each heap, and small freed blocks scattered between
    live ones pin whole pages. `malloc_trim(0)` releases every free page of every arena
    (madvise), in about a millisecond; elsewhere this does nothing.

    Only the young generations are collected first (about 10 ms at 10,000 models): the
    resync's garbage goes by reference counting, and a full collection walked the whole
    heap (about 300,000 objects, 0.13-0.2 s with the event loop stopped, per provider part)
    to find a few dozen cycles, for the same RSS (benchmarks/daemon_scale.py: 140 MB either way).
    """
    trim = _malloc_trim()
    if trim is not None:
        gc.collect(1)  # recent cycles freed first, so their pages are free when trimmed
        trim(0)


def urgent_requests() -> AbstractContextManager[None]:
    """Provider requests made inside (and in the tasks started inside) take the next free slot of
    their provider's limits before every other waiting request: the daemon's change lane beside a resync."""
    from reconciler.providers.concurrency import urgent_requests

    return urgent_requests()


def holder(command: str) -> str:
    """How this process names itself as a lock holder."""
    import socket

    return f"`reconciler {command}` pid {os.getpid()} on {socket.gethostname()} since {datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}"


@asynccontextmanager
async def session(
    paths: Sequence[str], url: str, sandbox: bool, seams: Seams | None = None, *, notify: bool = False
) -> AsyncIterator[tuple[ManifestSet, Engine]]:
    """Manifests, an open state and an engine (with the sandbox when asked); always closed.

    `notify` (apply): the engine's transitions go to `RECONCILER_NOTIFY_URL` in the background;
    at the end, what is still undelivered gets a bounded wait (`notify.DRAIN_SECONDS`)."""
    from reconciler.state import open_state

    if notify:
        notify_urls()  # a bad URL stops the command before anything runs
    manifests = load(paths)  # frozen as loaded
    settle_heap(freeze=False)
    with sandbox_for(sandbox, url) as sb:
        state = await open_state(url)
        try:
            notices = notifier(state, seams) if notify else None
            try:
                engine = build_engine(manifests, state, sb, paths, seams, events=notices.emit if notices else None)
                try:
                    yield manifests, engine
                finally:
                    await engine.aclose()
            finally:
                if notices is not None:
                    await notices.aclose()
        finally:
            await state.close()


def git_commit(paths: Sequence[str], env: Mapping[str, str]) -> str | None:
    """The HEAD commit of the git repo holding the manifests, else the CI's commit variable (recorded in
    history)."""
    start = Path(paths[0]).resolve() if paths else Path.cwd()
    d = start if start.is_dir() else start.parent
    for cand in (d, *d.parents):
        head = cand / ".git" / "HEAD"
        if head.is_file():
            try:
                ref = head.read_text().strip()
                if ref.startswith("ref: "):
                    ref_path = cand / ".git" / ref[5:]
                    if ref_path.is_file():
                        return ref_path.read_text().strip()
                    packed = cand / ".git" / "packed-refs"
                    if packed.is_file():
                        for line in packed.read_text().splitlines():
                            if line.endswith(" " + ref[5:]):
                                return line.split()[0]
                    return None
                return ref
            except OSError:
                return None
    return env.get("GITHUB_SHA") or env.get("CI_COMMIT_SHA")


@asynccontextmanager
async def state_session(paths: Sequence[str], url: str) -> AsyncIterator[tuple[ManifestSet, StateStore, str | None]]:
    """Manifests, an open state and the manifests' git commit, for the commands that edit the
    state by hand (`rename`, `forget`, `retry`): no engine, nothing sent to a provider."""
    from reconciler.state import open_state

    manifests = load(paths)
    state = await open_state(url)
    try:
        yield manifests, state, git_commit(paths_or_default(paths), os.environ)
    finally:
        await state.close()
