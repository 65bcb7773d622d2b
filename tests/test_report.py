"""The report module in-process (no sandbox, no subprocess): every renderer's exact output and
every exit code decision, from hand-built plans."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime
from typing import Any

import click
import pytest
from test_plan import _model

from reconciler.domain import DesiredModel, HistoryEvent, ModelRecord, Observation, RecordStatus, TrainingStatus
from reconciler.errors import AuthError, ConfigError, ManifestError, Problem, ProviderError
from reconciler.outcomes import ApplyResult, TriggerOutcome
from reconciler.plan import Action, ModelPlan, Reason
from reconciler.report import FORMATS, renderer
from reconciler.report.base import Console, Renderer
from reconciler.report.commands import (
    AdoptReport,
    ApplyReport,
    HistoryReport,
    PlanReport,
    StatusReport,
    ValidateReport,
)
from reconciler.report.exits import apply_exit_code, plan_exit_code, status_exit_code
from reconciler.report.failures import Failure, report_failure
from reconciler.report.views import status_entry
from reconciler.slots import Phase, Tick, WaitResult
from reconciler.values import Change

AT = datetime(2026, 3, 1, 9, 30, 5, tzinfo=UTC)


class Captured(Console):
    """A console that keeps what was written."""

    def __init__(self) -> None:
        self.stdout: list[str] = []
        self.stderr: list[str] = []

    def out(self, text: str) -> None:
        self.stdout.append(text)

    def err(self, text: str) -> None:
        self.stderr.append(text)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, DesiredModel]:
    tmp = tmp_path_factory.mktemp("report")
    return {n: _model(tmp, n) for n in ("a", "bb", "hardhat-detector", "z-long-model-name")}


def tick(
    name: str,
    phase: Phase,
    observed: Observation | ProviderError | None,
    rec: ModelRecord | None,
    at: datetime = AT,
    **kw: Any,
) -> Tick:
    """What `slots.wait_for_all` tells the report about one model in one round."""
    return Tick(name, "roboflow", phase, at, observed, rec, **kw)


def plan_of(m: DesiredModel, action: Action, *reasons: Reason, **kw: object) -> ModelPlan:
    return ModelPlan(m, action, list(reasons), **kw)  # type: ignore[arg-type]


def record(name: str, status: RecordStatus, **kw: object) -> ModelRecord:
    return ModelRecord(name, "roboflow", "sha256:" + "0123456789abcdef" * 4, {}, status, **kw)  # type: ignore[arg-type]


@pytest.fixture
def mixed(models: dict[str, DesiredModel]) -> list[ModelPlan]:
    """One plan of most actions, deliberately out of name and action order."""
    return [
        plan_of(models["a"], Action.NONE),
        plan_of(
            models["z-long-model-name"],
            Action.TRAIN,
            Reason("spec-changed", "training.epochs: 100 -> 150"),
            changes=[Change("training.epochs", 100, 150), Change("training.classes", None, ["a", "b"])],
        ),
        plan_of(models["bb"], Action.TRAIN, Reason("never-trained", "no training recorded"), Reason("never-trained")),
        plan_of(
            models["hardhat-detector"],
            Action.HOLD,
            Reason("never-trained", ""),
            Reason("suspended", "policy.suspend is true"),
        ),
    ]


# ---------------------------------------------------------------- plan text and JSON


def test_plan_text_groups_by_action_in_order(mixed: list[ModelPlan]) -> None:
    out = renderer("text").plan(mixed)
    assert out.splitlines() == [
        "train (2):",
        "  bb                 roboflow   never-trained: no training recorded",
        '  z-long-model-name  roboflow   spec-changed  epochs: 100 -> 150; classes: null -> ["a", "b"]',
        "hold (1):",
        "  hardhat-detector  roboflow   never-trained; suspended: policy.suspend is true",
        "none (1):",
        "  a  roboflow   in sync",
        "Plan: 2 train, 1 hold, 1 none.",
    ]


def test_plan_text_error_first_and_empty(models: dict[str, DesiredModel]) -> None:
    err = plan_of(models["a"], Action.ERROR, Reason("auth-failed", "401"))
    wait = plan_of(models["bb"], Action.WAIT, Reason("in-flight", "running, 40%"))
    retry = plan_of(models["hardhat-detector"], Action.RETRY, Reason("training-failed", "attempt 1 failed"))
    train = plan_of(models["z-long-model-name"], Action.TRAIN, Reason("expired", ""))
    hold = plan_of(models["a"], Action.HOLD, Reason("backoff", "next attempt after 10:00"))
    assert renderer("text").plan([hold, wait, retry, train, err]).splitlines() == [
        "error (1):",
        "  a  roboflow   auth-failed: 401",
        "train (1):",
        "  z-long-model-name  roboflow   expired",
        "retry (1):",
        "  hardhat-detector  roboflow   training-failed: attempt 1 failed",
        "wait (1):",
        "  bb  roboflow   in-flight: running, 40%",
        "hold (1):",
        "  a  roboflow   backoff: next attempt after 10:00",
        "Plan: 1 error, 1 train, 1 retry, 1 wait, 1 hold.",
    ]
    assert renderer("text").plan([]) == "Plan: no models."


def test_plan_json_shape(mixed: list[ModelPlan]) -> None:
    doc = json.loads(renderer("json").plan(mixed))
    assert list(doc) == ["format_version", "models", "summary", "orphans"]
    assert doc["format_version"] == 1 and doc["orphans"] == []
    assert [m["name"] for m in doc["models"]] == ["a", "bb", "hardhat-detector", "z-long-model-name"]
    assert all(list(m) == ["name", "provider", "action", "reasons", "changes"] for m in doc["models"])
    assert doc["models"][3] == {
        "name": "z-long-model-name",
        "provider": "roboflow",
        "action": "train",
        "reasons": [{"code": "spec-changed", "detail": "training.epochs: 100 -> 150"}],
        "changes": [
            {"path": "training.epochs", "before": 100, "after": 150},
            {"path": "training.classes", "before": None, "after": ["a", "b"]},
        ],
    }
    assert doc["summary"] == {"none": 1, "train": 2, "hold": 1}


def test_plan_report_exit_code_and_errors_document() -> None:
    con = Captured()
    problems = [Problem("a.yaml", 4, 3, "spec.model: field required"), Problem("b.yaml", 1, 1, "bad")]
    assert PlanReport("json", con).failed(ManifestError(problems)) == 1
    (doc,) = con.stdout
    assert json.loads(doc) == {
        "format_version": 1,
        "models": [],
        "summary": {},
        "orphans": [],
        "errors": ["a.yaml:4:3: spec.model: field required", "b.yaml:1:1: bad"],
    }
    assert con.stderr == ["a.yaml:4:3: spec.model: field required", "b.yaml:1:1: bad"]
    # text has no error document: main() reports the error
    text = Captured()
    with pytest.raises(ConfigError):
        PlanReport("text", text).failed(ConfigError("no key"))
    assert text.stdout == text.stderr == []


# ---------------------------------------------------------------- exit codes

ACTIONS = list(Action)


@pytest.mark.parametrize(
    ("actions", "code"),
    [
        ((), 0),
        ((Action.NONE,), 0),
        ((Action.WAIT, Action.HOLD, Action.NONE), 0),
        ((Action.TRAIN,), 2),
        ((Action.RETRY, Action.HOLD), 2),
        ((Action.NONE, Action.TRAIN), 2),
        ((Action.ERROR,), 1),
        ((Action.TRAIN, Action.ERROR), 1),
        ((Action.RETRY, Action.ERROR, Action.NONE), 1),
    ],
)
def test_plan_exit_codes(models: dict[str, DesiredModel], actions: tuple[Action, ...], code: int) -> None:
    m = models["a"]
    plans = [plan_of(m, a) for a in actions]
    assert plan_exit_code(plans) == code
    assert PlanReport("json", Captured()).planned(plans) == code
    assert PlanReport("text", Captured()).planned(plans) == code


def test_plan_exit_code_every_combination(models: dict[str, DesiredModel]) -> None:
    m = models["a"]
    for n in range(len(ACTIONS) + 1):
        for combo in itertools.combinations(ACTIONS, n):
            expected = 1 if Action.ERROR in combo else 2 if {Action.TRAIN, Action.RETRY} & set(combo) else 0
            assert plan_exit_code([plan_of(m, a) for a in combo]) == expected, combo


def test_status_and_apply_exit_codes(models: dict[str, DesiredModel]) -> None:
    ok = plan_of(models["a"], Action.TRAIN)
    err = plan_of(models["bb"], Action.ERROR, error=AuthError("401", provider="roboflow"))
    assert status_exit_code([ok]) == 0
    assert status_exit_code([ok, err]) == 1
    started = TriggerOutcome("a", True)
    held = TriggerOutcome("a", False, "429", held=True)
    refused = TriggerOutcome("a", False, "400")
    assert apply_exit_code([ok], [started]) == 0
    assert apply_exit_code([ok], [held]) == 0  # the provider holds it: not a failure
    assert apply_exit_code([ok], [refused]) == 1
    assert apply_exit_code([ok, err], [started]) == 1
    assert apply_exit_code([ok], [started], [record("a", RecordStatus.SUCCEEDED)]) == 0
    assert apply_exit_code([ok], [started], [record("a", RecordStatus.FAILED)]) == 1
    assert apply_exit_code([ok], [started], [None]) == 1


# ---------------------------------------------------------------- status


def test_status_table_alignment(models: dict[str, DesiredModel]) -> None:
    running = Observation(TrainingStatus.RUNNING, provider_state="training", progress=0.4)
    done = Observation(TrainingStatus.SUCCEEDED, provider_state="", trained_at=AT)
    plans = [
        plan_of(
            models["z-long-model-name"],
            Action.WAIT,
            observation=running,
            record=record("z-long-model-name", RecordStatus.TRAINING, triggered_at=AT),
        ),
        plan_of(models["a"], Action.NONE, observation=done, record=record("a", RecordStatus.SUCCEEDED, finished_at=AT)),
        plan_of(
            models["bb"],
            Action.ERROR,
            error=AuthError("HTTP 401 unauthorized", provider="roboflow"),
        ),
    ]
    con = Captured()
    assert StatusReport("text", con).shown(plans) == 1
    assert con.stdout[0].splitlines() == [
        # every column as wide as its longest cell: the error whole, NEXT aligned (issue 13)
        "NAME               PROVIDER  OBSERVED                         LAST TRAINING               NEXT",
        "a                  roboflow  succeeded                        succeeded 2026-03-01T09:30  none",
        "bb                 roboflow  roboflow: HTTP 401 unauthorized  -                           error",
        "z-long-model-name  roboflow  training 40%                     training 2026-03-01T09:30   wait",
    ]
    empty = Captured()
    assert StatusReport("text", empty).shown([]) == 0
    assert empty.stdout == ["NAME  PROVIDER  OBSERVED  LAST TRAINING  NEXT"]


def test_status_next_column_gives_every_reason(models: dict[str, DesiredModel]) -> None:
    failed = Observation(TrainingStatus.FAILED, provider_state="failed", message="out of GPUs")
    long_error = AuthError("HTTP 401 unauthorized: the key in ROBOFLOW_API_KEY was refused", provider="roboflow")
    plans = [
        plan_of(
            models["a"],
            Action.HOLD,
            Reason("training-failed", "attempt 2 failed: out of GPUs"),
            Reason("backoff", "next attempt after 2026-03-01T10:00:00+00:00"),
            observation=failed,
            record=record("a", RecordStatus.FAILED, finished_at=AT),
        ),
        plan_of(models["bb"], Action.ERROR, Reason("auth-failed", str(long_error)), error=long_error),
    ]
    con = Captured()
    StatusReport("text", con).shown(plans)
    lines = con.stdout[0].splitlines()
    assert lines[1].endswith(
        "hold  training-failed: attempt 2 failed: out of GPUs; backoff: next attempt after 2026-03-01T10:00:00+00:00"
    )
    assert str(long_error) in lines[2] and lines[2].endswith("error  auth-failed")
    assert len({line.index(word) for line, word in zip(lines, ["NEXT", "hold", "error"], strict=True)}) == 1


def test_status_json_failed_prints_errors_document() -> None:
    con = Captured()
    problems = [Problem("a.yaml", 4, 3, "spec.model: field required")]
    assert StatusReport("json", con).failed(ManifestError(problems)) == 1
    assert json.loads(con.stdout[0]) == {
        "format_version": 1,
        "models": [],
        "errors": ["a.yaml:4:3: spec.model: field required"],
    }
    assert con.stderr == ["a.yaml:4:3: spec.model: field required"]


def test_plan_text_shows_every_reason_with_its_detail(models: dict[str, DesiredModel]) -> None:
    retry = plan_of(
        models["a"],
        Action.HOLD,
        Reason("training-failed", "attempt 2 failed"),
        Reason("backoff", "next attempt after 10:00"),
    )
    exhausted = plan_of(
        models["bb"],
        Action.HOLD,
        Reason("training-failed", "attempt 4 failed"),
        Reason("retries-exhausted", "change the spec or raise max_retries to try again"),
    )
    changed = plan_of(
        models["hardhat-detector"],
        Action.TRAIN,
        Reason("spec-changed", "training.epochs: 100 -> 150"),
        Reason("data-changed", "2 images added"),
        changes=[Change("training.epochs", 100, 150)],
    )
    lines = renderer("text").plan([retry, exhausted, changed]).splitlines()
    assert "  a   roboflow   training-failed: attempt 2 failed; backoff: next attempt after 10:00" in lines
    assert (
        "  bb  roboflow   training-failed: attempt 4 failed; "
        "retries-exhausted: change the spec or raise max_retries to try again"
    ) in lines
    assert "  hardhat-detector  roboflow   spec-changed; data-changed: 2 images added  epochs: 100 -> 150" in lines


def test_status_json_is_the_daemon_status_entry(models: dict[str, DesiredModel]) -> None:
    obs = Observation(TrainingStatus.RUNNING, provider_state="training", progress=0.41234, message="epoch 4")
    p = plan_of(
        models["a"],
        Action.WAIT,
        Reason("in-flight", "training, 41%"),
        observation=obs,
        record=record("a", RecordStatus.TRAINING),
    )
    con = Captured()
    StatusReport("json", con).shown([p])
    doc = json.loads(con.stdout[0])
    (entry,) = doc["models"]
    assert doc["format_version"] == 1
    assert list(entry) == ["name", "provider", "action", "reasons", "changes", "observed", "last_training"]
    assert entry["observed"] == {"status": "running", "state": "training", "progress": 0.412, "message": "epoch 4"}
    assert entry["last_training"]["status"] == "training" and entry["last_training"]["attempts"] == 0
    assert entry == json.loads(json.dumps(status_entry(p)))
    from reconciler.daemon import app

    assert vars(app)["status_entry"] is status_entry  # /status renders with the same function


# ---------------------------------------------------------------- history


def events() -> list[HistoryEvent]:
    fp = "sha256:03268fa098ff1234567890"
    return [
        HistoryEvent("m", "intent", "never-trained", fp, {"action": "train"}, git_commit="abcdef0123456789", at=AT),
        HistoryEvent("m", "triggered", "never-trained", fp, {"message": "Training started"}, at=AT),
        HistoryEvent("m", "failed", "training-failed", fp, {"detail": "out of GPUs"}),
    ]


def test_history_lines() -> None:
    con = Captured()
    assert HistoryReport("text", con).shown("m", events()) == 0
    assert con.stdout[0].split("\n") == [
        "2026-03-01 09:30:05  intent       never-trained        03268fa098ff @abcdef01",
        "2026-03-01 09:30:05  triggered    never-trained        03268fa098ff  Training started",
        "?  failed       training-failed      03268fa098ff  out of GPUs",
    ]
    none = Captured()
    assert HistoryReport("text", none).shown("nope", []) == 1
    assert none.stdout == [] and none.stderr == ["no history for 'nope' in this state"]


def test_history_json() -> None:
    con = Captured()
    assert HistoryReport("json", con).shown("m", events()) == 0
    doc = json.loads(con.stdout[0])
    assert doc["format_version"] == 1 and doc["model"] == "m"
    assert doc["events"][0] == {
        "at": "2026-03-01T09:30:05+00:00",
        "event": "intent",
        "reason": "never-trained",
        "fingerprint": "sha256:03268fa098ff1234567890",
        "git_commit": "abcdef0123456789",
        "detail": {"action": "train"},
    }
    assert doc["events"][2]["at"] is None
    empty = Captured()
    assert HistoryReport("json", empty).shown("nope", []) == 0  # JSON always prints its document
    assert json.loads(empty.stdout[0])["events"] == []


# ---------------------------------------------------------------- apply


def test_apply_text_outcomes_progress_and_exit(models: dict[str, DesiredModel]) -> None:
    plans = [plan_of(models["a"], Action.TRAIN), plan_of(models["bb"], Action.TRAIN)]
    result = ApplyResult(
        plans,
        {"bb": TriggerOutcome("bb", False, "HTTP 400"), "a": TriggerOutcome("a", True, "training started")},
        adopted=["hardhat-detector"],
    )
    con = Captured()
    report = ApplyReport("text", con, wait=True)
    report.planned(plans)
    assert con.stdout == [renderer("text").plan(plans)]
    report.applied(result)
    running = Observation(TrainingStatus.RUNNING, provider_state="training", progress=0.5)
    report.ticks([tick("a", Phase.RUNNING, running, record("a", RecordStatus.TRAINING))])
    report.ticks([tick("a", Phase.RUNNING, running, record("a", RecordStatus.TRAINING))])  # unchanged: not repeated
    report.ticks([tick("a", Phase.RUNNING, Observation(TrainingStatus.RUNNING), None)])
    report.ticks([tick("a", Phase.RUNNING, AuthError("HTTP 401", provider="roboflow"), None)])
    failed = record("a", RecordStatus.FAILED)
    report.ticks([tick("a", Phase.ENDED, Observation(TrainingStatus.FAILED, message="out of GPUs"), failed)])
    report.waited(WaitResult(followed=["a"], final={"a": failed}))
    assert report.finish() == 1
    assert con.stderr == [
        "a: training started",
        "bb: not started (HTTP 400)",
        "hardhat-detector: adopted the provider's model as matching the spec",
        "a: training 50%",
        "a: running",
        "a: error: roboflow: HTTP 401",
        "a: failed: out of GPUs",
        "a: training did not succeed (failed)",
    ]
    assert len(con.stdout) == 1  # text prints nothing more at the end


def test_apply_json_document(models: dict[str, DesiredModel]) -> None:
    plans = [plan_of(models["a"], Action.TRAIN), plan_of(models["bb"], Action.NONE)]
    result = ApplyResult(plans, {"a": TriggerOutcome("a", False, "429", held=True)})
    con = Captured()
    report = ApplyReport("json", con)
    report.planned(plans)
    assert con.stdout == []  # one document, at the end
    report.applied(result)
    assert report.finish() == 0
    assert con.stderr == ["a: held by the provider (429)"]
    doc = json.loads(con.stdout[0])
    assert list(doc) == ["format_version", "models", "summary", "outcomes"]
    assert doc["outcomes"] == {"a": {"started": False, "detail": "429", "ambiguous": False, "held": True}}
    waited = Captured()
    report = ApplyReport("json", waited, wait=True)
    report.planned(plans)
    report.applied(ApplyResult(plans, {"a": TriggerOutcome("a", True, "ok")}))
    report.followed(["a"], {"a": record("a", RecordStatus.SUCCEEDED)})
    assert report.finish() == 0
    assert waited.stderr == ["a: training started"]
    assert json.loads(waited.stdout[0])["final"] == {"a": "succeeded"}


# ---------------------------------------------------------------- validate, adopt, failures, formats


def test_validate_output() -> None:
    text, js = Captured(), Captured()
    assert ValidateReport("text", text).valid({"b": 1, "a": 2}, {"roboflow": 0}) == 0
    assert text.stdout == ["2 models, 1 providers: valid"]
    assert ValidateReport("json", js).valid({"b": 1, "a": 2}, {"roboflow": 0}) == 0
    assert js.stdout == [
        '{\n  "valid": true,\n  "models": [\n    "a",\n    "b"\n  ],\n  "providers": [\n    "roboflow"\n  ]\n}'
    ]


def test_adopt_line() -> None:
    con = Captured()
    assert AdoptReport(console=con).adopted("m") == 0
    assert con.stdout == ["m: adopted; the provider's model is now recorded as matching the spec"]


def test_failures_map_to_stderr_and_exit_codes() -> None:
    con = Captured()
    problems = [Problem("b.yaml", 4, 1, "spec.model: missing"), Problem("a.yaml", 2, 7, "bad name")]
    assert report_failure(ManifestError(problems), con) == 1
    assert con.stderr == ["a.yaml:2:7: bad name", "b.yaml:4:1: spec.model: missing", "2 problems found"]
    one = Captured()
    assert report_failure(ManifestError(problems[:1]), one) == 1
    assert one.stderr[-1] == "1 problem found"
    other = Captured()
    assert report_failure(Failure("cannot adopt m: no model"), other) == 1
    assert report_failure(ConfigError("ROBOFLOW_API_KEY is not set"), other) == 1
    assert report_failure(click.exceptions.Abort(), other) == 1
    assert other.stderr == ["error: cannot adopt m: no model", "error: ROBOFLOW_API_KEY is not set", "aborted"]
    assert report_failure(click.exceptions.Exit(0), Captured()) == 0
    assert report_failure(KeyboardInterrupt(), Captured()) == 130
    assert report_failure(click.UsageError("no such option"), Captured()) == 1  # never 2
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        report_failure(ZeroDivisionError(), Captured())


def test_every_format_has_a_renderer() -> None:
    assert FORMATS == ("text", "json", "markdown")  # markdown: issue 11 (plan only)
    for fmt in FORMATS:
        assert isinstance(renderer(fmt), Renderer)
    with pytest.raises(ValueError, match="unknown output format"):
        renderer("yaml")
