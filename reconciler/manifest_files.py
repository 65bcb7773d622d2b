"""Where manifests are: the files under the paths given, and the repository root that bounds
what their models may read."""

from __future__ import annotations

from collections.abc import Iterable
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
