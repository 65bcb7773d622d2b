"""`apply --wait`: follow the started trainings, and start each held one as a slot frees.

A provider's `max_concurrent_trainings` turns the trainings beyond it into `concurrency-limit`
holds. Without `--wait` they stay held for the next run; with it, `wait_for_all` keeps looking at
every model still in play (followed, queued, and trainings it does not own that fill a slot),
and each round plans them again: a queued model whose new plan is `train`/`retry` is started
through `Engine.apply`, so its intent is a compare-and-set on the record version that plan read
(a concurrent writer is respected: the loser re-plans and never trains). It ends when nothing
is queued or followed any more, or at `timeout`.

What it sees each round goes to a `WaitListener` (the report draws it: a live table on a
terminal, lines in CI); the clock is the engine's (`Seams.clock`), and so are the ticks' times.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from reconciler.domain import ModelRecord, Observation, RecordStatus
from reconciler.engine import Engine
from reconciler.errors import PermanentProviderError, ProviderError
from reconciler.outcomes import ApplyResult, TriggerOutcome
from reconciler.plan import Action, ModelPlan

#: The hold reason that `wait_for_all` resolves: the provider is at max_concurrent_trainings.
SLOT_REASON = "concurrency-limit"
ENDED = (RecordStatus.SUCCEEDED, RecordStatus.FAILED, RecordStatus.ADOPTED)


class Phase(enum.StrEnum):
    QUEUED = "queued"  # waiting for a slot at its provider
    RUNNING = "running"  # started (by this run or an earlier one), followed until it ends
    ENDED = "ended"  # its training ended (or it cannot be observed any more)


@dataclass(frozen=True)
class Tick:
    """Where one model is when `wait_for_all` looked at it."""

    name: str
    provider: str
    phase: Phase
    #: the engine's clock when this round's plan was made
    at: datetime
    observed: Observation | ProviderError | None = None
    record: ModelRecord | None = None
    #: since when the model is in this run's care: its training's start, or the wait's for a queued one
    since: datetime | None = None
    #: queued: why (the concurrency-limit detail, or the provider's 429)
    detail: str = ""


class WaitListener(Protocol):
    """Told what `wait_for_all` sees: every model once per round, and each trigger it makes."""

    def ticks(self, ticks: Sequence[Tick]) -> None: ...

    def started(self, outcome: TriggerOutcome) -> None: ...


@dataclass
class WaitResult:
    """What happened while waiting."""

    #: the triggers made while waiting, and an outcome for every queued model that never started
    outcomes: dict[str, TriggerOutcome] = field(default_factory=dict)
    #: the followed models, in the order they were started
    followed: list[str] = field(default_factory=list)
    #: every followed model's last record
    final: dict[str, ModelRecord | None] = field(default_factory=dict)


def waits_for_slot(p: ModelPlan) -> bool:
    """A plan held only because its provider is at max_concurrent_trainings."""
    return p.action is Action.HOLD and any(r.code == SLOT_REASON for r in p.reasons)


def _followed_at_start(plans: Iterable[ModelPlan], result: ApplyResult) -> list[str]:
    started = [n for n, o in sorted(result.outcomes.items()) if o.started]
    # a training this state started before (a run that crashed or did not wait) is followed too:
    # `--wait` means "until the trainings reconciler started have ended"
    started += [
        p.name
        for p in plans
        if p.action is Action.WAIT
        and p.record is not None
        and p.record.status is RecordStatus.TRAINING
        and p.name not in started
    ]
    return started


def _ended(p: ModelPlan) -> bool:
    if p.record is not None and p.record.status in ENDED:
        return True
    return p.action is Action.ERROR and isinstance(p.error, PermanentProviderError)


def _not_started(name: str, detail: str, *, superseded: bool = False) -> TriggerOutcome:
    return TriggerOutcome(name, False, detail, superseded=superseded)


class _Wait:
    """The state of one `wait_for_all`: who is followed, queued, or only counted."""

    def __init__(self, engine: Engine, plans: Sequence[ModelPlan], result: ApplyResult, start: datetime) -> None:
        self.engine = engine
        self.start = start
        self.out = WaitResult(followed=_followed_at_start(plans, result))
        self.following = set(self.out.followed)
        following_at = {self.engine.manifests.models[n].provider for n in self.following}
        #: queued model -> whether it waits for a followed training at its provider to end first
        #: (the provider answered 429: its own count of trainings is the one that matters)
        self.queue: dict[str, bool] = {p.name: False for p in plans if waits_for_slot(p)}
        for name, o in result.outcomes.items():
            if o.held and self.engine.manifests.models[name].provider in following_at:
                self.queue[name] = True
        self.detail: dict[str, str] = {p.name: _slot_detail(p) for p in plans if p.name in self.queue}
        self.detail.update({n: o.detail for n, o in result.outcomes.items() if n in self.queue})
        #: in flight but not ours to follow (started outside reconciler): it fills a slot
        self.counted = {p.name for p in plans if p.action is Action.WAIT and p.name not in self.following}

    @property
    def busy(self) -> bool:
        return bool(self.following or self.queue)

    def names(self) -> list[str]:
        return sorted(self.following | set(self.queue) | self.counted)

    def provider(self, name: str) -> str:
        return self.engine.manifests.models[name].provider

    def look(self, plans: Sequence[ModelPlan], now: datetime) -> tuple[list[Tick], set[str]]:
        """Followed and counted models: which ended, and at which providers a slot freed."""
        ticks: list[Tick] = []
        freed: set[str] = set()
        for p in plans:
            if p.name in self.following:
                obs: Observation | ProviderError | None = p.error or p.observation
                since = p.record.triggered_at if p.record else None
                if _ended(p):
                    self.following.discard(p.name)
                    self.out.final[p.name] = p.record
                    freed.add(p.model.provider)
                phase = Phase.RUNNING if p.name in self.following else Phase.ENDED
                ticks.append(Tick(p.name, p.model.provider, phase, now, obs, p.record, since=since))
            elif p.name in self.counted and p.action is not Action.WAIT:
                self.counted.discard(p.name)
                freed.add(p.model.provider)
        return ticks, freed

    def choose(self, plans: Sequence[ModelPlan], freed: set[str], now: datetime) -> tuple[list[ModelPlan], list[Tick]]:
        """Queued models: those to start now, and the ticks of those still waiting."""
        to_start: list[ModelPlan] = []
        ticks: list[Tick] = []
        for p in plans:
            if p.name not in self.queue:
                continue
            after_a_slot = self.queue[p.name]
            if p.triggers and (not after_a_slot or p.model.provider in freed):
                to_start.append(p)
            elif waits_for_slot(p) or (p.triggers and after_a_slot):
                self.detail[p.name] = _slot_detail(p) if waits_for_slot(p) else self.detail.get(p.name, "")
                ticks.append(
                    Tick(p.name, p.model.provider, Phase.QUEUED, now, since=self.start, detail=self.detail[p.name])
                )
            else:
                self._left_queue(p)
        return to_start, ticks

    def _left_queue(self, p: ModelPlan) -> None:
        """A queued model whose plan changed under it: another writer started or trained it, or
        it cannot train now for another reason (said as its outcome)."""
        del self.queue[p.name]
        if p.action is Action.WAIT and p.record is not None and p.record.status is RecordStatus.TRAINING:
            self.out.outcomes[p.name] = _not_started(p.name, "another writer started it; followed", superseded=True)
            self._follow(p.name)
        elif p.action is Action.NONE:
            self.out.outcomes[p.name] = _not_started(p.name, "another writer trained it meanwhile", superseded=True)
        else:
            why = "; ".join(f"{r.code}: {r.detail}" if r.detail else r.code for r in p.reasons)
            self.out.outcomes[p.name] = _not_started(p.name, f"now {p.action.value}: {why}")

    def _follow(self, name: str) -> None:
        self.following.add(name)
        if name not in self.out.followed:
            self.out.followed.append(name)

    def started(self, plans: Sequence[ModelPlan], outcomes: dict[str, TriggerOutcome]) -> None:
        """What the triggers of the queued models did."""
        following_at = {self.provider(n) for n in self.following}
        for p in plans:
            o = outcomes.get(p.name)
            if o is None:
                continue
            if o.held and p.model.provider in following_at:
                self.queue[p.name] = True  # the provider's own count: try again once one of ours ends
                self.detail[p.name] = o.detail
                continue
            del self.queue[p.name]
            self.out.outcomes[p.name] = o
            if o.started or (o.superseded and p.record is not None and p.record.status is RecordStatus.TRAINING):
                self._follow(p.name)

    async def finish(self, timed_out: bool) -> None:
        """Records of what is still followed; an outcome for every model still queued."""
        for name in sorted(self.following):
            self.out.final[name] = await self.engine.state.get(name)
        for name, after_a_slot in sorted(self.queue.items()):
            at = self.provider(name)
            why = "the --timeout came" if timed_out else "nothing that holds its slot is followed"
            what = "the provider refused it for now" if after_a_slot else f"no slot at {at} freed"
            detail = self.detail.get(name)
            self.out.outcomes[name] = _not_started(
                name, f"{what} before {why}" + (f" ({detail})" if detail else "") + "; the next apply starts it"
            )


def _slot_detail(p: ModelPlan) -> str:
    return next((r.detail for r in p.reasons if r.code == SLOT_REASON), "")


async def wait_for_all(
    engine: Engine,
    plans: Sequence[ModelPlan],
    result: ApplyResult,
    *,
    timeout: timedelta | None = None,
    listener: WaitListener | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> WaitResult:
    """After `engine.apply(plans)` gave `result`: follow every started training until it ends,
    starting each `concurrency-limit` hold as a slot at its provider frees (see the module)."""
    if result.refused is not None:  # `--max-trainings`: nothing was started, nothing will be
        return WaitResult()
    start = engine.clock()
    deadline = start + timeout if timeout else None
    w = _Wait(engine, plans, result, start)
    timed_out = False
    while w.busy:
        fresh = await engine.plan([engine.manifests.models[n] for n in w.names()])
        await engine.persist_refresh(fresh)
        engine.announce.holds(fresh)  # retries exhausted, a budget hold: told (notifications)
        now = engine.clock()
        ticks, freed = w.look(fresh, now)
        to_start, queued = w.choose(fresh, freed, now)
        if listener is not None:
            listener.ticks(sorted([*ticks, *queued], key=lambda t: t.name))
        if to_start:
            applied = await engine.apply(to_start)
            w.started(to_start, applied.outcomes)
            if listener is not None:
                for o in sorted(applied.outcomes.values(), key=lambda o: o.name):
                    if o.name in w.out.outcomes:
                        listener.started(o)
        if not w.busy:
            break
        if not to_start and not w.following and not w.counted:
            break  # nothing can free a slot any more: what is still queued stays held
        if deadline and engine.clock() >= deadline:
            timed_out = True
            break
        interval = min(engine.poll_interval(w.provider(n)) for n in w.names())
        await sleep(interval.total_seconds())
    await w.finish(timed_out)
    return w.out


__all__ = ["Phase", "Tick", "WaitListener", "WaitResult", "wait_for_all", "waits_for_slot"]
