"""The persisted world of one provider: a JSON file, atomic writes, cross-process locking and
change detection."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:  # POSIX only: cross-process locking of a world file; elsewhere we rely on atomic writes.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


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
