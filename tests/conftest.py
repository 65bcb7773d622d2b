"""Shared fixtures: a sandbox on 127.0.0.1 and a way to run the real CLI against it."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import seamed_cli

from reconciler.sandbox.server import Sandbox

ROOT = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("RECONCILER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def with_search_path(url: str, schema: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A state URL on the real PostgreSQL with a fresh schema, dropped afterwards."""
    import uuid

    import psycopg
    from psycopg import sql

    from reconciler.state.postgres import redact_url

    try:
        admin = psycopg.connect(PG_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as err:
        pytest.skip(f"PostgreSQL not reachable at {redact_url(PG_URL)}: {err}")
    schema = f"reconciler_test_{uuid.uuid4().hex[:12]}"
    admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        yield with_search_path(PG_URL, schema)
    finally:
        admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
        admin.close()


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


class Clock:
    """A settable clock (epoch seconds): simulator state machines are tested without waiting."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0  # 2023-11-14

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    """All five simulators on a free port; trainings take 1 s."""
    sb = Sandbox(tmp_path / "world", training_seconds=1.0).start()
    try:
        yield sb
    finally:
        sb.stop()


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
        path = self.specs / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and not k.startswith("RECONCILER_")}
        env.update(self.sandbox.env())
        env["RECONCILER_STATE"] = self.state_url
        env["RECONCILER_POLL_INTERVAL"] = "0.2s"
        env.pop("CI", None)
        env.update(extra)
        return env

    def run(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        timeout: float = 60,
        backoff: bool = False,
        crash_at: str | None = None,
    ) -> CliResult:
        """Run `reconciler ARGS` as a real process in the workspace folder (tests/seamed_cli.py).

        Retries do not wait unless `backoff`; `crash_at` kills it at that step of a trigger.
        """
        proc = subprocess.run(
            seamed_cli.command(*args, crash_at=crash_at, backoff=backoff),
            cwd=self.root,
            env=env or self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def workspace(tmp_path: Path, sandbox: Sandbox) -> Workspace:
    root = tmp_path / "project"
    (root / "specs").mkdir(parents=True)
    return Workspace(root, sandbox)
