"""How a command that stops early is reported: the message on stderr and exit code 1 (or 130).

Import-light on purpose: `main()` uses it on every run, `--help` and `--version` included.
"""

from __future__ import annotations

import click

from reconciler.errors import ManifestError, ReconcilerError
from reconciler.report import exits
from reconciler.report.base import Console


class Failure(Exception):
    """Stop the command with this message on stderr and exit code 1."""


#: What `main()` hands to `report_failure`; anything else is a bug and keeps its traceback.
STOPS: tuple[type[BaseException], ...] = (
    click.exceptions.Exit,
    click.exceptions.Abort,
    click.ClickException,
    ReconcilerError,
    Failure,
    KeyboardInterrupt,
)


def problem_lines(exc: ReconcilerError) -> list[str]:
    """An error as lines: each manifest problem as `file:line:col: message`, else its message."""
    return [str(p) for p in exc.problems] if isinstance(exc, ManifestError) else [str(exc)]


def problems_found(count: int) -> str:
    """The line after the problems of bad manifests."""
    return f"{count} problem{'s' if count != 1 else ''} found"


def report_failure(exc: BaseException, console: Console | None = None) -> int:
    """Say why the command stopped (on stderr) and return its exit code."""
    console = console or Console()
    if isinstance(exc, click.exceptions.Exit):
        return exc.exit_code  # --help, --version: click has printed what it had to
    if isinstance(exc, click.exceptions.Abort):
        console.err("aborted")
        return exits.FAILED
    if isinstance(exc, click.ClickException):
        exc.show()  # usage errors: 1, never 2 (2 means "plan would train")
        return exits.FAILED
    if isinstance(exc, ManifestError):
        for line in problem_lines(exc):
            console.err(line)
        console.err(problems_found(len(exc.problems)))
        return exits.FAILED
    if isinstance(exc, ReconcilerError | Failure):
        console.err(f"error: {exc}")
        return exits.FAILED
    if isinstance(exc, KeyboardInterrupt):
        return exits.INTERRUPTED
    raise exc
