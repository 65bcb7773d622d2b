"""The manifests as the daemon sees them: per file, by content digest, with each file's last good version.

Manifests are parsed per file (`spec.parse_file`) and assembled (`spec.assemble`) from the newest
version of each file that is valid, else that file's last good version, so a broken file is
reported while its models keep being reconciled as they were. Files are compared by content
digest, never by event kind: an editor's atomic save and Kubernetes' ConfigMap swap (a `..data`
symlink replaced atomically) look the same.

A load is incremental: a file whose stat (mtime, size, inode) is unchanged since it was hashed is
not read again (a file an event names always is), only changed files are parsed, and the checks
of files beside the manifests (PhotoGPT's images) come from `LocalChecks` until a path they read
changes. `assemble` still runs over every file: its cross-file checks are cheap, and models
resolved again from unchanged documents are the same objects as before.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.daemon.localchecks import LocalChecks
from reconciler.domain import ProviderConfig
from reconciler.errors import Problem
from reconciler.logs import Redactor
from reconciler.providers.catalog import provider_type
from reconciler.spec import FileResult, ManifestSet, assemble, find_manifest_files, manifest_root, parse_file

if TYPE_CHECKING:
    from reconciler.domain import DesiredModel
    from reconciler.providers.origins import TrustPolicy

log = logging.getLogger("reconciler.daemon")

#: Safety net beside file events (a missed inotify event, a watched symlink replaced): compare
#: every manifest's digest this often.
RESCAN_SECONDS = 5.0
#: watchfiles groups events for at most this long; a save is reconciled well within 2 s.
WATCH_DEBOUNCE_MS = 400
WATCH_STEP_MS = 50


#: reads one manifest file (`spec.parse_file`; a test counts the calls)
Parse = Callable[[Path, "TrustPolicy | None", Path], FileResult]
#: a file modified this recently may change again within its mtime's granularity: its stat is not
#: trusted to stand for its content until it is older (git's "racily clean" files)
RACY_SECONDS = 2.0


@dataclass
class FileState:
    digest: str
    latest: FileResult  # the file as it is now
    good: FileResult | None  # its last version that assembled without problems
    #: (mtime_ns, size, inode) when the digest was taken; None: hash it again next time
    stat: tuple[int, int, int] | None = None


@dataclass
class ManifestChange:
    """What a load changed in the assembled manifests."""

    before: ManifestSet
    gone: list[str] = field(default_factory=list)  # models no longer declared
    touched: list[str] = field(default_factory=list)  # models new or changed in what reconciling them does


def _digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        return f"unreadable:{exc.errno}"


def _stat(path: Path) -> tuple[int, int, int] | None:
    """The file's (mtime_ns, size, inode) when old enough to stand for its content, else None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if time.time_ns() - st.st_mtime_ns < RACY_SECONDS * 1e9:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _provider_key(cfg: ProviderConfig | None) -> ProviderConfig | None:
    # where a Provider is written does not change what reconciling its models does
    return dataclasses.replace(cfg, source=None) if cfg is not None else None


def _model_key(m: DesiredModel, providers: Mapping[str, ProviderConfig]) -> tuple[Any, ...]:
    """What, when it changes, makes a model worth reconciling again (not comments or line numbers)."""
    return (m.fingerprint, m.provider, m.policy, _provider_key(providers.get(m.provider)))


def depends_on_local_files(type_name: str) -> bool:
    """Types whose spec reads files beside the manifest (PhotoGPT's input_images)."""
    try:
        return provider_type(type_name).reads_local_files
    except KeyError:
        return False


class ManifestTracker:
    """Each manifest file's current and last good version, and the manifest set assembled from them."""

    def __init__(
        self,
        paths: Sequence[str],
        redactor: Redactor,
        trust: TrustPolicy | None = None,
        parse: Parse = parse_file,
    ) -> None:
        self.paths = list(paths)
        self.redactor = redactor
        self.trust = trust
        self.parse = parse
        self.files: dict[str, FileState] = {}
        self.find_problems: list[Problem] = []
        self.problems: list[Problem] = []
        self.manifests = ManifestSet(models={}, providers={}, files=[])
        self.local_checks = LocalChecks()
        self._assembled = False
        self._suspect: set[str] = set()  # files an event named: hashed on the next load
        self._local_changed = False  # a cached local check was dropped: reassemble
        self._fallbacks: set[str] = set()  # files whose last good version is in use, without problems

    def files_changed(self, paths: Iterable[Path]) -> None:
        """What a file event named: those files are hashed on the next load, whatever their stat,
        and the local checks that read them are run again."""
        paths = list(paths)
        self._suspect.update(str(p) for p in paths)
        self._suspect.update(os.path.abspath(p) for p in paths)
        if self.local_checks.changed(paths):
            self._local_changed = True

    def revalidate(self) -> None:
        """Safety net for a missed event (each full resync): run again the local checks whose
        files stat differently, and hash every manifest file on the next load."""
        if self.local_checks.revalidate():
            self._local_changed = True
        for st in self.files.values():
            st.stat = None

    def _current(self, f: Path) -> FileState | None:
        """The known state of `f` when its stat shows it unchanged (and no event named it)."""
        key = str(f)
        st = self.files.get(key)
        if st is None or st.stat is None or key in self._suspect or os.path.abspath(f) in self._suspect:
            return None
        return st if _stat(f) == st.stat else None

    def load(self) -> ManifestChange | None:
        """Re-read changed files (by stat, then digest) and reassemble; what changed, or None when
        nothing did."""
        files, find_problems = find_manifest_files(self.paths)
        seen: dict[str, FileState] = {}
        changed = False
        for f in files:
            key = str(f)
            st = self._current(f)
            if st is None:
                stat = _stat(f)  # before reading: a write after it shows as a changed stat
                digest = _digest(f)
                st = self.files.get(key)
                if st is None or st.digest != digest:
                    good = st.good if st else None
                    st = FileState(digest, self.parse(f, self.trust, manifest_root(f, self.paths)), good)
                    changed = True
                st.stat = stat
            seen[key] = st
        self._suspect.clear()
        removed = sorted(set(self.files) - set(seen))
        local = self._local_changed
        self._local_changed = False
        if not changed and not removed and not local and find_problems == self.find_problems and self._assembled:
            return None
        self.files = seen
        self.find_problems = find_problems
        before = self.manifests
        manifests, problems = self._assemble()
        self._assembled = True
        self._report_problems(problems)
        self.redactor.watch_env(cfg.api_key_env for cfg in manifests.providers.values())
        if manifests.models == before.models and manifests.providers == before.providers:
            return None
        self.manifests = manifests
        gone = sorted(set(before.models) - set(manifests.models))
        if gone:
            log.info("no longer in the manifests (nothing is deleted at the provider): %s", ", ".join(gone))
        same_providers = manifests.providers == before.providers
        touched = [
            name
            for name, m in manifests.models.items()
            if name not in before.models
            # the same object: resolved again from an unchanged document with the same provider
            or (
                not (m is before.models[name] and same_providers)
                and _model_key(m, manifests.providers) != _model_key(before.models[name], before.providers)
            )
        ]
        return ManifestChange(before, gone, touched)

    def _assemble(self) -> tuple[ManifestSet, list[Problem]]:
        """Each file's newest version when it assembles cleanly with the rest, else its last good one."""
        chosen: dict[str, FileResult] = {}
        for path, st in self.files.items():
            if not st.latest.problems:
                chosen[path] = st.latest
            elif st.good is not None:
                chosen[path] = st.good
        reported: list[Problem] = list(self.find_problems)
        for st in self.files.values():
            reported.extend(st.latest.problems)
        while True:
            manifests, problems = assemble([chosen[p] for p in sorted(chosen)], self.local_checks)
            blamed = {p.file for p in problems}
            fresh = [p for p in chosen if chosen[p] is not self.files[p].good]
            culprits = [p for p in fresh if p in blamed]
            if not culprits and problems and fresh:
                # a new version elsewhere broke a good file (a duplicate name, a Provider removed)
                culprits = fresh
            reported.extend(problems)
            if not culprits:
                break
            for path in culprits:
                good = self.files[path].good
                if good is None:
                    del chosen[path]
                else:
                    chosen[path] = good
        for path, result in chosen.items():
            if result is self.files[path].latest:
                self.files[path].good = result
        # a version in use that still has problems (a PhotoGPT image gone for it too): its models
        # with problems are left out, so no "last good version stays in use" for that file
        self._fallbacks = {p for p, r in chosen.items() if r is not self.files[p].latest and p not in blamed}
        return manifests, list(dict.fromkeys(reported))

    def _report_problems(self, problems: list[Problem]) -> None:
        old = set(self.problems)
        for p in problems:
            if p not in old:
                note = "; its last good version stays in use" if p.file in self._fallbacks else ""
                log.error("manifest error: %s%s", p, note, extra={"file": p.file, "line": p.line, "col": p.col})
        fixed = {p.file for p in old} - {p.file for p in problems}
        for file in sorted(fixed):
            log.info("manifest file %s is valid again", file, extra={"file": file})
        self.problems = problems

    def local_files_changed(self, paths: set[Path]) -> list[str]:
        """Models that read a changed non-manifest file beside them (PhotoGPT images)."""
        others = [p for p in paths if p.suffix not in (".yaml", ".yml")]
        if not others:
            return []
        touched = []
        for m in self.manifests.models.values():
            if not depends_on_local_files(m.provider_type):
                continue
            root = m.manifest_dir.resolve()
            for p in others:
                try:
                    rel = p.resolve().relative_to(root)
                except ValueError:
                    continue
                # hidden entries (.git, .reconciler/ with the state and sandbox) are never inputs,
                # and reacting to our own state writes would loop
                if not any(part.startswith(".") for part in rel.parts):
                    touched.append(m.name)
                    break
        if touched:
            log.info("local files changed for %s", ", ".join(sorted(touched)))
        return touched


async def watch(paths: Sequence[str], stopping: asyncio.Event, on_change: Callable[[set[Path]], None]) -> None:
    """Call `on_change` with the changed paths after each burst of file events, until `stopping`."""
    from watchfiles import awatch

    roots: set[str] = set()
    for raw in paths:
        p = Path(raw)
        # a file is watched through its folder: an atomic save replaces the file's inode
        target = p if p.is_dir() else p.parent if p.parent.is_dir() else None
        if target is None:
            log.warning("%s does not exist: found only by the %.0fs rescan once it does", raw, RESCAN_SECONDS)
            continue
        roots.add(str(target))
    if not roots:
        await stopping.wait()
        return
    try:
        async for changes in awatch(
            *sorted(roots),
            watch_filter=None,  # the ConfigMap swap only touches hidden `..data` entries
            debounce=WATCH_DEBOUNCE_MS,
            step=WATCH_STEP_MS,
            ignore_permission_denied=True,
        ):
            on_change({Path(path) for _, path in changes})
    except Exception as exc:  # a watched folder removed, inotify limits: the rescan still runs
        log.warning(
            "watching %s stopped (%s); changes are found by the %.0fs rescan",
            ", ".join(sorted(roots)),
            exc,
            RESCAN_SECONDS,
        )
    await stopping.wait()
