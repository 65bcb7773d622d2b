"""Format-neutral views: what each document says, as JSON-able values, before any format.

Every renderer starts from these, and so does the daemon's `/status`, so `status --output json`
and `/status` cannot drift apart. Key order matters: `--output json` keeps it (design.md shapes).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from reconciler.errors import ProviderError

if TYPE_CHECKING:
    from reconciler.domain import HistoryEvent, ModelRecord, Observation
    from reconciler.outcomes import TriggerOutcome
    from reconciler.plan import Action, ModelPlan

# `reconciler.plan` is imported inside the functions that need it at run time: `validate` reports
# through this module (the text renderer) and never plans (start-up time, tests/test_cli_startup.py).


def action_order() -> tuple[Action, ...]:
    """Order of the action groups in text output and of the summary line."""
    from reconciler.plan import Action

    return (Action.ERROR, Action.TRAIN, Action.RETRY, Action.WAIT, Action.HOLD, Action.NONE)


def by_name(plans: Iterable[ModelPlan]) -> list[ModelPlan]:
    """Plans in the order every document lists models."""
    return sorted(plans, key=lambda p: p.name)


#: What text, JSON and Markdown say of a `wait` with a `spec-changed` reason.
QUEUED_NOTE = "trains once the current training ends"


def queued(p: ModelPlan) -> bool:
    """A model that waits for its training with a spec change queued: it trains once that ends."""
    from reconciler.plan import Action

    return p.action is Action.WAIT and any(r.code == "spec-changed" for r in p.reasons)


def warned(p: ModelPlan) -> bool:
    """A model that drifted under `policy.drift: warn`: reported, never trained."""
    from reconciler.plan import Action

    return p.action is Action.HOLD and any(r.code == "warn-only" for r in p.reasons)


def change_text(path: str, before: Any, after: Any) -> str:
    """One changed field as `epochs: 100 -> 150` (the `training.` prefix left out)."""
    return f"{path.removeprefix('training.')}: {value_text(before)} -> {value_text(after)}"


def value_text(v: Any) -> str:
    """A field's value as plans show it: strings as they are, anything else as JSON."""
    if isinstance(v, str):
        return v
    return json.dumps(v, sort_keys=True, default=str)


def plan_entry(p: ModelPlan) -> dict[str, Any]:
    """One model of the plan JSON: name, provider, action, reasons, changes."""
    return {
        "name": p.model.name,
        "provider": p.model.provider,
        "action": p.action.value,
        "reasons": [{"code": r.code, "detail": r.detail} for r in p.reasons],
        "changes": [{"path": c.path, "before": c.before, "after": c.after} for c in p.changes],
    }


def summarize(plans: Iterable[ModelPlan]) -> dict[str, int]:
    """How many models take each action, keyed by the action's name (first seen first)."""
    out: dict[str, int] = {}
    for p in plans:
        out[p.action.value] = out.get(p.action.value, 0) + 1
    return out


def observation_summary(obs: Observation | ProviderError | None) -> dict[str, Any]:
    """What the provider shows of one model, for `status`."""
    if obs is None:
        return {}
    if isinstance(obs, ProviderError):
        return {"error": str(obs)}
    out: dict[str, Any] = {"status": obs.status.value, "state": obs.provider_state}
    if obs.progress is not None:
        out["progress"] = round(obs.progress, 3)
    if obs.trained_at:
        out["trained_at"] = obs.trained_at.isoformat()
    if obs.message:
        out["message"] = obs.message
    return out


def record_summary(rec: ModelRecord | None) -> dict[str, Any] | None:
    """The recorded last training of one model, for `status`."""
    if rec is None:
        return None
    return {
        "status": rec.status.value,
        "fingerprint": rec.fingerprint,
        "triggered_at": rec.triggered_at.isoformat() if rec.triggered_at else None,
        "finished_at": rec.finished_at.isoformat() if rec.finished_at else None,
        "attempts": rec.attempts,
        "next_attempt_at": rec.next_attempt_at.isoformat() if rec.next_attempt_at else None,
        "handle": rec.handle,
    }


def status_entry(p: ModelPlan) -> dict[str, Any]:
    """One model of `status --output json` and of the daemon's `/status`."""
    entry = plan_entry(p)
    obs: Observation | ProviderError | None = p.error or p.observation
    entry["observed"] = observation_summary(obs)
    entry["last_training"] = record_summary(p.record)
    return entry


def event_reason(e: HistoryEvent) -> str:
    """An event's reason code. Before reason codes, a refused or unconfirmed train call recorded
    the error's class name (`TemporaryProviderError`): shown as its code, never as a class name."""
    from reconciler import errors
    from reconciler.plan import error_code

    cls = getattr(errors, e.reason, None) if e.reason.endswith("Error") else None
    if isinstance(cls, type) and issubclass(cls, ProviderError):
        return error_code(cls(""))
    return e.reason


def history_entry(e: HistoryEvent) -> dict[str, Any]:
    """One event of `history --output json`."""
    return {
        "at": e.at.isoformat() if e.at else None,
        "event": e.event,
        "reason": event_reason(e),
        "fingerprint": e.fingerprint,
        "git_commit": e.git_commit,
        "detail": e.detail,
    }


def outcome_entry(o: TriggerOutcome) -> dict[str, Any]:
    """What happened to one triggered model, for `apply --output json`."""
    return {
        "started": o.started,
        "detail": o.detail,
        "ambiguous": o.ambiguous,
        # held: nothing started, not an error (the provider's 429, or a budget spent meanwhile)
        "held": o.held or o.over_budget,
    }
