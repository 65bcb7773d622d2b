"""Where manifests are: the files under the paths given, the repository root that bounds what
they may read, and the git commit they were read at (recorded in history)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from reconciler.errors import Problem


def find_manifest_files(paths: Iterable[str | Path]) -> tuple[list[Path], list[Problem]]:
    files: list[Path] = []
    problems: list[Problem] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(
                f
                for f in p.rglob("*")
                if f.suffix in (".yaml", ".yml")
                and f.is_file()
                and not any(part.startswith(".") for part in f.relative_to(p).parts)
            )
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            problems.append(Problem(str(p), 0, 0, "no such file or directory"))
    seen: set[Path] = set()
    unique = []
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique, problems


def repository_root(folder: Path, fallback: Path | None = None) -> Path:
    """The git top-level holding `folder` (a `.git` folder or file), else `fallback` (else `folder`)."""
    start = folder.resolve()
    for cand in (start, *start.parents):
        if (cand / ".git").exists():
            return cand
    return (fallback if fallback is not None else folder).resolve()


def manifest_root(file: Path, paths: Iterable[str | Path]) -> Path:
    """The repository root of a manifest file: its git top-level, else the path on the command
    line that holds it (a folder, or a file's own folder)."""
    real = file.resolve()
    given = real.parent
    for raw in paths:
        p = Path(raw).resolve()
        folder = p if p.is_dir() else p.parent
        if real.is_relative_to(folder):
            given = folder
            break
    return repository_root(real.parent, given)


def git_commit(paths: Sequence[str]) -> str | None:
    """The HEAD commit of the git repo holding the manifests, if any (recorded in history)."""
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
    return os.environ.get("GITHUB_SHA") or os.environ.get("CI_COMMIT_SHA")
