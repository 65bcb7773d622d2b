"""State backends: `open_state(url)` returns a `StateStore` for `sqlite:///...` or `postgresql://...`."""

from __future__ import annotations

from pathlib import Path

from reconciler.errors import ConfigError
from reconciler.state.base import StateStore

__all__ = ["StateStore", "open_state", "sqlite_path"]

DEFAULT_STATE_URL = "sqlite:///.reconciler/state.db"


def sqlite_path(url: str) -> Path:
    """`sqlite:////abs.db` is absolute, `sqlite:///rel.db` relative to the working directory."""
    rest = url[len("sqlite:///") :]
    if not rest:
        raise ConfigError(f"state URL {url!r} names no file; use sqlite:///path/to/state.db")
    return Path(rest)


async def open_state(url: str) -> StateStore:
    """Open (and create or migrate) the state store the URL names."""
    if url.startswith("sqlite:///"):
        from reconciler.state.sqlite import SQLiteStateStore

        return await SQLiteStateStore.open(sqlite_path(url))
    if url.startswith(("postgresql://", "postgres://")):
        from reconciler.state.postgres import PostgresStateStore

        return await PostgresStateStore.open(url)
    raise ConfigError(
        f"unsupported state URL {url!r}: use sqlite:///path/state.db or postgresql://host/db "
        "(--state or RECONCILER_STATE)"
    )
