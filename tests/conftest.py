"""Shared fixtures: a sandbox on 127.0.0.1 and a workspace that runs the CLI against it.

The classes and helpers they use are in helpers.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ROOT, CliResult, Clock, DaemonProcess, Workspace
from hypothesis import settings

from reconciler.sandbox.server import Sandbox

# No per-example deadline: on these shared 2-core machines it is a timing assertion that fails
# under load, not a property of the code (speed targets live in benchmarks/).
settings.register_profile("reconciler", deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "reconciler"))

__all__ = ["PG_URL", "ROOT", "CliResult", "Clock", "Workspace", "with_search_path"]

#: how long the `sandbox` fixture's trainings take: long enough to be seen running, short to wait for
TRAINING_SECONDS = 0.4
#: the PostgreSQL server the tests use; only its maintenance database is connected to, to create
#: and drop each test's own database (no other database on the server is touched)
PG_URL = os.environ.get("RECONCILER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def with_search_path(url: str, schema: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"


def with_database(url: str, database: str) -> str:
    """The same server URL naming another database (query string kept)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A state URL on the real PostgreSQL in a database this test creates, dropped afterwards."""
    import uuid

    import psycopg
    from psycopg import sql

    from reconciler.state.postgres import redact_url

    try:
        admin = psycopg.connect(PG_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as err:
        pytest.skip(f"PostgreSQL not reachable at {redact_url(PG_URL)}: {err}")
    database = f"reconciler_test_{uuid.uuid4().hex[:12]}"
    try:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        yield with_database(PG_URL, database)
    finally:
        # FORCE: a daemon the test killed may still hold a session for a moment
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
        admin.close()


@pytest.fixture(params=["sqlite", "postgres"])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test twice: on a SQLite file in tmp_path, and on PostgreSQL in a fresh database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sandbox(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    """All five simulators on a free port; trainings take 0.4 s, or the test module's
    `SANDBOX_TRAINING_SECONDS` (a test that needs one in flight longer sets its simulator's
    `training_seconds`)."""
    seconds = float(getattr(request.module, "SANDBOX_TRAINING_SECONDS", TRAINING_SECONDS))
    sb = Sandbox(tmp_path / "world", training_seconds=seconds).start()
    try:
        yield sb
    finally:
        sb.stop()


@pytest.fixture
def workspace(tmp_path: Path, sandbox: Sandbox) -> Workspace:
    root = tmp_path / "project"
    (root / "specs").mkdir(parents=True)
    return Workspace(root, sandbox)


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    """Daemon processes a test starts (append them): killed at the end if still running."""
    started: list[DaemonProcess] = []
    yield started
    for d in started:
        d.kill()
