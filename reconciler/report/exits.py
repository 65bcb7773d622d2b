"""Every exit code `reconciler` returns, decided here (design.md):

    validate     0 valid, 1 invalid (each problem on stderr, then "N problems found")
    plan         0 nothing to do, 2 something would train (also a wait with a spec change queued), 1 any error (Terraform's -detailed-exitcode)
    apply        0 every triggered training started (with --wait: succeeded) and no error, else 1
                 (1 also when --max-trainings refused the plan: nothing started)
    status       1 when any model could not be observed, else 0
    history      1 when the text output has no event to show
    usage error  1, never 2, so that plan's 2 always means "would train"; Ctrl-C 130

`main()` maps failures with these codes on every run, `--help` included, so this module imports
the plan's vocabulary (pydantic underneath) only inside the functions that need it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reconciler.domain import ModelRecord
    from reconciler.outcomes import TriggerOutcome
    from reconciler.plan import ModelPlan

OK = 0
FAILED = 1
WOULD_TRAIN = 2
INTERRUPTED = 130


def plan_exit_code(plans: Sequence[ModelPlan]) -> int:
    """Terraform's -detailed-exitcode: 1 any error, 2 something would train, 0 nothing to do."""
    from reconciler.plan import Action
    from reconciler.report.views import queued

    actions = {p.action for p in plans}
    if Action.ERROR in actions:
        return FAILED
    if actions & {Action.TRAIN, Action.RETRY}:
        return WOULD_TRAIN
    # a spec change queued behind a running training trains too, once that training ends
    if any(queued(p) for p in plans):
        return WOULD_TRAIN
    return OK


def succeeded(record: ModelRecord | None) -> bool:
    """Whether a training `apply --wait` followed ended well."""
    from reconciler.domain import RecordStatus

    return record is not None and record.status is RecordStatus.SUCCEEDED


def apply_exit_code(
    plans: Iterable[ModelPlan],
    outcomes: Iterable[TriggerOutcome],
    followed: Iterable[ModelRecord | None] = (),
    *,
    refused: bool = False,
) -> int:
    """0 when no model errs, every trigger started (or the provider or a budget held it, or another
    writer had it first), every followed training succeeded; 1 when `--max-trainings` refused."""
    from reconciler.plan import Action

    if refused:
        return FAILED
    errors = any(p.action is Action.ERROR for p in plans)
    # a training the provider refuses for now (429) is a hold, not a failure: the next run retries
    triggered = all(o.started or o.held or o.superseded or o.over_budget for o in outcomes)
    return OK if not errors and triggered and all(succeeded(r) for r in followed) else FAILED


def status_exit_code(plans: Iterable[ModelPlan]) -> int:
    """1 when any model could not be observed."""
    return FAILED if any(p.error for p in plans) else OK
