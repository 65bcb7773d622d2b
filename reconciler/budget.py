"""Spend guards (design.md "Spend guards"): how many paid trainings a run, the daemons and a provider start.

- **Blast radius**: `apply --max-trainings N` starts none when its plan would start more than N
  (`refused_by_blast_radius`, the one place that decides it; `ApplyResult.refused` carries it).
- **Daemon rate**: `daemon --max-trainings-per-hour N` holds (reason `budget`) beyond N trainings
  started by the daemons on this state in the rolling hour.
- **Provider budget**: a Provider's `max_trainings_per_day` holds beyond that many trainings started
  at that provider instance in the last 24 h by every writer (CI applies and daemons alike).

Every intent records a **start** in the state (`StateStore.save_intent`), in the transaction that
writes the intent; a train call that provably started nothing releases it. `plan` stays pure:
`plan.limit_budget` is given the starts this module reads. Because two writers may plan from the
same count, the provider budget is enforced once more where it matters: `write_intent` counts and
inserts atomically in the state, and a writer refused there re-plans that model to `hold budget`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Protocol

from reconciler import cas
from reconciler.domain import HistoryEvent, ModelRecord, ProviderConfig
from reconciler.plan import Budget, ModelPlan, limit_budget
from reconciler.state.base import StateStore

if TYPE_CHECKING:
    from reconciler.spec import ManifestSet

#: `apply --max-trainings` and `RECONCILER_MAX_TRAININGS` when not given.
DEFAULT_MAX_TRAININGS = 20
DAY = timedelta(hours=24)
HOUR = timedelta(hours=1)


@dataclass(frozen=True)
class BlastRadius:
    """A plan that would start more trainings than `apply --max-trainings` allows."""

    would_start: int
    limit: int

    def as_json(self) -> dict[str, int]:
        """Plan JSON's top-level `max_trainings`."""
        return {"would_start": self.would_start, "limit": self.limit}


def counted_starts(plans: Sequence[ModelPlan], also: Callable[[ModelPlan], bool] | None = None) -> list[ModelPlan]:
    """The plans an apply would start: train and retry actions, and those `also` says it starts
    too (`apply --wait` starts its `concurrency-limit` holds as slots free)."""
    return [p for p in plans if p.triggers or (also is not None and also(p))]


def refused_by_blast_radius(
    plans: Sequence[ModelPlan], limit: int | None, also: Callable[[ModelPlan], bool] | None = None
) -> BlastRadius | None:
    """The blast-radius decision: when these plans would start more than `limit` trainings (see
    `counted_starts`), apply starts none of them and reports this; None (apply goes ahead)
    otherwise or without a limit."""
    if limit is None:
        return None
    count = len(counted_starts(plans, also))
    return BlastRadius(count, limit) if count > limit else None


@dataclass(frozen=True)
class Limits:
    """Who this engine writes as, and the daemon's rate (None: no rate, as for `apply`)."""

    #: recorded with each start: "apply" or "daemon" (the daemons' rate counts their own)
    writer: str = "apply"
    #: `daemon --max-trainings-per-hour`
    per_hour: int | None = None


class Budgeted(cas.Planner, Protocol):
    """What the budget needs of the engine."""

    limits: Limits
    manifests: ManifestSet


def _provider_hint(cfg: ProviderConfig) -> str:
    where = f"Provider {cfg.name!r}" + (f" ({cfg.source})" if cfg.source else "")
    return f"raise max_trainings_per_day of {where} to allow more"


async def hold_over_budget(engine: Budgeted, plans: Sequence[ModelPlan]) -> None:
    """Turn trainings beyond a spend guard into `hold budget` (in place), from the starts in the state."""
    triggering = [p for p in plans if p.triggers]
    daily = {
        name: cfg
        for name, cfg in engine.manifests.providers.items()
        if cfg.max_trainings_per_day is not None and any(p.model.provider == name for p in triggering)
    }
    per_hour = engine.limits.per_hour
    if not daily and per_hour is None:
        return
    now = engine.clock()
    starts = await engine.state.starts_since(now - DAY)
    if per_hour is not None:
        ours = [s.at for s in starts if s.writer == engine.limits.writer]
        scope = f"by the {engine.limits.writer}s on this state in the last hour"
        hint = f"raise it with `reconciler {engine.limits.writer} --max-trainings-per-hour N` to allow more"
        rate = {"": Budget(per_hour, HOUR, ours, scope, hint)}
        limit_budget(plans, rate, lambda p: "", now)
    if daily:
        budgets = {
            name: Budget(
                cfg.max_trainings_per_day or 0,
                DAY,
                [s.at for s in starts if s.provider == name],
                f"at {name} in the last 24 h",
                _provider_hint(cfg),
            )
            for name, cfg in daily.items()
        }
        limit_budget(plans, budgets, lambda p: p.model.provider, now)


async def write_intent(engine: Budgeted, p: ModelPlan, intent: ModelRecord, event: HistoryEvent) -> bool:
    """Write `p`'s intent by compare-and-set, recording its start; under a provider budget only
    while it has room, counted atomically across writers. False: nothing written (another writer
    changed the record, or the budget is spent); the caller re-plans."""
    cfg = engine.manifests.providers.get(p.model.provider)
    limit = cfg.max_trainings_per_day if cfg is not None else None
    expected = p.record.version if p.record else None
    return await engine.state.save_intent(intent, expected, event, writer=engine.limits.writer, daily_limit=limit)


def over_budget(p: ModelPlan) -> bool:
    """A plan a spend guard holds."""
    return any(r.code == "budget" for r in p.reasons)


async def release(state: StateStore, intent: ModelRecord) -> None:
    """The intent's train call provably started nothing: its start spends no budget."""
    if intent.triggered_at is not None:
        await state.release_start(intent.name, intent.triggered_at)


__all__ = [
    "DEFAULT_MAX_TRAININGS",
    "BlastRadius",
    "Limits",
    "counted_starts",
    "hold_over_budget",
    "refused_by_blast_radius",
    "write_intent",
]
