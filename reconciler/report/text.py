"""The text format (`--output text`, the default), and the stderr lines every format shares.

Lines said along the way (apply outcomes, `--wait` progress, problems, warnings) go to stderr as
text whatever `--output` is, so that stdout holds one document a script can read.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from reconciler.errors import ProviderError
from reconciler.report.base import ApplyRun, Renderer
from reconciler.report.views import QUEUED_NOTE, action_order, by_name, change_text, event_reason, queued, summarize

if TYPE_CHECKING:
    from reconciler.budget import BlastRadius
    from reconciler.domain import HistoryEvent, ModelRecord, Observation
    from reconciler.outcomes import TriggerOutcome
    from reconciler.plan import ModelPlan


def _reasons_text(p: ModelPlan) -> str:
    """Every reason with its detail, `code: detail; code: detail` (a code said once)."""
    parts: dict[str, str] = {}
    for r in p.reasons:
        # spec-changed's detail repeats the changes, shown after the reasons as `epochs: 100 -> 150`
        detail = "" if p.changes and r.code == "spec-changed" else r.detail
        if not parts.get(r.code):
            parts[r.code] = f"{r.code}: {detail}" if detail else r.code
    return "; ".join(parts.values()) or "in sync"


def _plan_line(p: ModelPlan, width: int) -> str:
    extra = ""
    if p.changes:
        extra = "  " + "; ".join(change_text(c.path, c.before, c.after) for c in p.changes)
    if queued(p):
        extra += f" ({QUEUED_NOTE})"
    return f"  {p.name:<{width}}  {p.model.provider:<10} {_reasons_text(p)}{extra}"


def render_plan(plans: Sequence[ModelPlan]) -> str:
    """One line per model, grouped by action; changed fields as `epochs: 100 -> 150`."""
    lines = []
    order = action_order()
    for action in order:
        group = [p for p in plans if p.action is action]
        if not group:
            continue
        lines.append(f"{action.value} ({len(group)}):")
        width = max(len(p.name) for p in group)
        lines.extend(_plan_line(p, width) for p in by_name(group))
    summary = summarize(plans)
    total = ", ".join(f"{summary[a.value]} {a.value}" for a in order if a.value in summary)
    lines.append(f"Plan: {total or 'no models'}.")
    return "\n".join(lines)


def _next_text(e: dict[str, Any]) -> str:
    """The NEXT column: the action and why (an error's message is in OBSERVED already)."""
    from reconciler.plan import Action  # not at the top: `validate` renders text and never plans

    reasons: dict[str, str] = {}
    for r in e["reasons"]:
        detail = "" if e["action"] == Action.ERROR.value else r["detail"]
        if not reasons.get(r["code"]):
            reasons[r["code"]] = f"{r['code']}: {detail}" if detail else r["code"]
    return f"{e['action']}  {'; '.join(reasons.values())}" if reasons else e["action"]


def render_status(entries: Sequence[dict[str, Any]]) -> str:
    """The status table: NAME, PROVIDER, OBSERVED, LAST TRAINING, NEXT (action and reasons).

    Every column is as wide as its longest cell, so nothing is cut (an error is shown whole)."""
    rows = [("NAME", "PROVIDER", "OBSERVED", "LAST TRAINING", "NEXT")]
    for e in entries:
        obs = e["observed"]
        seen = obs.get("error") or obs.get("state") or obs.get("status", "")
        if "progress" in obs:
            seen += f" {obs['progress']:.0%}"
        last = e["last_training"]
        lt = "-" if not last else f"{last['status']} {(last['finished_at'] or last['triggered_at'] or '')[:16]}"
        rows.append((e["name"], e["provider"], seen, lt, _next_text(e)))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r[:4], widths, strict=True)) + "  " + r[4] for r in rows
    )


def render_orphans(orphans: Sequence[Mapping[str, Any]]) -> list[str]:
    """The section after the plan or status table: records no manifest declares, and what to run."""
    if not orphans:
        return []
    lines = ["", f"Orphans ({len(orphans)}): recorded, in no manifest any more (nothing is deleted at the provider):"]
    width = max(len(str(o["name"])) for o in orphans)
    for o in orphans:
        last = f"{o['status']} {(o['last_training'] or '')[:16]}".rstrip()
        if o.get("rename_to"):
            what = f"looks renamed to {o['rename_to']}: run `{o['command']}`"
        else:
            what = f"`{o['command']}` drops its record"
        lines.append(f"  {o['name']:<{width}}  {o['provider']:<10} {last}  {what}")
    return lines


def history_line(e: HistoryEvent) -> str:
    """`2024-05-01 12:00:00  triggered    spec-changed         3f2a...  message`."""
    at = e.at.strftime("%Y-%m-%d %H:%M:%S") if e.at else "?"
    msg = e.detail.get("message") or e.detail.get("detail") or ""
    commit = f" @{e.git_commit[:8]}" if e.git_commit else ""
    return f"{at}  {e.event:<12} {event_reason(e):<20} {e.fingerprint[7:19]}{commit}  {msg}".rstrip()


class TextRenderer(Renderer):
    """For people at a terminal."""

    def validate(self, models: Collection[str], providers: Collection[str]) -> str:
        return f"{len(models)} models, {len(providers)} providers: valid"

    def plan(self, plans: Sequence[ModelPlan]) -> str:
        above = [blast_radius_line(self.extras.max_trainings)] if self.extras.max_trainings else []
        return "\n".join([*above, render_plan(plans), *render_orphans(self.extras.orphans)])

    def plan_failed(self, problems: Sequence[str]) -> str | None:
        return None  # main() says it on stderr, as for every other command

    def apply_planned(self, plans: Sequence[ModelPlan]) -> str | None:
        return render_plan(plans)

    def applied(self, run: ApplyRun) -> str | None:
        return None  # the outcomes were said on stderr as they came

    def status(self, entries: Sequence[dict[str, Any]]) -> str:
        return "\n".join([render_status(entries), *render_orphans(self.extras.orphans)])

    def history(self, name: str, events: Sequence[HistoryEvent]) -> str | None:
        return "\n".join(history_line(e) for e in events) if events else None


# ---------------------------------------------------------------- stderr lines, in every format


def outcome_line(name: str, o: TriggerOutcome) -> str:
    """What one train/retry trigger did."""
    verdict = (
        "training started"
        if o.started
        else "held by the provider"
        if o.held
        else "left to another writer"
        if o.superseded
        else "held: budget"
        if o.over_budget
        else "not started"
    )
    return f"{name}: {verdict}" + (f" ({o.detail})" if o.detail and not o.started else "")


def _trainings(n: int) -> str:
    return f"{n} training" + ("" if n == 1 else "s")


def _raise_hint(would_start: int) -> str:
    return f"if that is meant, raise it: --max-trainings {would_start} or RECONCILER_MAX_TRAININGS={would_start}"


def blast_radius_line(limit: Mapping[str, int]) -> str:
    """Above plan's table when `apply` would refuse it (`--max-trainings`)."""
    n = limit["would_start"]
    return (
        f"apply would refuse: this plan would start {_trainings(n)}, more than --max-trainings "
        f"{limit['limit']}; {_raise_hint(n)}"
    )


def refused_line(refusal: BlastRadius) -> str:
    """`apply` refused a plan that would start more than `--max-trainings` trainings."""
    n = refusal.would_start
    return (
        f"apply refused: this plan would start {_trainings(n)}, more than --max-trainings {refusal.limit} "
        f"(the blast radius of one commit); nothing was started; {_raise_hint(n)}"
    )


def adopted_line(name: str) -> str:
    """`apply` adopted a model (policy.on_unknown_baseline: adopt)."""
    return f"{name}: adopted the provider's model as matching the spec"


def adopted_by_hand_line(name: str) -> str:
    """`reconciler adopt NAME` succeeded (stdout)."""
    return f"{name}: adopted; the provider's model is now recorded as matching the spec"


def not_succeeded_line(name: str, record: ModelRecord | None) -> str:
    """A training `apply --wait` followed that did not succeed, or is still running at --timeout."""
    if record is not None and record.status.value in ("training", "intent"):
        # not a failure: the wait ended first; nothing is started twice by waiting again
        return (
            f"{name}: still training when --timeout ran out; follow it with `reconciler status` "
            "or `reconciler apply --wait` again"
        )
    return f"{name}: training did not succeed ({record.status.value if record else 'unknown'})"


def progress_line(obs: Observation | ProviderError, record: ModelRecord | None) -> str:
    """Where one followed training is: an error, its end, or the provider's state and progress."""
    if isinstance(obs, ProviderError):
        return f"error: {obs}"
    if record is not None and record.status.value in ("succeeded", "failed"):
        return record.status.value + (f": {obs.message}" if record.status.value == "failed" and obs.message else "")
    line = obs.provider_state or obs.status.value
    if obs.progress is not None:
        line += f" {obs.progress:.0%}"
    return line


def fresh_state_warning(url: str) -> str:
    """A state created by this run, on CI: an ephemeral runner forgets every training."""
    return (
        f"warning: the state {url} was just created: on an ephemeral CI runner a local SQLite file "
        "forgets every training; use a shared state (--state postgresql://... or RECONCILER_STATE)"
    )


def renamed_line(old: str, new: str, moved_events: int) -> str:
    """`reconciler rename OLD NEW` succeeded (stdout)."""
    return (
        f"{old}: renamed to {new}; its record and {moved_events} history events moved (nothing changed at the provider)"
    )


def forgotten_line(name: str) -> str:
    """`reconciler forget NAME` succeeded (stdout)."""
    return f"{name}: record dropped; its history stays (nothing deleted at the provider)"


def retried_line(name: str, attempts: int) -> str:
    """`reconciler retry NAME` succeeded (stdout)."""
    return f"{name}: retries re-armed ({attempts} failed attempts reset to 0); the next plan shows retry"


def no_history_line(name: str) -> str:
    """`history NAME` in text for a model with no event."""
    return f"no history for {name!r} in this state"
