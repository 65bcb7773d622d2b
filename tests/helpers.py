"""What the test modules share: the workspace and its CLI runners, waiting, request-log readers,
manifest writers, the quickstart manifests, a daemon process. Fixtures are in conftest.py."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

import httpx
import seamed_cli
import stamina

from reconciler.providers.catalog import known_types
from reconciler.sandbox.faults import LoggedRequest
from reconciler.sandbox.server import Sandbox
from reconciler.sandbox.simulator import Simulator
from reconciler.seams import Seams

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")
S = TypeVar("S", bound=Simulator)

#: quickstart manifest of each provider type -> its models (specs/<type>.yaml)
QUICKSTART: dict[str, tuple[str, ...]] = {
    "roboflow": ("hardhat-detector",),
    "rebase": ("solar-park-alpha", "wind-farm-borealis"),  # both sites in one call, as a rule
    "photogpt": ("ada-portrait",),
    "lucid": ("shop-recommender",),
    "predicthq": ("downtown-covers",),
}
PROVIDERS = tuple(t for t in QUICKSTART if t in known_types())
MODELS = tuple(m for t in PROVIDERS for m in QUICKSTART[t])
#: PhotoGPT's documented train call is a GET; the others POST
TRAIN_METHOD = {"photogpt": "GET"}
#: whether the tree has the daemon (a module today, a package after the restructuring)
HAS_DAEMON = importlib.util.find_spec("reconciler.daemon") is not None
#: the environment variable that makes the engine SIGKILL itself at a step (crash tests only)

FAST_PROVIDER = """\
apiVersion: reconciler/v1
kind: Provider
metadata: {name: TYPE}
spec: {type: TYPE, requests_per_second: 1000}
---
"""


# ---------------------------------------------------------------- raw SQL on a state


def run_sql(state_url: str, *statements: str) -> None:
    """Run statements on the state's database underneath the store (SQLite file or PostgreSQL)."""
    if state_url.startswith("sqlite:///"):
        import sqlite3

        conn = sqlite3.connect(state_url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            for statement in statements:
                conn.execute(statement)
        finally:
            conn.close()
        return
    import psycopg

    with psycopg.connect(state_url, autocommit=True) as pg:
        for statement in statements:
            pg.execute(statement.encode())


# ---------------------------------------------------------------- waiting


def wait_until(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.02) -> T:
    """Poll `check` until it returns something truthy (returned); fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (a connection is refused until someone binds it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# ---------------------------------------------------------------- the sandbox


class HasSandbox(Protocol):
    """Anything with a `sandbox` (a Workspace)."""

    @property
    def sandbox(self) -> Sandbox: ...


def _sandbox_of(source: Sandbox | HasSandbox) -> Sandbox:
    return source if isinstance(source, Sandbox) else source.sandbox


def sim(source: Sandbox | HasSandbox, provider: str, cls: type[S]) -> S:
    """The simulator of `provider`, typed as its class."""
    got = _sandbox_of(source).sim(provider)
    assert isinstance(got, cls), got
    return got


def train_calls(
    source: Sandbox | HasSandbox, provider: str = "roboflow", *, path: str = r"/train$", any_method: bool = False
) -> list[LoggedRequest]:
    """The train calls a simulator handled (a request is logged once it was handled), oldest first.

    `path` is a regex searched in the path after the provider's base path; the method is the
    documented one (PhotoGPT's GET, else POST) unless `any_method`.
    """
    method = None if any_method else TRAIN_METHOD.get(provider, "POST")
    return _sandbox_of(source).requests(provider, method=method, path=path)


def train_paths(source: Sandbox | HasSandbox, provider: str = "roboflow") -> list[str]:
    return [r.path for r in train_calls(source, provider)]


@contextlib.contextmanager
def one_simulator(
    directory: Path, provider: str, *, training_seconds: float = 100, clock: Callable[[], float] = time.time
) -> Iterator[Sandbox]:
    """A sandbox serving only `provider` (others cannot interfere); on a clock moved by hand, its
    100 s trainings end when the test says so."""
    with Sandbox(directory, providers=[provider], training_seconds=training_seconds, clock=clock) as sb:
        yield sb


class Clock:
    """A settable clock (epoch seconds): simulator state machines are tested without waiting."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0  # 2023-11-14

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Gate:
    """Holds a simulator's matching requests at a point of handling until `open()`.

    `before` (default): the request reached the provider, which has not acted on it yet ("in
    flight"). `before=False`: the provider acted, its answer is held back. `arrived` counts the
    requests at the gate; nothing depends on how long anything takes.
    """

    def __init__(self, sandbox: Sandbox, providers: tuple[str, ...], path: str, *, before: bool = True) -> None:
        self.sandbox = sandbox
        self.path = path
        self.before = before
        self.arrived: dict[str, int] = {}
        self._open = threading.Event()
        self._lock = threading.Lock()
        self._originals: dict[str, Callable[..., Any]] = {}
        for provider in providers:
            self._install(provider)

    def _install(self, provider: str) -> None:
        sim = self.sandbox.sim(provider)
        original = sim.handle
        method = TRAIN_METHOD.get(provider, "POST")
        self._originals[provider] = original

        def handle(req: Any) -> Any:
            if req.method != method or re.search(self.path, req.path) is None:
                return original(req)
            if self.before:
                self._arrive(provider)
                self._open.wait()
                return original(req)
            answer = original(req)
            self._arrive(provider)
            self._open.wait()
            return answer

        sim.handle = handle  # type: ignore[method-assign]

    def _arrive(self, provider: str) -> None:
        with self._lock:
            self.arrived[provider] = self.arrived.get(provider, 0) + 1

    def count(self, provider: str) -> int:
        with self._lock:
            return self.arrived.get(provider, 0)

    def reached_by_all(self) -> bool:
        return all(self.count(p) for p in self._originals)

    def open(self) -> None:
        self._open.set()

    def remove(self) -> None:
        """Open and put the simulators' own handlers back."""
        self.open()
        for provider, original in self._originals.items():
            self.sandbox.sim(provider).handle = original  # type: ignore[method-assign]


# ---------------------------------------------------------------- manifests


def roboflow_model(
    name: str = "hardhat-detector",
    *,
    project: str = "hardhats",
    workspace: str = "acme",
    version: int = 3,
    model_type: str = "rfdetr-nano",
    epochs: int | str | None = 100,
    labels: str | None = None,
) -> str:
    """A Roboflow TrainedModel manifest."""
    training = f"version: {version}, model_type: {model_type}" + (f", epochs: {epochs}" if epochs is not None else "")
    meta = f"metadata:\n  name: {name}\n" + (f"  labels: {labels}\n" if labels else "")
    return (
        "apiVersion: reconciler/v1\nkind: TrainedModel\n"
        + meta
        + f"spec:\n  provider: roboflow\n  model: {{workspace: {workspace}, project: {project}}}\n"
        + f"  training: {{{training}}}\n"
    )


def write_text(path: Path, text: str) -> Path:
    """Write dedented `text`, creating the folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def copy_quickstart(specs: Path, providers: tuple[str, ...] = PROVIDERS) -> None:
    """The quickstart manifests of these providers (and PhotoGPT's images), client rate limits lifted:
    they are there for the real APIs and would only slow the simulators down."""
    specs.mkdir(parents=True, exist_ok=True)
    for t in providers:
        text = (ROOT / "specs" / f"{t}.yaml").read_text()
        (specs / f"{t}.yaml").write_text(FAST_PROVIDER.replace("TYPE", t) + text)
    if "photogpt" in providers:
        shutil.copytree(ROOT / "specs" / "photogpt-images", specs / "photogpt-images", dirs_exist_ok=True)


def codes(entry: dict[str, Any]) -> list[str]:
    """The reason codes of a plan entry (JSON)."""
    return [r["code"] for r in entry["reasons"]]


def by_name(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The models of a plan/status document (JSON) by name."""
    return {m["name"]: m for m in doc["models"]}


# ---------------------------------------------------------------- the CLI


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


_run_lock = threading.Lock()


@contextlib.contextmanager
def _as_a_process(env: dict[str, str], cwd: Path) -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """This process as `reconciler` would start: exactly `env`, in `cwd`, with its own stdout,
    stderr and root logger; all of it put back afterwards."""
    import reconciler.runtime
    from reconciler.logs import NOISY_LOGGERS

    root = logging.getLogger()
    saved_env = dict(os.environ)
    saved_cwd = os.getcwd()
    saved_streams = (sys.stdout, sys.stderr)
    saved_root = (list(root.handlers), root.level)
    saved_levels = {name: logging.getLogger(name).level for name in NOISY_LOGGERS}
    # the test's simulators serve from this process too; in a real run they are another process,
    # whose log lines never reach the CLI's stderr (no test here runs `--sandbox` in-process)
    sandbox_log = logging.getLogger("reconciler.sandbox")
    saved_disabled = sandbox_log.disabled
    out, err = io.StringIO(), io.StringIO()
    with _run_lock:
        os.environ.clear()
        os.environ.update(env)
        os.chdir(cwd)
        sys.stdout, sys.stderr = out, err
        # a fresh process builds its redactor from its own environment
        reconciler.runtime.redactor.cache_clear()
        sandbox_log.disabled = True
        try:
            yield out, err
        finally:
            sys.stdout, sys.stderr = saved_streams
            os.chdir(saved_cwd)
            os.environ.clear()
            os.environ.update(saved_env)
            root.handlers[:] = saved_root[0]
            root.setLevel(saved_root[1])
            for name, level in saved_levels.items():
                logging.getLogger(name).setLevel(level)
            sandbox_log.disabled = saved_disabled
            reconciler.runtime.redactor.cache_clear()


def run_in_process(
    args: tuple[str, ...], env: dict[str, str], cwd: Path, *, backoff: bool = False, seams: Seams | None = None
) -> CliResult:
    """`reconciler ARGS` through `reconciler.cli.main`, as the entry point runs it: its exit code
    (SystemExit), and what an uncaught exception would print (a traceback, exit code 1).

    Retries do not wait (stamina's test mode, each client's attempts kept) unless `backoff`."""
    from reconciler.cli import main

    with _as_a_process(env, cwd) as (out, err):
        code: int
        try:
            with stamina.set_testing(not backoff, attempts=sys.maxsize, cap=True):
                main(list(args), seams=seams)
            code = 0
        except SystemExit as exc:
            if exc.code is None:
                code = 0
            elif isinstance(exc.code, int):
                code = exc.code
            else:  # sys.exit("message"): printed, exit code 1
                print(exc.code, file=sys.stderr)
                code = 1
        except BaseException:  # what the interpreter does with an uncaught exception
            traceback.print_exc(file=sys.stderr)
            code = 1
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        return CliResult(code, out.getvalue(), err.getvalue())


@dataclass
class Workspace:
    """A project folder with manifests, a state file and the sandbox's environment."""

    root: Path
    sandbox: Sandbox

    @property
    def specs(self) -> Path:
        return self.root / "specs"

    @property
    def state_url(self) -> str:
        return f"sqlite:///{self.root / 'state.db'}"

    def write(self, relpath: str, text: str) -> Path:
        return write_text(self.specs / relpath, text)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and not k.startswith("RECONCILER_")}
        env.update(self.sandbox.env())
        env["RECONCILER_STATE"] = self.state_url
        env["RECONCILER_POLL_INTERVAL"] = "0.1s"
        env.pop("CI", None)
        env.pop("PYTEST_CURRENT_TEST", None)
        env.update(extra)
        return env

    def run(self, *args: str, env: dict[str, str] | None = None, backoff: bool = False) -> CliResult:
        """`reconciler ARGS` in this process, in the workspace folder with exactly `env`.

        Retries do not wait unless `backoff`."""
        return run_in_process(args, env or self.env(), self.root, backoff=backoff)

    def run_process(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        timeout: float = 60,
        crash_at: str | None = None,
        backoff: bool = False,
    ) -> CliResult:
        """`reconciler ARGS` as a real process in the workspace folder (tests/seamed_cli.py):
        `crash_at` kills it at that step of a trigger; retries do not wait unless `backoff`."""
        proc = subprocess.run(
            seamed_cli.command(*args, crash_at=crash_at, backoff=backoff),
            cwd=self.root,
            env=env or self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    def start_process(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """`reconciler ARGS` started as a real process (stdout and stderr piped)."""
        return subprocess.Popen(
            seamed_cli.command(*args),
            cwd=self.root,
            env=env or self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def events(self, name: str, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """`history NAME --output json`: the model's events, oldest first."""
        res = self.run("history", name, "--output", "json", env=env)
        assert res.code == 0, res.output
        return cast(list[dict[str, Any]], res.json()["events"])

    def story(self, name: str, env: dict[str, str] | None = None) -> list[str]:
        """The model's event names, oldest first."""
        return [e["event"] for e in self.events(name, env)]

    def plan_json(self, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        """`plan --output json ARGS`: exit code and document."""
        res = self.run("plan", "--output", "json", *args, env=env)
        return res.code, cast(dict[str, Any], res.json())


# ---------------------------------------------------------------- the daemon as a process


@dataclass
class DaemonProcess:
    """`reconciler daemon` started in the workspace; stdout/stderr go to files (no pipe can fill up)."""

    ws: Workspace
    args: tuple[str, ...] = ()
    env: dict[str, str] | None = None
    name: str = "daemon"
    paths: tuple[str, ...] = ("specs",)
    global_args: tuple[str, ...] = ()
    port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        self.url = f"http://127.0.0.1:{self.port}"
        self.out = self.ws.root / f"{self.name}.out"
        self.err = self.ws.root / f"{self.name}.err"
        cmd = seamed_cli.command(
            *self.global_args, "daemon", *self.paths, "--listen", f"127.0.0.1:{self.port}", *self.args
        )
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(cmd, cwd=self.ws.root, env=self.env or self.ws.env(), stdout=out, stderr=err)
        self.http = httpx.Client(base_url=self.url, timeout=5)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        return self.err.read_text()

    def stdout(self) -> str:
        return self.out.read_text()

    def get(self, path: str) -> httpx.Response:
        return self.http.get(path)

    def wait_ready(self, timeout: float = 20) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.stderr()}")
            try:
                return self.get("/readyz").status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout, "/readyz to answer 200", interval=0.05)

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = self.get("/status").json()
        return doc

    def model(self, name: str) -> dict[str, Any] | None:
        for entry in self.status()["models"]:
            if entry["name"] == name:
                return dict(entry)
        return None

    def wait_in_sync(self, name: str, timeout: float = 15) -> dict[str, Any]:
        """Until the model's last training succeeded and nothing is left to do."""

        def in_sync() -> dict[str, Any] | None:
            m = self.model(name)
            last = (m or {}).get("last_training") or {}
            return m if m and m["action"] == "none" and last.get("status") == "succeeded" else None

        return wait_until(in_sync, timeout, f"{name} to be trained and in sync", interval=0.05)

    def terminate(self, timeout: float = 10) -> tuple[int, float]:
        """SIGTERM; the exit code and how long the exit took."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        return code, time.monotonic() - started

    def kill(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
