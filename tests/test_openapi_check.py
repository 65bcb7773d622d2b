"""tools/openapi_check.py: the spec's defects it repairs, the refusals it lets through, and (with
schemathesis installed, the `check` extra) that a run flags a response the spec does not allow.

The specs here are small ones written for these tests, not PredictHQ's file (which is not in the
repository).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml


def _load_tool() -> ModuleType:
    path = Path(__file__).resolve().parent.parent / "tools" / "openapi_check.py"
    spec = importlib.util.spec_from_file_location("openapi_check", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["openapi_check"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


tool = _load_tool()

ERROR = {"$ref": "#/components/schemas/ErrorResponse"}
VALIDATION = {"$ref": "#/components/schemas/HTTPValidationError"}
QUERY = {"$ref": "#/components/schemas/QueryValidationError"}


def _bad_request(*schemas: dict[str, str]) -> dict[str, Any]:
    return {
        "400": {"description": "Bad Request", "content": {"application/json": {"schema": {"oneOf": list(schemas)}}}}
    }


def test_patched_spec_repairs_the_three_schema_defects_and_nothing_else() -> None:
    raw: dict[str, Any] = {
        "paths": {
            "/demand": {
                "post": {
                    "parameters": [
                        {"name": "model_id", "in": "path", "required": True, "schema": {"type": "string"}},
                        {"name": "Content-Type", "in": "header", "required": True, "schema": {"type": "string"}},
                    ],
                    "responses": _bad_request(ERROR, VALIDATION),
                },
                "get": {"responses": _bad_request(VALIDATION, QUERY)},
            }
        },
        "components": {
            "parameters": {
                "LimitParam": {"name": "limit", "in": "query", "schema": {"type": "integer", "default": 10}},
                "OffsetParam": {"name": "offset", "in": "query", "schema": {"type": "integer"}},
            }
        },
    }
    before = yaml.safe_dump(raw)
    spec = tool.patched_spec(raw)
    assert yaml.safe_dump(raw) == before  # a copy: the loaded file is left as it was
    post = spec["paths"]["/demand"]["post"]
    assert [p["name"] for p in post["parameters"]] == ["model_id"]
    assert post["responses"]["400"]["content"]["application/json"]["schema"] == {"anyOf": [ERROR, VALIDATION]}
    # the two QueryValidationError alternatives differ in `error`'s type: that oneOf holds
    get = spec["paths"]["/demand"]["get"]
    assert get["responses"]["400"]["content"]["application/json"]["schema"] == {"oneOf": [VALIDATION, QUERY]}
    params = spec["components"]["parameters"]
    assert params["LimitParam"]["schema"] == {"type": "integer", "default": 10, "minimum": 0}
    assert params["OffsetParam"]["schema"]["minimum"] == 0


@pytest.mark.parametrize(
    ("status", "body", "media_type", "phase", "reason"),
    [
        (400, {"error": "Saved Location not found"}, "application/json", "fuzzing", "business-logic error"),
        (
            400,
            {"error": "x", "details": [{"field": "query.limit/offset", "msg": "Tried to fetch more", "type": "v"}]},
            None,
            "coverage",
            "pagination cap",
        ),
        (
            400,
            {"error": "x", "details": [{"field": "body.demand[1].date", "msg": "Duplicate date 2024-01-01"}]},
            "application/json",
            "fuzzing",
            "duplicate date",
        ),
        (
            400,
            {"error": "x", "details": [{"field": "body.demand[0].date", "msg": "Date should be between a and b"}]},
            "application/json",
            "fuzzing",
            "demand date window",
        ),
        (
            400,
            {"error": "x", "details": [{"field": "body", "msg": "bad ndjson"}]},
            "text/csv",
            "fuzzing",
            "unstructured text body",
        ),
        # the spec's own example bodies must be accepted
        (400, {"error": "x", "details": [{"field": "body", "msg": "bad ndjson"}]}, "text/csv", "examples", None),
        # a validation error of a schema-valid field is a real mismatch
        (400, {"error": "x", "details": [{"field": "body.external_id", "msg": "too short"}]}, None, "fuzzing", None),
        (
            400,
            {
                "error": "x",
                "details": [
                    {"field": "query.limit/offset", "msg": "Tried"},
                    {"field": "body.name", "msg": "String should have at least 1 character"},
                ],
            },
            None,
            "fuzzing",
            None,
        ),
        (500, {"error": "boom"}, None, "fuzzing", None),
        (
            400,
            {"error": [{"field": "limit", "msg": "Input should be greater than or equal to 0"}]},
            None,
            "fuzzing",
            None,
        ),
    ],
)
def test_documented_refusal_lets_through_exactly_what_predicthq_documents(
    status: int, body: Any, media_type: str | None, phase: str, reason: str | None
) -> None:
    assert tool.documented_refusal(status, body, media_type, phase) == reason


MINI_SPEC = """\
openapi: 3.1.0
info: {title: mini, version: "1"}
paths:
  /v1/forecasts/models/{model_id}:
    get:
      operationId: get_model
      parameters:
        - {name: model_id, in: path, required: true, schema: {type: string}}
      responses:
        "200":
          description: ok
          content:
            application/json:
              schema:
                type: object
                required: [model]
                properties:
                  model:
                    type: object
                    required: [model_id, colour]
                    properties:
                      model_id: {type: string}
                      colour: {type: string}
        "404":
          description: no such model
          content:
            application/json:
              schema: {type: object, required: [error], properties: {error: {type: string}}}
"""


def test_a_run_flags_what_the_spec_does_not_allow(tmp_path: Path) -> None:
    pytest.importorskip("schemathesis", reason="needs the check extra")
    spec = tmp_path / "mini.yaml"
    spec.write_text(MINI_SPEC, encoding="utf-8")
    tally = tool.run(spec, max_examples=5, deadline=60, operations=("get_model",))
    assert not tally.ok and not tally.errors
    label = "GET /v1/forecasts/models/{model_id}"
    # the simulator's model has no colour; and the mini spec leaves out PATCH, PUT and DELETE,
    # which the simulator serves instead of answering 405
    assert {"response_schema_conformance", "unsupported_method"} <= set(tally.failed[label])
    assert "colour" in tally.examples[(label, "response_schema_conformance", "Response violates schema")]
    assert tally.passed[label] > 0


def test_main_refuses_to_run_without_a_spec(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(tool.SPEC_ENV, raising=False)
    with pytest.raises(SystemExit) as exited:
        tool.main([])
    assert exited.value.code == 2
    assert "pass --spec PATH or set RECONCILER_PHQ_OPENAPI_SPEC" in capsys.readouterr().err
