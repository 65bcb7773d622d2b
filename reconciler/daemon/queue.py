"""The daemon's work queue and its schedule of looks that nobody asked for.

`WorkQueue` holds model names waiting for the worker, each with the most urgent trigger that asked
for it, so a burst of saves, polls and callbacks becomes one batch. `Schedule` says when to look
again unasked: each provider's in-flight trainings at its poll interval, and per model when a
backoff ends or `retrain_after` expires.
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import Callable, Container, Iterable, Mapping
from datetime import datetime, timedelta

from reconciler.domain import RecordStatus
from reconciler.errors import TemporaryProviderError
from reconciler.plan import Action, ModelPlan
from reconciler.values import utc_now

#: Which trigger names a batch when several are mixed (and wins when one name is queued twice).
TRIGGER_ORDER = ("webhook", "change", "startup", "poll", "retry", "resync")
#: What a person waits for: reconciled in a lane of its own, never behind a full resync.
URGENT_TRIGGERS = frozenset({"webhook", "change"})
#: Polls are spread by up to this fraction of the interval, only ever later (PhotoGPT's floor).
POLL_JITTER = 0.1
#: A batch that failed (state unreachable, a bug) is retried after this, doubling up to the cap.
RETRY_FIRST_SECONDS = 5.0
RETRY_CAP_SECONDS = 300.0


def batch_trigger(batch: Mapping[str, str]) -> str:
    """The most urgent of a batch's triggers (what names it in the duration histogram)."""
    return min(batch.values(), key=TRIGGER_ORDER.index)


class WorkQueue:
    """Model names waiting to be reconciled, coalesced by name (the most urgent trigger wins)."""

    def __init__(self) -> None:
        self.pending: dict[str, str] = {}  # model name -> what asked for it
        self.wakeup = asyncio.Event()
        self.closed = False

    def __len__(self) -> int:
        return len(self.pending)

    def put(self, names: Iterable[str], trigger: str) -> None:
        """Queue these models; ignored once closed (no new work during shutdown)."""
        if self.closed:
            return
        added = False
        for name in names:
            current = self.pending.get(name)
            if current is None or TRIGGER_ORDER.index(trigger) < TRIGGER_ORDER.index(current):
                self.pending[name] = trigger
            added = True
        if added:
            self.wakeup.set()

    def close(self) -> None:
        """Refuse new work and wake a worker waiting in `take`."""
        self.closed = True
        self.wakeup.set()

    async def take(self, lane: str | None = None) -> dict[str, str]:
        """What is queued for `lane` once there is some; empty once closed.

        lane None: everything; "urgent": the names a change or a webhook asked for; "bulk": the rest.
        """
        while not self.closed:
            if lane is None:
                batch, self.pending = self.pending, {}
            else:
                urgent = lane == "urgent"
                batch = {n: t for n, t in self.pending.items() if (t in URGENT_TRIGGERS) is urgent}
                for name in batch:
                    del self.pending[name]
            if batch:
                return batch
            self.wakeup.clear()
            await self.wakeup.wait()
        return {}

    def discard(self, name: str) -> None:
        """Forget a model that left the manifests."""
        self.pending.pop(name, None)


def in_flight(p: ModelPlan) -> bool:
    """A training runs (or may run) for this plan's model: it is polled until it ends."""
    return (
        p.action is Action.WAIT
        or (p.record is not None and p.record.status in (RecordStatus.INTENT, RecordStatus.TRAINING))
        or (p.observation is not None and p.observation.in_flight)
    )


class Schedule:
    """Polls of in-flight trainings per provider, wakes per model, and backoff after failed batches."""

    def __init__(self) -> None:
        self.poll_due: dict[str, float] = {}  # provider -> monotonic time of its next poll
        self.wake_at: dict[str, datetime] = {}  # model name -> reconcile again then (backoff, expiry)
        self.failures: dict[str, int] = {}  # model name -> consecutive failed batches

    def due_polls(
        self,
        now: float,
        plans: Mapping[str, ModelPlan],
        skip: Callable[[str], bool],
        interval: Callable[[str], timedelta],
    ) -> list[str]:
        """The models to poll now: each provider's in-flight trainings (and temporarily failing
        reads) once its interval has passed. `skip`: names not to poll (gone, already queued)."""
        by_provider: dict[str, list[str]] = defaultdict(list)
        for name, p in plans.items():
            if skip(name):
                continue
            if in_flight(p) or isinstance(p.error, TemporaryProviderError):
                by_provider[p.model.provider].append(name)
        for provider in [p for p in self.poll_due if p not in by_provider]:
            del self.poll_due[provider]
        due: list[str] = []
        for provider, names in by_provider.items():
            at = self.poll_due.get(provider)
            if at is None:
                self.poll_due[provider] = now + self._jittered(interval(provider))
            elif now >= at:
                due.extend(names)
                self.poll_due[provider] = now + self._jittered(interval(provider))
        return due

    @staticmethod
    def _jittered(base: timedelta) -> float:
        return base.total_seconds() * (1 + random.uniform(0, POLL_JITTER))

    def due_wakes(self, known: Container[str]) -> list[str]:
        """Models whose wake time has come (and that are still in the manifests)."""
        now = utc_now()
        due = [n for n, at in self.wake_at.items() if at <= now]
        for name in due:
            del self.wake_at[name]
        return [n for n in due if n in known]

    def schedule_wake(self, p: ModelPlan) -> None:
        """Reconcile again when a backoff or a spend guard's hold ends or retrain_after expires, not only at the next resync."""
        self.wake_at.pop(p.name, None)
        if p.action is Action.HOLD and p.not_before is not None and p.not_before > utc_now():
            self.wake_at[p.name] = p.not_before  # a spend guard's next slot (a record or not)
            return
        rec = p.record
        if rec is None:
            return
        when = None
        if p.action is Action.HOLD and rec.next_attempt_at is not None:
            when = rec.next_attempt_at
        elif rec.status in (RecordStatus.SUCCEEDED, RecordStatus.ADOPTED) and rec.finished_at:
            retrain_after = p.model.policy.retrain_after
            if retrain_after:
                when = rec.finished_at + retrain_after
        # a time already past (retries exhausted, expired but suspended) would wake it in a loop
        if when is not None and when > utc_now():
            self.wake_at[p.name] = when

    def failed(self, names: list[str]) -> float:
        """A batch of these models failed: wake them after a doubling delay; the delay in seconds."""
        n = max(self.failures.get(name, 0) for name in names) + 1
        delay: float = min(RETRY_FIRST_SECONDS * 2.0 ** (n - 1), RETRY_CAP_SECONDS)
        at = utc_now() + timedelta(seconds=delay)
        for name in names:
            self.failures[name] = n
            self.wake_at[name] = min(self.wake_at.get(name, at), at)
        return delay

    def succeeded(self, names: Iterable[str]) -> None:
        """A batch of these models went through: their failure count starts over."""
        for name in names:
            self.failures.pop(name, None)

    def forget(self, name: str) -> None:
        """A model left the manifests."""
        self.wake_at.pop(name, None)
        self.failures.pop(name, None)
