"""The structure that keeps a 10k-model daemon small (issue 14): shared policies, slotted records.

RSS itself is measured in benchmarks/daemon_scale.py; these pin the shapes that pay for it."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path
from typing import Any

import pytest

from reconciler.domain import HistoryEvent, ModelRecord, Observation, RecordStatus, TrainingStatus, TrainResult
from reconciler.spec import load_manifests

DOC = """\
apiVersion: reconciler/v1
kind: TrainedModel
metadata:
  name: {name}
spec:
  provider: roboflow
  model: {{workspace: acme, project: {name}}}
  training: {{version: 3, model_type: rfdetr-nano, epochs: 100}}
  {policy}
"""


def test_models_with_equal_policies_share_one_policy_object(tmp_path: Path) -> None:
    docs = [
        DOC.format(name="a", policy=""),
        DOC.format(name="b", policy=""),
        DOC.format(name="c", policy="policy: {drift: warn}"),
        DOC.format(name="d", policy="policy: {drift: warn}"),
        DOC.format(name="e", policy="policy: {drift: correct}"),
    ]
    (tmp_path / "m.yaml").write_text("---\n".join(textwrap.dedent(d) for d in docs))
    models = load_manifests([tmp_path]).models
    assert models["a"].policy is models["b"].policy is models["e"].policy
    assert models["c"].policy is models["d"].policy
    assert models["a"].policy is not models["c"].policy


@pytest.mark.parametrize(
    "obj",
    [
        ModelRecord("m", "roboflow", "sha256:x", {}, RecordStatus.SUCCEEDED),
        Observation(TrainingStatus.NONE),
        TrainResult(),
        HistoryEvent("m", "intent"),
    ],
)
def test_records_and_observations_hold_only_their_fields(obj: Any) -> None:
    assert not hasattr(obj, "__dict__")
    assert set(type(obj).__slots__) == {f.name for f in dataclasses.fields(obj)}


def test_settled_plans_keep_only_what_status_and_the_scheduler_read(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from reconciler.daemon.plans import PlanBook
    from reconciler.daemon.queue import in_flight
    from reconciler.plan import Action, ModelPlan, Reason, count_in_flight
    from reconciler.report.views import status_entry
    from reconciler.values import Change

    (tmp_path / "m.yaml").write_text(DOC.format(name="a", policy=""))
    model = load_manifests([tmp_path]).models["a"]
    at = datetime(2026, 1, 2, tzinfo=UTC)
    fields = {"version": 3, "model_type": "rfdetr-nano", "epochs": 100}
    rec = ModelRecord(
        "a", "roboflow", "fp", dict(fields), RecordStatus.TRAINING, handle="h", attempts=1,
        next_attempt_at=at + timedelta(hours=1), triggered_at=at, marker="m1", data_marker={"batches": ["b1"]},
        reasons=["spec-changed"], provider_model="acme/a", version=4,
    )  # fmt: skip
    obs = Observation(
        TrainingStatus.RUNNING, marker="m2", trained_at=at, progress=0.5, message="training",
        data_marker={"batches": ["b1", "b2"]}, config_changes=[Change("annotation", "x", "y")],
        observed_training=dict(fields), handle="h", provider_state="running",
    )  # fmt: skip
    event = HistoryEvent("a", "settled", "intent-acknowledged", detail={"marker": "m2"})
    plan = ModelPlan(
        model, Action.WAIT, [Reason("in-flight", "training")], [Change("training.epochs", 100, 150)],
        record=rec, observation=obs, events=[event], record_changed=True,
    )  # fmt: skip
    shown = status_entry(plan)
    book = PlanBook()
    book.decide([plan])
    book.settle([plan])
    kept = book.settled["a"]
    assert book.deciding == {}
    # what a full resync interval would otherwise hold for each of 10,000 models
    assert kept.record is not None and kept.record.training == {} and kept.record.data_marker is None
    assert kept.observation is not None and kept.observation.observed_training == {}
    assert kept.observation.config_changes == [] and kept.observation.data_marker is None
    assert kept.events == []
    # ... and what /status, the poller and the concurrency limit read is unchanged
    assert status_entry(kept) == shown
    assert in_flight(kept) and count_in_flight([kept]) == count_in_flight([plan]) == {"roboflow": 1}
    assert (kept.record.next_attempt_at, kept.record.finished_at) == (rec.next_attempt_at, rec.finished_at)
    assert kept.model is model and kept.action is plan.action and kept.reasons == plan.reasons
