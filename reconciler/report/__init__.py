"""Everything `reconciler` prints and every exit code it returns, in one place (as black's `Report`).

    views     format-neutral views of plans, observations, records, events (also the daemon's /status)
    exits     every exit code decision: validate 0/1, plan 0/2/1, apply 0/1, status, usage errors
    base      `Renderer` (one method per document) and `Console` (stdout, stderr)
    text      the text format, and the stderr lines every format shares (outcomes, progress)
    json      the JSON format (design.md's shapes)
    commands  one report per command: told what happened, it writes and decides the exit code
    failures  how a command that stops early is reported (`main()`): problems, usage errors
    markdown  `plan --output markdown` and the step summary (a PR comment's body)
    github    GitHub Actions annotations (`::error`, `::warning`) and the step summary file

A new output format is one `Renderer` subclass, named in `FORMATS` and in `renderer()` below.
This module and `failures` stay import-light: the CLI loads them for `--help`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reconciler.report.base import Renderer

#: The `--output` formats; `markdown` applies to `plan` only (`formats()`).
FORMATS = ("text", "json", "markdown")
PLAN_ONLY = ("markdown",)


def formats(command: str) -> tuple[str, ...]:
    """The `--output` choices of a command."""
    return FORMATS if command == "plan" else tuple(f for f in FORMATS if f not in PLAN_ONLY)


def renderer(output: str) -> Renderer:
    """The renderer of an `--output` format (loaded on first use: it pulls in the plan's types)."""
    if output == "json":
        from reconciler.report.json import JsonRenderer

        return JsonRenderer()
    if output == "markdown":
        from reconciler.report.markdown import MarkdownRenderer

        return MarkdownRenderer()
    if output == "text":
        from reconciler.report.text import TextRenderer

        return TextRenderer()
    raise ValueError(f"unknown output format {output!r}; one of {', '.join(FORMATS)}")
