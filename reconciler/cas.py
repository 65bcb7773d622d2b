"""What a writer does when another writer got there first (many writers share one state).

Every record write of the engine is a compare-and-set on the version its plan was made from
(`StateStore.save_if` / `delete_if`). Losing one is normal, not an error: an apply on a CI runner
and a daemon saw the same drift. The loser never trains on the overtaken plan; it reads the record
again, observes again and re-plans (`replan`), or, after its own train call, records only what
the call did (`write_after_call`). Both log the lost race at debug level (-vv).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Protocol

from reconciler.domain import DesiredModel, HistoryEvent, ModelRecord, Observation
from reconciler.errors import ProviderError
from reconciler.plan import ModelPlan
from reconciler.state.base import StateStore

log = logging.getLogger("reconciler.engine")

LEFT_TO_OTHER = "another writer changed the record first; nothing sent"
LEFT_FOR_NEXT_PASS = LEFT_TO_OTHER + "; planned again, the next pass acts on it"
NOT_LEADER = "this daemon is not the leader any more (its lease was lost); nothing sent"
#: how often a re-plan reads again when the record keeps changing under it
REPLAN_ATTEMPTS = 3


class Planner(Protocol):
    """What `replan` needs of the engine."""

    state: StateStore
    git_commit: str | None

    def clock(self) -> datetime: ...

    async def observe(
        self, models: Sequence[DesiredModel], records: Mapping[str, ModelRecord]
    ) -> dict[str, Observation | ProviderError]: ...

    def plan_one(
        self, m: DesiredModel, record: ModelRecord | None, observed: Observation | ProviderError, now: datetime
    ) -> ModelPlan: ...


async def replan(engine: Planner, p: ModelPlan, why: str) -> None:
    """Read `p`'s record again, observe again (in that order: no decision rests on a record older
    than its observation) and decide again, in place, so everyone holding `p` sees the new plan.
    What the new observation settles is stored by compare-and-set too."""
    new = p
    for _ in range(REPLAN_ATTEMPTS):
        record = await engine.state.get(p.name)
        observed = (await engine.observe([p.model], {p.name: record} if record else {}))[p.name]
        new = engine.plan_one(p.model, record, observed, engine.clock())
        if new.record_changed and new.record is not None:
            for ev in new.events:
                ev.git_commit = engine.git_commit
            if not await engine.state.save_if(new.record, record.version if record else None, *new.events):
                continue  # overtaken again while observing: read once more
            new.record_changed = False
        break
    for f in dataclasses.fields(ModelPlan):
        setattr(p, f.name, getattr(new, f.name))
    reasons = ", ".join(r.code for r in p.reasons) or "in sync"
    log.debug(
        "%s: another writer changed its record first (%s); planned again: %s (%s)", p.name, why, p.action, reasons
    )


async def write_after_call(
    state: StateStore, name: str, expected: int, record: ModelRecord | None, ev: HistoryEvent
) -> ModelRecord | None:
    """Write what became of our intent (None: remove the record) by compare-and-set on the intent's
    version. When another writer changed the record since, the newer record is left alone and only
    the event is appended (what our call did stays in the history). The record now stored."""
    if record is not None:
        written = await state.save_if(record, expected, ev)
    else:
        written = await state.delete_if(name, expected, ev)
    if written:
        return record
    log.debug("%s: another writer changed its record after our intent; only the %r event is stored", name, ev.event)
    await state.append(ev)
    return await state.get(name)
