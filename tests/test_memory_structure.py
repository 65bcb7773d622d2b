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


def test_a_parsed_document_keeps_no_raw_fields_nor_positions_beside_its_validated_models(tmp_path: Path) -> None:
    """The daemon holds every document's parse for as long as it runs: once checked, a document
    keeps its validated models and where its name is, not the YAML dicts, nodes or a position
    table; its text is packed. A later check against another type (a Provider changed its type)
    builds the fields again from that text and still says file:line:col, without re-reading the file."""
    from reconciler.daemon.tracker import ManifestTracker
    from reconciler.logs import Redactor
    from reconciler.spec import parse_file

    specs = tmp_path / "specs"
    specs.mkdir()
    model_file = specs / "models.yaml"
    model_file.write_text(
        "---\n".join(DOC.format(name=n, policy="").replace("provider: roboflow", "provider: p") for n in ("a", "b"))
    )
    provider = specs / "provider.yaml"
    provider.write_text("apiVersion: reconciler/v1\nkind: Provider\nmetadata: {name: p}\nspec: {type: roboflow}\n")
    parsed: list[Path] = []

    def parse(path: Path, *args: Any) -> Any:
        parsed.append(path)
        return parse_file(path, *args)

    tracker = ManifestTracker([str(specs)], Redactor({}), parse=parse)
    tracker.load()
    raws = tracker.files[str(model_file)].latest.raw_models
    b = tracker.manifests.models["b"]
    for raw in raws:
        assert not hasattr(raw, "__dict__") and not hasattr(raw.doc, "__dict__")
        assert raw.model is None and raw.training is None  # the validated models hold them
        assert not hasattr(raw.doc, "_known") and raw.doc.data is None
        stream = raw.doc._stream
        assert stream is not None and stream.roots is None and stream.text is None and stream.packed
    assert b.source is raws[1].name_at and str(b.source) == f"{model_file}:14:3"
    assert b.model.workspace == "acme"  # type: ignore[attr-defined]

    provider.write_text(provider.read_text().replace("type: roboflow", "type: lucid"))
    tracker.files_changed([provider])
    tracker.load()
    assert model_file not in parsed[2:]  # only the Provider's file was read again
    assert tracker.manifests.models["a"].provider_type == "roboflow"  # the Provider's last good version
    problems = [str(p) for p in tracker.problems if p.file == str(model_file)]
    assert f"{model_file}:7:11: unknown field 'spec.model.workspace'" in problems
    assert f"{model_file}:17:11: unknown field 'spec.model.workspace'" in problems
    assert raws[1].doc._stream is not None and raws[1].doc._stream.roots is None  # released again
