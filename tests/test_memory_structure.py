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
