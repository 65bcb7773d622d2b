"""CI and editors (issue 11): the Markdown plan, GitHub annotations, the queued spec change.

Golden files (as black tests its output): `tests/golden/*.md` and `*.txt` hold the expected
documents. After an intended change of the output, regenerate them with
`RECONCILER_REGENERATE_GOLDEN=1 .venv/bin/pytest tests/test_ci.py` and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_plan import _model
from test_report import Captured, plan_of

from reconciler.domain import DesiredModel
from reconciler.errors import Problem
from reconciler.plan import Action, Reason
from reconciler.report.base import PlanExtras
from reconciler.report.commands import PlanReport
from reconciler.report.exits import plan_exit_code
from reconciler.report.github import (
    GitHub,
    annotation_lines,
    escape_data,
    escape_property,
    plan_annotations,
    problem_annotations,
)
from reconciler.report.json import plan_document
from reconciler.report.markdown import LIMIT, MARKER, render_markdown
from reconciler.report.text import render_plan
from reconciler.runtime import github
from reconciler.values import Change

GOLDEN = Path(__file__).parent / "golden"


def golden(name: str, actual: str) -> None:
    path = GOLDEN / name
    if os.environ.get("RECONCILER_REGENERATE_GOLDEN"):
        path.write_text(actual + "\n")
    assert actual + "\n" == path.read_text(), f"{name} differs; see this module's docstring to regenerate"


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ci")


@pytest.fixture(scope="module")
def models(tmp: Path) -> dict[str, DesiredModel]:
    return {n: _model(tmp, n) for n in ("alpha", "beta", "gamma", "delta", "eps", "warned")}


def sample(models: dict[str, DesiredModel]) -> list:  # type: ignore[type-arg]
    return [
        plan_of(
            models["alpha"],
            Action.TRAIN,
            Reason("spec-changed", "training.epochs"),
            changes=[Change("training.epochs", 100, 150), Change("training.speed", None, "fast")],
        ),
        plan_of(
            models["beta"],
            Action.WAIT,
            Reason("in-flight", "running, 40%"),
            Reason("spec-changed", "the spec changed during the training: it trains once the current training ends"),
            changes=[Change("training.epochs", 100, 120)],
        ),
        plan_of(models["gamma"], Action.ERROR, Reason("auth", "401: the key | is wrong\nline two")),
        plan_of(models["delta"], Action.NONE),
        plan_of(models["eps"], Action.HOLD, Reason("suspended", "policy.suspend is true")),
        plan_of(
            models["warned"],
            Action.HOLD,
            Reason("spec-changed", "training.epochs"),
            Reason("warn-only", "policy.drift is warn"),
            changes=[Change("training.epochs", 100, 200)],
        ),
    ]


def test_markdown_plan_golden(models: dict[str, DesiredModel]) -> None:
    extras = PlanExtras(
        orphans=[{"name": "old-model", "provider": "roboflow", "last_training": "2026-01-01T00:00:00+00:00"}],
        max_trainings={"would_start": 25, "limit": 20},
    )
    doc = render_markdown(sample(models), extras)
    assert doc.splitlines()[0] == MARKER
    assert "`epochs: 100 -> 150`" in doc and "<details>" in doc
    golden("plan.md", doc)
    golden("plan-plain.md", render_markdown(sample(models)[3:4]))


@pytest.mark.parametrize(("output", "suffix"), [("text", "txt"), ("json", "json"), ("markdown", "md")])
def test_plan_over_max_trainings_golden(models: dict[str, DesiredModel], output: str, suffix: str) -> None:
    """`plan` when apply would refuse (one training, `--max-trainings 0`): said above the text
    table, as top-level `max_trainings` in JSON, as a quote in Markdown; nothing said within it."""
    over = Captured()
    assert PlanReport(output, over).planned(sample(models), max_trainings=0) == 1  # the sample has an error
    golden(f"plan-max-trainings.{suffix}", over.stdout[0])
    within = Captured()
    PlanReport(output, within).planned(sample(models), max_trainings=1)
    assert "would refuse" not in within.stdout[0] and "max_trainings" not in within.stdout[0]


def test_markdown_stays_under_the_comment_limit(models: dict[str, DesiredModel]) -> None:
    many = [plan_of(models["alpha"], Action.TRAIN, Reason("never-trained", "x" * 500)) for _ in range(400)]
    doc = render_markdown(many)
    assert len(doc) <= LIMIT
    assert doc.startswith(MARKER) and "longer than a comment may be" in doc


def test_annotations_golden(models: dict[str, DesiredModel], tmp: Path) -> None:
    problems = [Problem(str(tmp / "a,b:c.yaml"), 3, 5, "bad 100% value\r\nsecond line")]
    problems += [Problem(str(tmp / "many.yaml"), i, 1, f"problem {i}") for i in range(1, 13)]
    lines = annotation_lines([*problem_annotations(problems), *plan_annotations(sample(models))], tmp)
    golden("annotations.txt", "\n".join(lines))
    assert sum(line.startswith("::error ") for line in lines) == 10
    assert lines[-1] == "::notice::4 more errors not shown as annotations: see the log"
    assert any(line.startswith("::warning file=warned-100.yaml,line=") for line in lines)


def test_escaping() -> None:
    assert escape_data("a%b\rc\nd:e,f") == "a%25b%0Dc%0Ad:e,f"
    assert escape_property("a%b\rc\nd:e,f") == "a%25b%0Dc%0Ad%3Ae%2Cf"


def test_github_context_from_the_environment(tmp: Path) -> None:
    assert not github(None, {}).annotations
    assert github(None, {"GITHUB_ACTIONS": "true"}).annotations
    assert not github("none", {"GITHUB_ACTIONS": "true"}).annotations
    assert github("github", {}).annotations
    ctx = github(None, {"GITHUB_STEP_SUMMARY": str(tmp / "s.md"), "GITHUB_WORKSPACE": str(tmp)})
    assert ctx.step_summary == tmp / "s.md" and ctx.workspace == tmp


def test_plan_appends_the_step_summary_and_annotates(models: dict[str, DesiredModel], tmp: Path) -> None:
    summary = tmp / "summary.md"
    con = Captured()
    report = PlanReport("json", con, github=GitHub(annotations=True, workspace=tmp, step_summary=summary))
    assert report.planned(sample(models)) == 1  # an error: exit 1
    assert summary.read_text().startswith(MARKER)
    assert any(line.startswith("::error file=gamma-100.yaml") for line in con.stderr)
    assert len(con.stdout) == 1  # stdout keeps its one JSON document


def test_a_queued_spec_change_exits_2_and_says_so(models: dict[str, DesiredModel]) -> None:
    queued = sample(models)[1:2]
    assert plan_exit_code(queued) == 2
    assert plan_exit_code([plan_of(models["beta"], Action.WAIT, Reason("in-flight", "running"))]) == 0
    assert "trains once the current training ends" in render_plan(queued)
    assert "trains once the current training ends" in render_markdown(queued)
    entry = plan_document(queued)["models"][0]
    assert entry["action"] == "wait" and any(
        r["code"] == "spec-changed" and "trains once the current training ends" in r["detail"] for r in entry["reasons"]
    )
