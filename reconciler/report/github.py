"""GitHub Actions: workflow-command annotations and the step summary file.

Annotations go to stderr (the runner reads workflow commands there too), so that stdout keeps one
document a script can read (`plan --output json > plan.json`). Escaping follows the runner's
workflow-command rules: `%`, CR and LF in the message; also `:` and `,` in properties.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reconciler.errors import Problem
    from reconciler.plan import ModelPlan

#: At most this many annotations of one kind; then one notice with the rest's count.
MAX_PER_KIND = 10


@dataclass(frozen=True)
class GitHub:
    """What the operator's environment says of GitHub Actions (read by `runtime.github`)."""

    annotations: bool = False
    #: GITHUB_WORKSPACE: annotation paths are relative to it
    workspace: Path | None = None
    #: GITHUB_STEP_SUMMARY: plan and apply append their Markdown summary to it
    step_summary: Path | None = None


@dataclass(frozen=True)
class Annotation:
    """One `::error` or `::warning`, at a file position when known (line 0: none)."""

    kind: str
    message: str
    file: str | None = None
    line: int = 0
    col: int = 0


def escape_data(text: str) -> str:
    """A workflow command's message."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """A workflow command's property value (`file=...`)."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _relative(file: str, workspace: Path | None) -> str:
    if workspace is None:
        return file
    try:
        return os.path.relpath(Path(file).resolve(), workspace.resolve())
    except ValueError:  # another drive (Windows)
        return file


def command(a: Annotation, workspace: Path | None = None) -> str:
    """`::error file=PATH,line=L,col=C::MESSAGE`."""
    props = []
    if a.file:
        props.append(f"file={escape_property(_relative(a.file, workspace))}")
        if a.line > 0:
            props.append(f"line={a.line}")
            if a.col > 0:
                props.append(f"col={a.col}")
    return (
        f"::{a.kind} {','.join(props)}::{escape_data(a.message)}" if props else f"::{a.kind}::{escape_data(a.message)}"
    )


def annotation_lines(annotations: Iterable[Annotation], workspace: Path | None = None) -> list[str]:
    """The commands, at most MAX_PER_KIND of each kind, then a notice per kind with the rest's count."""
    lines: list[str] = []
    left: dict[str, int] = {}
    shown: dict[str, int] = {}
    for a in annotations:
        if shown.get(a.kind, 0) < MAX_PER_KIND:
            shown[a.kind] = shown.get(a.kind, 0) + 1
            lines.append(command(a, workspace))
        else:
            left[a.kind] = left.get(a.kind, 0) + 1
    for kind, n in left.items():
        lines.append(f"::notice::{n} more {kind}{'s' if n != 1 else ''} not shown as annotations: see the log")
    return lines


def problem_annotations(problems: Sequence[Problem]) -> list[Annotation]:
    """`validate` problems (and plan/apply's manifest problems), each at its file:line:col."""
    return [Annotation("error", p.message, p.file, p.line, p.col) for p in problems]


def plan_annotations(plans: Sequence[ModelPlan]) -> list[Annotation]:
    """Errors (models that could not be observed) and warn-mode drift, at each model's manifest."""
    from reconciler.plan import Action
    from reconciler.report.views import by_name, warned

    out = []
    for p in by_name(plans):
        src = p.model.source
        if p.action is Action.ERROR:
            why = "; ".join(r.detail or r.code for r in p.reasons) or (str(p.error) if p.error else "error")
            out.append(Annotation("error", f"{p.name}: {why}", src.file, src.line, src.col))
        elif warned(p):
            why = "; ".join(r.detail or r.code for r in p.reasons if r.code != "warn-only")
            out.append(
                Annotation("warning", f"{p.name} drifted (policy.drift: warn): {why}", src.file, src.line, src.col)
            )
    return out


def append_summary(path: Path, markdown: str) -> None:
    """Append to $GITHUB_STEP_SUMMARY (one step's summaries are shown one after another)."""
    with path.open("a", encoding="utf-8") as f:
        f.write(markdown.rstrip("\n") + "\n\n")
