"""The daemon's current plan per model: what `/status` and the `reconciler_models` gauge both read."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable

from reconciler.plan import ModelPlan


def settled_view(p: ModelPlan) -> ModelPlan:
    """`p` as the daemon keeps it until the model's next batch: only what `/status`
    (`report.views.status_entry`), the scheduler (`queue.in_flight`, `Schedule.schedule_wake`) and
    `max_concurrent_trainings` (`plan.count_in_flight`) read of it. The next batch reads the record
    from the state and observes afresh, so the rest of each record (its training fields, data
    marker) and observation (the training read back, config changes) would only hold 10,000 dicts
    for a whole resync interval (benchmarks/daemon_scale.py: the RSS after many resyncs)."""
    rec, obs = p.record, p.observation
    return dataclasses.replace(
        p,
        record=None if rec is None else dataclasses.replace(rec, training={}, data_marker=None, reasons=[]),
        observation=None
        if obs is None
        else dataclasses.replace(obs, data_marker=None, config_changes=[], observed_training={}),
        events=[],  # logged and counted by the daemon before settling
    )


class PlanBook:
    """Plans that finished batches left (`settled`) and the plans of the batches being applied (one
    per lane: a person's change is reconciled beside a full resync, never behind it).

    The scheduler and the concurrency limit follow `settled`; `current()` shows a batch's
    decisions from the moment they are made, so nothing reads a model as in sync while a
    training for it is being started.
    """

    def __init__(self) -> None:
        self.settled: dict[str, ModelPlan] = {}
        self.deciding: dict[str, ModelPlan] = {}

    def current(self, known: Collection[str]) -> list[ModelPlan]:
        """Each model's newest plan (decided in the batch in flight, else settled), by name; only `known` ones."""
        merged = {**self.settled, **self.deciding}
        return [merged[n] for n in sorted(merged) if n in known]

    def others(self, names: Collection[str], known: Collection[str]) -> list[ModelPlan]:
        """The newest plans of the known models outside `names` (the rest of the daemon's world,
        the other lane's batch in flight included: its trainings count against the limits too)."""
        merged = {**self.settled, **self.deciding}
        return [p for n, p in merged.items() if n not in names and n in known]

    def decide(self, plans: Iterable[ModelPlan]) -> None:
        """A batch decided these plans; shown until `settle` or `abandon`."""
        self.deciding.update((p.name, p) for p in plans)

    def settle(self, plans: Iterable[ModelPlan]) -> None:
        """The batch is done: its plans (their `settled_view`) are the models' plans now."""
        for p in plans:
            self.settled[p.name] = settled_view(p)
            if self.deciding.get(p.name) is p:
                del self.deciding[p.name]

    def abandon(self, names: Iterable[str]) -> None:
        """The batch of `names` failed: those models keep their previous plans."""
        for name in names:
            self.deciding.pop(name, None)

    def forget(self, name: str) -> None:
        """A model left the manifests."""
        self.settled.pop(name, None)
        self.deciding.pop(name, None)
