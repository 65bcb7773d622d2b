"""The Markdown format (`plan --output markdown`) and the step summary of `plan` and `apply`.

For a pull-request comment: a hidden marker line first (the composite action finds its own sticky
comment by it), a table of model, provider, action, reasons and changes, the optional parts of the
plan view when present (blast radius, orphans), the full text plan folded in `<details>`. GitHub
refuses a comment over 65,536 characters, so the document is cut to fit, with a note.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from reconciler.report.base import PlanExtras
from reconciler.report.text import TextRenderer, outcome_line, render_plan
from reconciler.report.views import QUEUED_NOTE, by_name, change_text, queued

if TYPE_CHECKING:
    from reconciler.outcomes import TriggerOutcome
    from reconciler.plan import ModelPlan

#: The first line of every plan document: how the sticky PR comment is found again.
MARKER = "<!-- reconciler-plan -->"
#: GitHub's limit on a comment's body, in characters.
LIMIT = 65536


def _cell(text: str) -> str:
    """Text safe inside one table cell: no pipe ends it, no newline breaks the row."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


def _code(text: str) -> str:
    run = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * (run + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _row(p: ModelPlan) -> str:
    action = p.action.value + (f" ({QUEUED_NOTE})" if queued(p) else "")
    reasons = "<br>".join(_cell(f"{r.code}: {r.detail}" if r.detail else r.code) for r in p.reasons) or "in sync"
    changes = "<br>".join(_cell(_code(change_text(c.path, c.before, c.after))) for c in p.changes)
    return f"| {_cell(p.name)} | {_cell(p.model.provider)} | {action} | {reasons} | {changes} |"


def _details(text: str) -> list[str]:
    run = max((len(m) for m in re.findall(r"`{3,}", text)), default=2)
    fence = "`" * (run + 1)
    return ["<details><summary>Full plan</summary>", "", f"{fence}text", text, fence, "", "</details>"]


def _orphans(orphans: Sequence[Mapping[str, object]]) -> list[str]:
    lines = [
        "",
        "**Orphans**: recorded models that no manifest declares any more (nothing is deleted at the provider):",
    ]
    for o in orphans:
        last = o.get("last_training")
        hint = f": looks renamed to {_code(str(o['rename_to']))}" if o.get("rename_to") else ""
        command = f"; {_code(str(o['command']))}" if o.get("command") else ""
        lines.append(
            f"- {_code(str(o.get('name', '')))} ({o.get('provider', '')})"
            + (f", last training {last}" if last else "")
            + hint
            + command
        )
    return lines


def _blast(limit: Mapping[str, int]) -> list[str]:
    return [
        f"> **apply would refuse**: this plan would start {limit.get('would_start')} trainings, more than "
        f"`--max-trainings` {limit.get('limit')}; raise it (or `RECONCILER_MAX_TRAININGS`) if that is meant.",
        "",
    ]


def render_markdown(
    plans: Sequence[ModelPlan], extras: PlanExtras | None = None, *, title: str = "reconciler plan", limit: int = LIMIT
) -> str:
    """The plan as Markdown, at most `limit` characters (rows, then the folded plan, cut with a note)."""
    extras = extras or PlanExtras()
    ordered = by_name(plans)
    head = [MARKER, f"### {title}", ""]
    if extras.max_trainings:
        head += _blast(extras.max_trainings)
    text = render_plan(plans)
    head += [text.splitlines()[-1], ""]
    rows = [_row(p) for p in ordered]
    table = ["| model | provider | action | reasons | changes |", "|---|---|---|---|---|"] if rows else []
    tail = _orphans(extras.orphans) if extras.orphans else []
    details = ["", *_details(text)]
    doc = "\n".join([*head, *table, *rows, *tail, *details])
    if len(doc) <= limit:
        return doc
    note = "_The plan is longer than a comment may be: {n} of {total} models shown, the full plan is in the job log._"
    budget = limit - len("\n".join([*head, *table, *tail])) - len(note) - 40
    kept: list[str] = []
    for row in rows:
        budget -= len(row) + 1
        if budget < 0:
            break
        kept.append(row)
    return "\n".join([*head, *table, *kept, "", note.format(n=len(kept), total=len(rows)), *tail])[:limit]


def render_failed_markdown(problems: Sequence[str], *, title: str = "reconciler plan") -> str:
    """A plan that could not be made: the problems, for the comment and the step summary."""
    return "\n".join(
        [MARKER, f"### {title}", "", "**Plan failed** (exit 1):", "", *[f"- {_code(p)}" for p in problems]]
    )[:LIMIT]


def render_apply_markdown(
    plans: Sequence[ModelPlan], outcomes: Mapping[str, TriggerOutcome], extras: PlanExtras | None = None
) -> str:
    """`apply`'s step summary: its plan as a table, then what each trigger did."""
    lines = [f"- {_code(outcome_line(n, o))}" for n, o in sorted(outcomes.items())]
    body = render_markdown(plans, extras, title="reconciler apply", limit=LIMIT - 200 - sum(len(x) + 1 for x in lines))
    return "\n".join([body, "", "**Triggered**:" if lines else "Nothing was triggered.", *lines])[:LIMIT]


class MarkdownRenderer(TextRenderer):
    """`--output markdown` (plan only): a document for a PR comment; everything else as text."""

    def plan(self, plans: Sequence[ModelPlan]) -> str:
        return render_markdown(plans, self.extras)

    def plan_failed(self, problems: Sequence[str]) -> str | None:
        return render_failed_markdown(problems)
