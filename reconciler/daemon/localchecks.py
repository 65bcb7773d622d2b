"""The checks of files beside the manifests (PhotoGPT's image glob and hashes), cached for the daemon.

`spec.assemble` asks each model's `check_local` on every reassembly; with 2,000 PhotoGPT models
that is a glob and a hash of every image, seconds per saved manifest. `LocalChecks` answers from
its cache instead, keyed on the check's inputs (models sharing an image folder share one answer),
and remembers the paths each check read (the folders it looked in, the files it hashed) with
their stat, so that:

- a file event under one of those paths drops the answers that read it (`changed`);
- `revalidate` (each full resync: the safety net for a missed event) drops every answer one of
  whose paths no longer stats the same.
"""

from __future__ import annotations

import os
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler.providers.catalog import provider_type

if TYPE_CHECKING:
    from collections.abc import Iterable

    from pydantic import BaseModel

    from reconciler.providers.provider_type import LocalProblems


def _stamp(path: str) -> int:
    """A hash of the path's (mtime_ns, size, inode), or of None when it is missing."""
    try:
        st = os.stat(path)
    except OSError:
        return hash(None)
    return hash((st.st_mtime_ns, st.st_size, st.st_ino))


_Key = tuple[str, Hashable, str, str]


@dataclass(frozen=True, slots=True)
class _Answer:
    problems: LocalProblems
    #: absolute paths read, and a hash of each one's stat when read (compact: 2,000 PhotoGPT
    #: models read 13 paths each)
    paths: tuple[str, ...]
    stamps: tuple[int, ...]


class LocalChecks:
    """A `spec.LocalCheck` that answers from a cache until a path the check read changes."""

    def __init__(self) -> None:
        self._answers: dict[_Key, _Answer] = {}
        self.runs = 0  # checks actually run (not answered from the cache)

    def __call__(
        self, type_name: str, model: BaseModel, training: BaseModel, manifest_dir: Path, root: Path
    ) -> LocalProblems:
        ptype = provider_type(type_name)
        if not ptype.reads_local_files:
            return []
        # what the check reads (PhotoGPT: the glob), not the whole model: models sharing an image
        # folder share one answer
        key = (type_name, ptype.local_key(model, training), str(manifest_dir), str(root))
        found = self._answers.get(key)
        if found is not None:
            return found.problems
        reads: set[Path] = set()
        problems = ptype.local_problems(model, training, manifest_dir, root, reads)
        self.runs += 1
        paths = tuple(sorted({os.path.abspath(p) for p in reads}))
        self._answers[key] = _Answer(problems, paths, tuple(_stamp(p) for p in paths))
        return problems

    def __len__(self) -> int:
        return len(self._answers)

    def changed(self, paths: Iterable[Path]) -> bool:
        """Forget the answers that read one of `paths` or looked in its folder; whether any were."""
        hit: set[str] = set()
        for path in paths:
            p = os.path.abspath(path)
            hit.update((p, os.path.dirname(p)))
        stale = [k for k, a in self._answers.items() if not hit.isdisjoint(a.paths)]
        for key in stale:
            del self._answers[key]
        return bool(stale)

    def revalidate(self) -> bool:
        """Forget the answers a path of which stats differently now; whether any were."""
        stale = [
            k for k, a in self._answers.items() if any(_stamp(p) != s for p, s in zip(a.paths, a.stamps, strict=True))
        ]
        for key in stale:
            del self._answers[key]
        return bool(stale)
