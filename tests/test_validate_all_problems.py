"""`validate` reports every problem of every document in one run (issue 13), each as file:line:col."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import run_in_process, write_text

from reconciler.errors import ManifestError, Problem
from reconciler.spec import load_manifests

#: a TrainedModel with four problems; `provider` is substituted
BROKEN_MODEL = """\
apiVersion: reconciler/v1
kind: TrainedModel
metadata:
  name: hardhat-detector
  colour: red
spec:
  provider: {provider}
  model: {{workspace: acme, project: hardhats}}
  training: {{version: 3, model_type: rfdetr-nano, epochs: many}}
  policy: {{drift: maybe}}
"""

NAMED_PROVIDER = """\
---
apiVersion: reconciler/v1
kind: Provider
metadata: {name: rf-prod}
spec: {type: roboflow}
"""


def all_problems(path: Path) -> list[Problem]:
    with pytest.raises(ManifestError) as info:
        load_manifests([path])
    return info.value.problems


def at(problems: list[Problem], line: int) -> list[str]:
    return [p.message for p in problems if p.line == line]


def test_an_unknown_provider_does_not_hide_the_other_fields_problems(tmp_path: Path) -> None:
    path = write_text(tmp_path / "a.yaml", BROKEN_MODEL.format(provider="robflow"))
    found = all_problems(path)
    assert all(p.file == str(path) and p.col >= 1 for p in found), found
    assert at(found, 5) == ["unknown field 'metadata.colour'"]
    (provider,) = at(found, 7)
    assert "unknown provider 'robflow'" in provider and "did you mean 'roboflow'?" in provider
    (drift,) = at(found, 10)
    assert "spec.policy.drift" in drift
    # no schema for `training` without a type: `epochs: many` waits for a provider that names one
    assert len(found) == 3, found


def test_a_broken_envelope_does_not_hide_model_and_training_problems(tmp_path: Path) -> None:
    # with a type, or a Provider manifest of that type: the training's problem comes in the same run
    for provider in ("roboflow", "rf-prod"):
        path = write_text(tmp_path / "a.yaml", BROKEN_MODEL.format(provider=provider) + NAMED_PROVIDER)
        found = all_problems(path)
        assert at(found, 5) == ["unknown field 'metadata.colour'"]
        (epochs,) = at(found, 9)
        assert "spec.training.epochs" in epochs
        (drift,) = at(found, 10)
        assert "spec.policy.drift" in drift
        assert len(found) == 3, (provider, found)


def test_a_provider_type_typo_does_not_hide_its_base_url(tmp_path: Path) -> None:
    path = write_text(
        tmp_path / "a.yaml",
        """\
apiVersion: reconciler/v1
kind: Provider
metadata: {name: rf-prod}
spec:
  type: roboflw
  base_url: ftp://x
---
apiVersion: reconciler/v1
kind: Provider
metadata: {name: rf-staging}
spec:
  type: roboflw
  base_url: ftp://y
  max_concurrent_trainings: 0
"""
        + "---\n"
        + BROKEN_MODEL.format(provider="rf-prod").replace("  colour: red\n", ""),
    )
    found = all_problems(path)
    for first in (5, 12):
        (type_,) = at(found, first)
        assert "unknown provider type 'roboflw'" in type_ and "did you mean 'roboflow'?" in type_
        (url,) = at(found, first + 1)
        assert "base_url 'ftp://" in url and "absolute http(s) URL" in url
    (limit,) = at(found, 14)
    assert "max_concurrent_trainings" in limit
    # the model naming the broken Provider is not blamed for it (no "unknown provider"), and its
    # own problems (its Provider's type is unknown, so only the envelope's) are still reported
    assert not [p for p in found if "unknown provider 'rf-prod'" in p.message], found
    assert [p.line for p in found if "spec.policy.drift" in p.message] == [24], found
    assert len(found) == 6, found


def test_validate_prints_every_problem_as_file_line_col_and_exits_1(tmp_path: Path) -> None:
    write_text(tmp_path / "specs" / "a.yaml", BROKEN_MODEL.format(provider="rf-prod") + NAMED_PROVIDER)
    write_text(tmp_path / "specs" / "b.yaml", BROKEN_MODEL.format(provider="robflow").replace("hardhat", "helmet"))
    result = run_in_process(("validate", "specs"), {"PATH": "/usr/bin:/bin"}, tmp_path)
    assert result.code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if re.match(r"^specs/[ab]\.yaml:\d+:\d+: ", line)]
    assert {line.split(":", 3)[0] + ":" + line.split(":", 3)[1] for line in lines} == {
        "specs/a.yaml:5",
        "specs/a.yaml:9",
        "specs/a.yaml:10",
        "specs/b.yaml:5",
        "specs/b.yaml:7",
        "specs/b.yaml:10",
    }, result.output
