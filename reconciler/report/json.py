"""The JSON format (`--output json`): one object on stdout, in design.md's shapes.

Every document carries `format_version`; keys keep the order written here.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

from reconciler.report.base import ApplyRun, PlanExtras, Renderer
from reconciler.report.views import by_name, history_entry, outcome_entry, plan_entry, summarize

if TYPE_CHECKING:
    from reconciler.domain import HistoryEvent
    from reconciler.plan import ModelPlan

FORMAT_VERSION = 1


def dumps(obj: Any) -> str:
    """The JSON text of a document, as every command prints it."""
    return json.dumps(obj, indent=2, sort_keys=False, default=str)


def plan_document(
    plans: Sequence[ModelPlan], extras: PlanExtras | None = None, *, orphans: bool = False
) -> dict[str, Any]:
    """`{"format_version", "models": [...], "summary": {action: count}}`, with `orphans` (`plan`:
    the records no manifest declares; `apply` does not list them) and `max_trainings`
    (`{"would_start", "limit"}`) only when apply would refuse the plan."""
    doc: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "models": [plan_entry(p) for p in by_name(plans)],
        "summary": summarize(plans),
    }
    if orphans:
        doc["orphans"] = [dict(o) for o in (extras.orphans if extras is not None else ())]
    if extras is not None and extras.max_trainings:
        doc["max_trainings"] = dict(extras.max_trainings)
    return doc


def apply_document(run: ApplyRun, extras: PlanExtras | None = None) -> dict[str, Any]:
    """The plan document plus `outcomes` per triggered model and, with --wait, `final` statuses."""
    doc = plan_document(run.plans, extras)
    doc["outcomes"] = {n: outcome_entry(o) for n, o in sorted(run.outcomes.items())}
    if run.final is not None:
        doc["final"] = {n: (r.status.value if r else None) for n, r in sorted(run.final.items())}
    return doc


class JsonRenderer(Renderer):
    """For scripts and CI: exactly one JSON object on stdout."""

    def validate(self, models: Collection[str], providers: Collection[str]) -> str:
        return dumps({"valid": True, "models": sorted(models), "providers": sorted(providers)})

    def plan(self, plans: Sequence[ModelPlan]) -> str:
        return dumps(plan_document(plans, self.extras, orphans=True))

    def plan_failed(self, problems: Sequence[str]) -> str | None:
        # plan --output json prints its JSON whatever the exit code
        doc = {"format_version": FORMAT_VERSION, "models": [], "summary": {}, "orphans": [], "errors": list(problems)}
        return dumps(doc)

    def apply_planned(self, plans: Sequence[ModelPlan]) -> str | None:
        return None  # the plan is part of the one document printed at the end

    def applied(self, run: ApplyRun) -> str | None:
        return dumps(apply_document(run, self.extras))

    def status(self, entries: Sequence[dict[str, Any]]) -> str:
        # "role": who wrote this view (design.md "Many writers"): the daemon says leader/standby
        orphans = [dict(o) for o in self.extras.orphans]
        return dumps({"format_version": FORMAT_VERSION, "role": "cli", "models": list(entries), "orphans": orphans})

    def status_failed(self, problems: Sequence[str]) -> str | None:
        # as plan: status --output json prints its JSON whatever the exit code
        return dumps({"format_version": FORMAT_VERSION, "models": [], "errors": list(problems)})

    def history(self, name: str, events: Sequence[HistoryEvent]) -> str | None:
        return dumps({"format_version": FORMAT_VERSION, "model": name, "events": [history_entry(e) for e in events]})
