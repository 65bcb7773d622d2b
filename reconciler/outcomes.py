"""What `Engine.apply` reports: one outcome per model it tried to start, and the whole result.

Kept apart from the engine so that reports (`reconciler.report`) read them without importing
the engine, and the engine module stays about running actions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from reconciler import budget
from reconciler.errors import ProviderError
from reconciler.plan import ModelPlan


@dataclass
class TriggerOutcome:
    """What happened to one model's train/retry action."""

    name: str
    started: bool
    detail: str = ""
    error: ProviderError | None = None
    #: the call may have reached the provider: settled later by observing, never resent
    ambiguous: bool = False
    #: the provider refused for now (429: too many trainings running): nothing started, not an
    #: error; the record is restored, so the next plan shows the training again
    held: bool = False
    #: another writer changed the record first (or this daemon lost its leader lease): nothing
    #: was sent, not an error; the plan was made again and shows what that writer did
    superseded: bool = False
    #: a spend guard was spent when the intent was written (another writer used the budget):
    #: nothing was sent, not an error; the plan is now `hold budget`
    over_budget: bool = False


@dataclass
class ApplyResult:
    plans: list[ModelPlan]
    outcomes: dict[str, TriggerOutcome] = field(default_factory=dict)
    adopted: list[str] = field(default_factory=list)
    #: `apply --max-trainings` refused the whole plan: nothing was written or started
    refused: budget.BlastRadius | None = None
