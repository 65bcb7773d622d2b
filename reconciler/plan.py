"""The pure heart: (desired, recorded, observed) -> an action with reasons.

Nothing here does I/O or reads the clock; `now` is an argument. `refresh` folds what the provider
shows into the record (a training ended, an intent reached the provider); `plan_model` decides;
`limit_concurrency` turns trainings beyond a provider's `max_concurrent_trainings` into holds, and
`limit_budget` those beyond a spend guard (given the trainings already started).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from reconciler.domain import DesiredModel, HistoryEvent, ModelRecord, Observation, RecordStatus, TrainingStatus
from reconciler.errors import (
    AuthError,
    BadResponseError,
    NotFoundError,
    ProviderError,
    TemporaryProviderError,
)
from reconciler.values import Change, diff_snapshots, format_duration


class Action(enum.StrEnum):
    NONE = "none"
    TRAIN = "train"
    WAIT = "wait"
    RETRY = "retry"
    HOLD = "hold"
    ERROR = "error"


#: Reasons to train (design.md's fixed vocabulary) ...
TRAIN_REASONS = (
    "never-trained",
    "spec-changed",
    "data-changed",
    "provider-stale",
    "training-failed",
    "expired",
    "unknown-baseline",
)
#: ... and the reasons for the other actions.
OTHER_REASONS = (
    "in-flight",  # wait: a training is running
    "suspended",  # hold: policy.suspend
    "warn-only",  # hold: policy.drift is warn
    "backoff",  # hold: a failed training is retried after a delay
    "retries-exhausted",  # hold: policy.max_retries reached
    "concurrency-limit",  # hold: provider at max_concurrent_trainings
    "unconfirmed-intent",  # hold: a train call may have reached a provider we cannot observe
    "budget",  # hold: a spend guard (max_trainings_per_day, --max-trainings-per-hour) is spent
    "will-adopt",  # none: on_unknown_baseline is adopt; apply records the provider's model
    "auth-failed",  # error: the key was refused
    "not-found",  # error: the model does not exist at the provider
    "provider-unavailable",  # error: 429/5xx/timeouts persisted
    "bad-response",  # error: the provider answered garbage
    "provider-error",  # error: anything else the provider refused
)


@dataclass(frozen=True)
class Reason:
    code: str
    detail: str = ""


@dataclass
class ModelPlan:
    """The decision for one model, with what it was based on."""

    model: DesiredModel
    action: Action
    reasons: list[Reason] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    record: ModelRecord | None = None  # after `refresh`
    observation: Observation | None = None
    error: ProviderError | None = None
    events: list[HistoryEvent] = field(default_factory=list)  # what `refresh` learned
    record_changed: bool = False
    #: a hold that ends at a known time (a budget's next slot): look again then
    not_before: datetime | None = None

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def triggers(self) -> bool:
        return self.action in (Action.TRAIN, Action.RETRY)


def retry_delay(attempts: int, base: timedelta) -> timedelta:
    """Backoff after the n-th consecutive failure: base, 2x, 4x ... capped at 24h."""
    return min(base * int(2 ** max(0, attempts - 1)), timedelta(hours=24))


def refresh(
    record: ModelRecord | None,
    obs: Observation | None,
    now: datetime,
    *,
    retry_base: timedelta,
    training_timeout: timedelta,
) -> tuple[ModelRecord | None, list[HistoryEvent]]:
    """Fold what the provider shows into the record: settle intents, end trainings."""
    if record is None or obs is None or record.status not in (RecordStatus.INTENT, RecordStatus.TRAINING):
        return record, []
    rec = dataclasses.replace(record)
    events: list[HistoryEvent] = []
    changed_marker = obs.marker != record.marker
    if rec.status is RecordStatus.INTENT:
        if not (obs.in_flight or changed_marker):
            return record, []  # not reached (or not visible): plan decides
        rec.status = RecordStatus.TRAINING
        events.append(
            HistoryEvent(
                rec.name,
                "settled",
                "intent",
                rec.fingerprint,
                {"detail": "the provider shows the training this intent started"},
            )
        )
    if obs.status is TrainingStatus.SUCCEEDED and changed_marker:
        rec.status = RecordStatus.SUCCEEDED
        rec.finished_at = obs.trained_at or now
        rec.attempts = 0
        rec.next_attempt_at = None
        events.append(HistoryEvent(rec.name, "succeeded", "", rec.fingerprint, {"message": obs.message}))
    elif obs.status is TrainingStatus.FAILED and (changed_marker or record.status is RecordStatus.TRAINING):
        rec.status = RecordStatus.FAILED
        rec.attempts += 1
        rec.next_attempt_at = now + retry_delay(rec.attempts, retry_base)
        events.append(HistoryEvent(rec.name, "failed", "training-failed", rec.fingerprint, {"message": obs.message}))
    elif not obs.in_flight and rec.triggered_at is not None and now - rec.triggered_at > training_timeout:
        rec.status = RecordStatus.FAILED
        rec.attempts += 1
        rec.next_attempt_at = now + retry_delay(rec.attempts, retry_base)
        events.append(
            HistoryEvent(
                rec.name,
                "failed",
                "training-failed",
                rec.fingerprint,
                {"message": f"no finished training seen {format_duration(training_timeout)} after the trigger"},
            )
        )
    return rec, events


def error_code(err: ProviderError) -> str:
    """The reason code of a provider error (design.md's vocabulary), for plans and history."""
    if isinstance(err, AuthError):
        return "auth-failed"
    if isinstance(err, NotFoundError):
        return "not-found"
    if isinstance(err, BadResponseError):
        return "bad-response"
    if isinstance(err, TemporaryProviderError):
        return "provider-unavailable"
    return "provider-error"


def _error_reason(err: ProviderError) -> Reason:
    return Reason(error_code(err), str(err))


def _drift(model: DesiredModel, rec: ModelRecord, obs: Observation, now: datetime) -> tuple[list[Reason], list[Change]]:
    reasons: list[Reason] = []
    changes: list[Change] = []
    if rec.fingerprint != model.fingerprint:
        changes = diff_snapshots(rec.training, model.snapshot)
        shown = ", ".join(f"{c.path}: {c.before!r} -> {c.after!r}" for c in changes[:3])
        reasons.append(Reason("spec-changed", shown or "the normalised spec differs from the recorded one"))
    # a field the spec diff already lists (the usual case after an edit) is not shown twice
    listed = {c.path for c in changes}
    config_changes = [c for c in obs.config_changes if c.path not in listed]
    if config_changes:
        changes.extend(config_changes)
        reasons.append(
            Reason(
                "spec-changed",
                "the provider's configuration differs from the spec: " + ", ".join(c.path for c in config_changes),
            )
        )
    if obs.stale:
        reasons.append(Reason("provider-stale", obs.stale))
    if obs.data_changed:
        reasons.append(Reason("data-changed", obs.data_changed))
    if obs.status is TrainingStatus.NONE and rec.status in (RecordStatus.SUCCEEDED, RecordStatus.ADOPTED):
        reasons.append(Reason("never-trained", "the provider shows no trained model although one was recorded"))
    if rec.status is RecordStatus.FAILED and not any(r.code == "spec-changed" for r in reasons):
        failed = f"attempt {rec.attempts} failed" if rec.attempts else "failed; `reconciler retry` re-armed it"
        reasons.append(Reason("training-failed", failed))
    elif (
        obs.status is TrainingStatus.FAILED
        and rec.status in (RecordStatus.SUCCEEDED, RecordStatus.ADOPTED)
        and obs.marker != rec.marker
    ):
        reasons.append(Reason("training-failed", f"a later training at the provider failed: {obs.message}"))
    retrain_after = model.policy.retrain_after
    last = rec.finished_at
    if (
        retrain_after
        and last
        and rec.status in (RecordStatus.SUCCEEDED, RecordStatus.ADOPTED)
        and now - last >= retrain_after
    ):
        reasons.append(
            Reason("expired", f"last trained {last.isoformat()}, retrain_after {format_duration(retrain_after)}")
        )
    return reasons, changes


def plan_model(
    model: DesiredModel,
    record: ModelRecord | None,
    observed: Observation | ProviderError,
    now: datetime,
    *,
    observable_trigger: bool = True,
    training_timeout: timedelta = timedelta(hours=12),
    settle_window: timedelta = timedelta(0),
) -> ModelPlan:
    """Decide what to do for one model. Pure: same inputs, same plan.

    `settle_window`: how long after an unacknowledged intent its train call may still show up at
    the provider (a call cut off in flight); until then the intent is held, never sent again.
    """
    if isinstance(observed, ProviderError):
        return ModelPlan(model, Action.ERROR, [_error_reason(observed)], record=record, error=observed)
    obs = observed
    rec, events = refresh(record, obs, now, retry_base=model.policy.retry_backoff, training_timeout=training_timeout)
    p = ModelPlan(model, Action.NONE, record=rec, observation=obs, events=events, record_changed=bool(events))
    if rec is None:
        return _unrecorded(p, obs)
    if rec.status is RecordStatus.INTENT:
        return _unacknowledged(p, rec, now, observable_trigger=observable_trigger, settle_window=settle_window)
    if rec.status is RecordStatus.TRAINING or obs.in_flight:
        return _in_flight(p, rec, obs)
    return _drifted(p, rec, obs, now)


def _decide(p: ModelPlan, action: Action, reasons: list[Reason]) -> ModelPlan:
    p.action, p.reasons = action, reasons
    return p


def _gated(p: ModelPlan, reasons: list[Reason], action: Action = Action.TRAIN) -> ModelPlan:
    """`action` for these reasons, unless the policy suspends training or only warns."""
    policy = p.model.policy
    if policy.suspend:
        return _decide(p, Action.HOLD, [*reasons, Reason("suspended", "policy.suspend is true")])
    if policy.drift == "warn":
        return _decide(p, Action.HOLD, [*reasons, Reason("warn-only", "policy.drift is warn")])
    return _decide(p, action, reasons)


def _unrecorded(p: ModelPlan, obs: Observation) -> ModelPlan:
    """No record: what the provider shows decides (paid work never starts on a guess)."""
    if obs.status is TrainingStatus.NONE:
        return _gated(p, [Reason("never-trained", "no training recorded and the provider shows none")])
    if obs.status is TrainingStatus.FAILED:
        return _gated(p, [Reason("training-failed", f"the provider shows a failed training: {obs.message}")])
    if obs.in_flight:
        return _decide(
            p,
            Action.WAIT,
            [
                Reason("unknown-baseline", "a training nobody recorded is running at the provider"),
                Reason("in-flight", _progress(obs)),
            ],
        )
    detail = "the provider shows a trained model that no record explains"
    if obs.observed_training:
        detail += " (" + ", ".join(f"{k}={v}" for k, v in sorted(obs.observed_training.items())) + ")"
    choice = p.model.policy.on_unknown_baseline
    if choice == "adopt":
        return _decide(
            p,
            Action.NONE,
            [Reason("unknown-baseline", detail), Reason("will-adopt", "apply records it as matching the spec")],
        )
    if choice == "train":
        return _gated(p, [Reason("unknown-baseline", detail)])
    return _decide(p, Action.HOLD, [Reason("unknown-baseline", detail + _ADOPT_HINT.format(name=p.name))])


#: how an unrecorded model's first reason says it looks like a rename (the `adopt` hint dropped)
RENAME_HINT = (
    "it looks like a rename of {old} (a record no manifest declares, of the same provider model): "
    "run `reconciler rename {old} {new}`"
)
_ADOPT_HINT = "; run `reconciler adopt {name}` or set policy.on_unknown_baseline"


def hint_renames(plans: Iterable[ModelPlan], renames: Mapping[str, str]) -> None:
    """Say on each unrecorded model in `renames` (new name -> orphan, see `orphans`) that it looks
    like a rename, with the command, on its first reason (in place of the adopt hint). In place."""
    for p in plans:
        old = renames.get(p.name)
        if old is None or p.record is not None or not p.reasons:
            continue
        first = p.reasons[0]
        detail = first.detail.removesuffix(_ADOPT_HINT.format(name=p.name))
        p.reasons[0] = Reason(first.code, f"{detail}; {RENAME_HINT.format(old=old, new=p.name)}")


def _unacknowledged(
    p: ModelPlan, rec: ModelRecord, now: datetime, *, observable_trigger: bool, settle_window: timedelta
) -> ModelPlan:
    """An intent the provider does not show yet: held while its call may still arrive, then retried."""
    if not observable_trigger:
        return _decide(
            p,
            Action.HOLD,
            [
                Reason(
                    "unconfirmed-intent",
                    "a train call may have reached the provider and it offers no way to check; "
                    f"look at the provider, then `reconciler adopt {p.name}` if it trained",
                )
            ],
        )
    if rec.triggered_at is not None and now - rec.triggered_at < settle_window:
        until = rec.triggered_at + settle_window
        return _decide(
            p,
            Action.HOLD,
            [
                Reason(
                    "unconfirmed-intent",
                    f"a train call made at {rec.triggered_at.isoformat()} got no answer and may still reach the "
                    f"provider; it is settled by observing, and taken as never received after {until.isoformat()}",
                )
            ],
        )
    never_reached = "an earlier train call never reached the provider (nothing seen since the intent)"
    reasons = [Reason(code, never_reached) for code in rec.reasons or ["never-trained"]]
    p.changes = diff_snapshots(rec.training, p.model.snapshot) if rec.fingerprint != p.model.fingerprint else []
    return _gated(p, reasons)


def _in_flight(p: ModelPlan, rec: ModelRecord, obs: Observation) -> ModelPlan:
    """A training is running: never a second one; a spec changed meanwhile trains once it ends."""
    if rec.status is RecordStatus.TRAINING:
        detail = _progress(obs)
    else:
        detail = "a training started outside reconciler is running; " + _progress(obs)
    reasons = [Reason("in-flight", detail)]
    if rec.fingerprint != p.model.fingerprint:
        p.changes = diff_snapshots(rec.training, p.model.snapshot)
        reasons.append(
            Reason("spec-changed", "the spec changed during the training: it trains once the current training ends")
        )
    return _decide(p, Action.WAIT, reasons)


def _drifted(p: ModelPlan, rec: ModelRecord, obs: Observation, now: datetime) -> ModelPlan:
    """The last training ended: train on drift; a failed one is retried with backoff, then held."""
    policy = p.model.policy
    reasons, p.changes = _drift(p.model, rec, obs, now)
    if not reasons:
        return p
    if [r.code for r in reasons] != ["training-failed"] or rec.status is not RecordStatus.FAILED:
        return _gated(p, reasons)
    if rec.attempts > policy.max_retries:
        exhausted = Reason(
            "retries-exhausted",
            f"{rec.attempts} failed attempts, policy.max_retries is {policy.max_retries}; "
            "change the spec or raise max_retries to try again",
        )
        return _decide(p, Action.HOLD, [*reasons, exhausted])
    if rec.next_attempt_at and now < rec.next_attempt_at:
        return _decide(
            p, Action.HOLD, [*reasons, Reason("backoff", f"next attempt after {rec.next_attempt_at.isoformat()}")]
        )
    return _gated(p, reasons, Action.RETRY)


def _progress(obs: Observation) -> str:
    state = obs.provider_state or obs.status.value
    if obs.progress is not None:
        return f"{state}, {obs.progress:.0%}"
    return state


def limit_concurrency(plans: Sequence[ModelPlan], limits: dict[str, int], in_flight: dict[str, int]) -> None:
    """Hold trainings beyond each provider's max_concurrent_trainings (in place, in name order)."""
    used = dict(in_flight)
    for p in sorted(plans, key=lambda p: p.name):
        if not p.triggers:
            continue
        prov = p.model.provider
        limit = limits.get(prov)
        if limit is not None and used.get(prov, 0) >= limit:
            p.action = Action.HOLD
            p.reasons.append(
                Reason(
                    "concurrency-limit",
                    f"{used.get(prov, 0)} trainings in flight at {prov}, max_concurrent_trainings is {limit}",
                )
            )
            continue
        used[prov] = used.get(prov, 0) + 1


def count_in_flight(plans: Iterable[ModelPlan]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for p in plans:
        running = (p.observation is not None and p.observation.in_flight) or (
            p.record is not None and p.record.status is RecordStatus.TRAINING
        )
        if running:
            counts[p.model.provider] = counts.get(p.model.provider, 0) + 1
    return counts


@dataclass(frozen=True)
class Budget:
    """A spend guard: at most `limit` trainings started in any `window` (design.md "Spend guards")."""

    limit: int
    window: timedelta
    #: the start times already recorded (those older than `window` before now do not count)
    started: Sequence[datetime]
    #: what is counted, for the detail: "at roboflow-prod in the last 24 h"
    scope: str
    #: how to raise it, for the detail: "raise max_trainings_per_day of Provider ..."
    hint: str


def limit_budget(
    plans: Sequence[ModelPlan], budgets: Mapping[str, Budget], key: Callable[[ModelPlan], str], now: datetime
) -> None:
    """Hold trainings beyond their budget (in place, in name order): `key` says which of `budgets` a
    plan spends from (none: unlimited). Each training allowed counts as started `now`."""
    used: dict[str, list[datetime]] = {
        k: sorted(t for t in b.started if now - b.window < t <= now) for k, b in budgets.items()
    }
    for p in sorted(plans, key=lambda p: p.name):
        k = key(p)
        if not p.triggers or k not in budgets:
            continue
        b, times = budgets[k], used[k]
        if len(times) < b.limit:
            times.append(now)
            continue
        # the next training is allowed once enough of these starts have left the window
        nxt = times[len(times) - b.limit] + b.window
        p.action, p.not_before = Action.HOLD, nxt
        p.reasons.append(
            Reason(
                "budget",
                f"{len(times)} trainings started {b.scope}, the limit is {b.limit}; the next one is allowed "
                f"after {nxt.isoformat(timespec='seconds')}; {b.hint}",
            )
        )
