"""plan is a pure function of (desired, recorded, observed): examples and properties."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.domain import DesiredModel, ModelRecord, Observation, Policy, RecordStatus, TrainingStatus
from reconciler.errors import AuthError, NotFoundError, TemporaryProviderError
from reconciler.plan import Action, Budget, ModelPlan, limit_budget, limit_concurrency, plan_model
from reconciler.report.exits import plan_exit_code as exit_code
from reconciler.report.views import plan_entry
from reconciler.spec import load_manifests

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)

MANIFEST = """\
apiVersion: reconciler/v1
kind: TrainedModel
metadata: {name: %s}
spec:
  provider: roboflow
  model: {workspace: acme, project: hardhats}
  training: {version: 3, model_type: rfdetr-nano, epochs: %d}
"""


def _model(tmp: Path, name: str = "m", epochs: int = 100) -> DesiredModel:
    (tmp / f"{name}-{epochs}.yaml").write_text(MANIFEST % (name, epochs))
    ms = load_manifests([tmp / f"{name}-{epochs}.yaml"])
    return ms.models[name]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> DesiredModel:
    return _model(tmp_path_factory.mktemp("plan"))


@pytest.fixture(scope="module")
def model_150(tmp_path_factory: pytest.TempPathFactory) -> DesiredModel:
    return _model(tmp_path_factory.mktemp("plan150"), epochs=150)


def with_policy(m: DesiredModel, **kw: object) -> DesiredModel:
    return dataclasses.replace(m, policy=Policy.model_validate({**m.policy.model_dump(), **kw}))


def record(m: DesiredModel, status: RecordStatus = RecordStatus.SUCCEEDED, **kw: object) -> ModelRecord:
    base: dict[str, object] = {
        "name": m.name,
        "provider": m.provider,
        "fingerprint": m.fingerprint,
        "training": m.snapshot,
        "status": status,
        "marker": "t1",
        "triggered_at": NOW - timedelta(days=2),
        "finished_at": NOW - timedelta(days=1),
    }
    base.update(kw)
    return ModelRecord(**base)  # type: ignore[arg-type]


def obs(status: TrainingStatus = TrainingStatus.SUCCEEDED, marker: str | None = "t1", **kw: object) -> Observation:
    return Observation(status=status, marker=marker, **kw)  # type: ignore[arg-type]


def codes(p: ModelPlan) -> list[str]:
    return [r.code for r in p.reasons]


def test_in_sync(model: DesiredModel) -> None:
    p = plan_model(model, record(model), obs(), NOW)
    assert p.action is Action.NONE and p.reasons == []


def test_never_trained(model: DesiredModel) -> None:
    p = plan_model(model, None, obs(TrainingStatus.NONE, marker="-"), NOW)
    assert (p.action, codes(p)) == (Action.TRAIN, ["never-trained"])


def test_spec_changed_lists_fields(model: DesiredModel, model_150: DesiredModel) -> None:
    p = plan_model(model_150, record(model), obs(), NOW)
    assert (p.action, codes(p)) == (Action.TRAIN, ["spec-changed"])
    assert [(c.path, c.before, c.after) for c in p.changes] == [("training.epochs", 100, 150)]
    assert plan_entry(p)["changes"] == [{"path": "training.epochs", "before": 100, "after": 150}]


def test_stale_data_and_expiry(model: DesiredModel) -> None:
    p = plan_model(model, record(model), obs(stale="flagged", data_changed="new demand"), NOW)
    assert codes(p) == ["provider-stale", "data-changed"] and p.action is Action.TRAIN
    m = with_policy(model, retrain_after="12h")
    assert codes(plan_model(m, record(m), obs(), NOW)) == ["expired"]
    m = with_policy(model, retrain_after="30d")
    assert plan_model(m, record(m), obs(), NOW).action is Action.NONE


def test_unknown_baseline_policies(model: DesiredModel) -> None:
    hold = plan_model(model, None, obs(), NOW)
    assert (hold.action, codes(hold)[0]) == (Action.HOLD, "unknown-baseline")
    adopt = plan_model(with_policy(model, on_unknown_baseline="adopt"), None, obs(), NOW)
    assert (adopt.action, codes(adopt)) == (Action.NONE, ["unknown-baseline", "will-adopt"])
    train = plan_model(with_policy(model, on_unknown_baseline="train"), None, obs(), NOW)
    assert (train.action, codes(train)) == (Action.TRAIN, ["unknown-baseline"])


def test_training_ends_and_failure_backoff(model: DesiredModel) -> None:
    training = record(model, RecordStatus.TRAINING, marker="t1", triggered_at=NOW - timedelta(minutes=5))
    done = plan_model(model, training, obs(TrainingStatus.SUCCEEDED, marker="t2"), NOW)
    assert done.action is Action.NONE and done.record is not None and done.record.status is RecordStatus.SUCCEEDED
    assert [e.event for e in done.events] == ["succeeded"]
    failed = plan_model(model, training, obs(TrainingStatus.FAILED, marker="t2", message="boom"), NOW)
    assert failed.record is not None and failed.record.status is RecordStatus.FAILED
    assert (failed.action, codes(failed)) == (Action.HOLD, ["training-failed", "backoff"])
    later = plan_model(model, failed.record, obs(TrainingStatus.FAILED, marker="t2"), NOW + timedelta(hours=1))
    assert (later.action, codes(later)) == (Action.RETRY, ["training-failed"])
    exhausted = dataclasses.replace(failed.record, attempts=4)
    p = plan_model(model, exhausted, obs(TrainingStatus.FAILED, marker="t2"), NOW + timedelta(days=2))
    assert (p.action, codes(p)) == (Action.HOLD, ["training-failed", "retries-exhausted"])


def test_same_marker_success_is_not_the_new_training(model: DesiredModel) -> None:
    # the provider has not picked the training up yet: still the old model, keep waiting
    training = record(model, RecordStatus.TRAINING, marker="t1", triggered_at=NOW - timedelta(minutes=1))
    p = plan_model(model, training, obs(TrainingStatus.SUCCEEDED, marker="t1"), NOW)
    assert p.action is Action.WAIT


def test_intent_settled_by_observation(model: DesiredModel) -> None:
    intent = record(model, RecordStatus.INTENT, marker="t1", reasons=["spec-changed"])
    reached = plan_model(model, intent, obs(TrainingStatus.RUNNING, marker="t1"), NOW)
    assert reached.action is Action.WAIT and reached.record is not None
    assert reached.record.status is RecordStatus.TRAINING and [e.event for e in reached.events] == ["settled"]
    lost = plan_model(model, intent, obs(TrainingStatus.SUCCEEDED, marker="t1"), NOW)
    assert (lost.action, codes(lost)) == (Action.TRAIN, ["spec-changed"])
    blind = plan_model(model, intent, obs(TrainingStatus.SUCCEEDED, marker="t1"), NOW, observable_trigger=False)
    assert (blind.action, codes(blind)) == (Action.HOLD, ["unconfirmed-intent"])


def test_errors_map_to_reason_codes(model: DesiredModel) -> None:
    for err, code in [
        (AuthError("401", provider="roboflow"), "auth-failed"),
        (NotFoundError("404", provider="roboflow"), "not-found"),
        (TemporaryProviderError("503", provider="roboflow"), "provider-unavailable"),
    ]:
        p = plan_model(model, None, err, NOW)
        assert (p.action, codes(p)) == (Action.ERROR, [code])


def test_exit_codes(model: DesiredModel) -> None:
    none = plan_model(model, record(model), obs(), NOW)
    train = plan_model(model, None, obs(TrainingStatus.NONE), NOW)
    err = plan_model(model, None, AuthError("x"), NOW)
    assert exit_code([none]) == 0
    assert exit_code([none, train]) == 2
    assert exit_code([train, err]) == 1
    assert exit_code([]) == 0


# ---------------------------------------------------------------- properties

statuses = st.sampled_from(list(TrainingStatus))
record_statuses = st.none() | st.sampled_from(list(RecordStatus))
markers = st.sampled_from(["t1", "t2", None])


@given(
    obs_status=statuses,
    obs_marker=markers,
    rec_status=record_statuses,
    stale=st.booleans(),
    data=st.booleans(),
    suspend=st.booleans(),
    drift=st.sampled_from(["correct", "warn"]),
    changed=st.booleans(),
    attempts=st.integers(0, 6),
    unknown=st.sampled_from(["hold", "adopt", "train"]),
    observable=st.booleans(),
)
def test_plan_properties(
    model: DesiredModel,
    model_150: DesiredModel,
    obs_status: TrainingStatus,
    obs_marker: str | None,
    rec_status: RecordStatus | None,
    stale: bool,
    data: bool,
    suspend: bool,
    drift: str,
    changed: bool,
    attempts: int,
    unknown: str,
    observable: bool,
) -> None:
    desired = with_policy(model_150 if changed else model, suspend=suspend, drift=drift, on_unknown_baseline=unknown)
    rec = None if rec_status is None else record(model, rec_status, attempts=attempts)
    o = obs(obs_status, obs_marker, stale="x" if stale else None, data_changed="y" if data else None)
    p = plan_model(desired, rec, o, NOW, observable_trigger=observable)
    again = plan_model(desired, rec, o, NOW, observable_trigger=observable)
    assert plan_entry(p) == plan_entry(again)  # pure: same inputs, same plan
    # never stack a second training on one in flight
    if o.in_flight:
        assert not p.triggers
    # suspended or warn-only models are never trained
    if suspend or drift == "warn":
        assert not p.triggers
    # every action explains itself with codes from the vocabulary, except "in sync"
    from reconciler.plan import OTHER_REASONS, TRAIN_REASONS

    assert all(r.code in TRAIN_REASONS + OTHER_REASONS for r in p.reasons)
    if p.action is not Action.NONE:
        assert p.reasons
    if p.triggers:
        assert any(r.code in TRAIN_REASONS for r in p.reasons)
    # the inputs are never mutated
    if rec is not None:
        assert rec == record(model, rec_status, attempts=attempts)  # type: ignore[arg-type]


@given(n=st.integers(0, 12), limit=st.integers(1, 4), running=st.integers(0, 5))
def test_concurrency_limit_is_respected(model: DesiredModel, n: int, limit: int, running: int) -> None:
    plans = [
        plan_model(dataclasses.replace(model, name=f"m{i:02d}"), None, obs(TrainingStatus.NONE), NOW) for i in range(n)
    ]
    limit_concurrency(plans, {"roboflow": limit}, {"roboflow": running})
    started = sum(p.triggers for p in plans)
    assert started == max(0, min(n, limit - running))
    held = [p for p in plans if p.action is Action.HOLD]
    assert all("concurrency-limit" in codes(p) for p in held)


@given(
    n=st.integers(0, 10),
    limit=st.integers(1, 5),
    ages=st.lists(st.integers(0, 48 * 60), max_size=8),  # minutes before now of earlier starts
)
def test_budget_is_never_exceeded_and_the_next_slot_is_when_the_window_allows(
    model: DesiredModel, n: int, limit: int, ages: list[int]
) -> None:
    window = timedelta(hours=24)
    started = [NOW - timedelta(minutes=a) for a in ages]
    plans = [
        plan_model(dataclasses.replace(model, name=f"m{i:02d}"), None, obs(TrainingStatus.NONE), NOW) for i in range(n)
    ]
    limit_budget(
        plans, {"roboflow": Budget(limit, window, started, "at roboflow", "raise it")}, lambda p: "roboflow", NOW
    )
    inside = [t for t in started if NOW - window < t]
    allowed = sum(p.triggers for p in plans)
    assert allowed == max(0, min(n, limit - len(inside)))
    everything = sorted([*inside, *[NOW] * allowed])
    for p in plans:
        if p.action is Action.HOLD:
            assert codes(p) == ["never-trained", "budget"] and p.not_before is not None and p.not_before > NOW
            # at the next slot, fewer than `limit` starts remain inside the window; just before, not
            assert sum(1 for t in everything if p.not_before - window < t) < limit
            assert sum(1 for t in everything if p.not_before - window - timedelta(seconds=1) < t) >= limit
