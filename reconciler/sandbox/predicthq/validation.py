"""PredictHQ request validation: the enums, the error bodies and the field checks that answer
`HTTPValidationError` / `QueryValidationError` shapes [D] (providers.md section 1)."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Set
from datetime import date, timedelta
from typing import Any

from reconciler.sandbox.wire import SimHTTPError, SimRequest

ALGOS: tuple[str, ...] = ("phq-xgboost",)
FORECAST_WINDOWS: tuple[str, ...] = ("1d", "7d", "14d", "28d", "30d", "60d", "90d")
INDUSTRIES: tuple[str, ...] = (
    "accommodation",
    "cpg",
    "tourism",
    "marketing",
    "parking",
    "restaurants",
    "retail",
    "transportation",
    "other",
)
INTERVALS: tuple[str, ...] = ("day",)
READINESS_STATUSES: tuple[str, ...] = ("created", "preparing", "training", "forecasting", "ready", "stale", "failed")

UNAUTHORIZED_BODY: dict[str, Any] = {"error": "Authorization required"}  # [D]
MODEL_NOT_FOUND: dict[str, Any] = {"error": "Model not found"}  # [D]
LOCATION_NOT_FOUND: dict[str, Any] = {"error": "Saved Location not found"}  # [D]
INVALID_DATA = "Request contains invalid data"  # [D]
NO_DEMAND_MESSAGE = "Model has no demand data; upload demand before training"  # [I] undocumented wording

DEFAULT_LIMIT = 10  # [D]
MAX_DEPTH = 1000  # [I] "the maximum depth is set per plan"


def bad_request(message: str) -> SimHTTPError:
    return SimHTTPError(400, {"error": message})


def state_conflict(status: str, what: str) -> SimHTTPError:
    # [D] e.g. "Current model readiness state is 'preparing', which doesn't allow triggering training"
    return bad_request(f"Current model readiness state is '{status}', which doesn't allow {what}")


def one_of(values: tuple[str, ...]) -> str:
    quoted = [f"'{v}'" for v in values]
    return "Input should be " + (", ".join(quoted[:-1]) + " or " + quoted[-1] if len(quoted) > 1 else quoted[0])


class Invalid:
    """Collects HTTPValidationError details: `{"error": ..., "details": [{field, msg, type}]}` [D]."""

    def __init__(self) -> None:
        self.details: list[dict[str, str]] = []

    def add(self, field: str, msg: str, type_: str) -> None:
        self.details.append({"field": field, "msg": msg, "type": type_})

    def check(self) -> None:
        if self.details:
            raise SimHTTPError(400, {"error": INVALID_DATA, "details": self.details})


def query_invalid(field: str, msg: str, type_: str) -> SimHTTPError:
    # [D] QueryValidationError: "error" holds the list
    return SimHTTPError(400, {"error": [{"field": field, "msg": msg, "type": type_}]})


def check_str(errs: Invalid, field: str, value: Any, *, min_length: int = 0) -> None:
    if not isinstance(value, str):
        errs.add(field, "Input should be a valid string", "string_type")
    elif len(value) < min_length:
        errs.add(field, f"String should have at least {min_length} character", "string_too_short")


def check_enum(errs: Invalid, field: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        errs.add(field, one_of(allowed), "literal_error" if len(allowed) == 1 else "enum")


def check_object(errs: Invalid, field: str, value: Any, allowed: Set[str], required: Set[str]) -> bool:
    if not isinstance(value, dict):
        errs.add(field, "Input should be a valid dictionary or object to extract fields from", "model_attributes_type")
        return False
    for key in sorted(set(value) - allowed):
        errs.add(f"{field}.{key}", "Extra inputs are not permitted", "extra_forbidden")
    for key in sorted(required - set(value)):
        errs.add(f"{field}.{key}", "Field required", "missing")
    return True


def validate_model_body(
    body: Any, *, allowed: Set[str], required: Set[str], nullable: Set[str] = frozenset()
) -> dict[str, Any]:
    """Validate a Create/Replace/UpdateModelRequest (additionalProperties=false) [D].

    `nullable`: the fields this request accepts as null (each request has its own set [D]). The
    nested `location` and `demand_type` allow extra keys [D]; they are dropped, as a server that
    ignores them would [I].
    """
    errs = Invalid()
    if not check_object(errs, "body", body, allowed, required):
        errs.check()
    assert isinstance(body, dict)
    for key, value in body.items():
        field = f"body.{key}"
        if key not in allowed or (value is None and key in nullable):
            continue
        if key == "name":
            check_str(errs, field, value, min_length=1)
        elif key == "location":
            location_ok = check_object(errs, field, value, set(value) if isinstance(value, dict) else set(), set())
            if location_ok and "saved_location_id" not in value:
                errs.add(f"{field}.saved_location_id", "Field required", "missing")
            elif location_ok:
                check_str(errs, f"{field}.saved_location_id", value["saved_location_id"], min_length=1)
        elif key == "algo":
            check_enum(errs, field, value, ALGOS)
        elif key == "forecast_window":
            check_enum(errs, field, value, FORECAST_WINDOWS)
        elif key == "demand_type":
            # [D] industry is optional (but not nullable); interval defaults to day
            if check_object(errs, field, value, set(value) if isinstance(value, dict) else set(), set()):
                if "industry" in value:
                    check_enum(errs, f"{field}.industry", value["industry"], INDUSTRIES)
                if "interval" in value:
                    check_enum(errs, f"{field}.interval", value["interval"], INTERVALS)
        elif key == "label":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                errs.add(field, "Input should be a valid list of strings", "list_type")
            elif not value:
                errs.add(field, "List should have at least 1 item after validation, not 0", "too_short")
            else:
                for i, item in enumerate(value):
                    check_str(errs, f"{field}[{i}]", item, min_length=1)  # [D] minLength 1
        elif key == "external_id":
            check_str(errs, field, value, min_length=1)  # [D] minLength 1
        elif key == "generate_baseline" and not isinstance(value, bool):
            errs.add(field, "Input should be a valid boolean", "bool_type")
    errs.check()
    out = dict(body)
    if isinstance(out.get("location"), dict):
        out["location"] = {"saved_location_id": out["location"]["saved_location_id"]}
    if isinstance(out.get("demand_type"), dict):
        given = out["demand_type"]
        out["demand_type"] = {"interval": given.get("interval", "day"), "industry": given.get("industry")}
    return out


#: [D] SavedLocation request fields (the SDK sends geojson; the Forecasts guide origin_geojson)
LOCATION_FIELDS = frozenset(
    {
        "name",
        "description",
        "labels",
        "location_code",
        "formatted_address",
        "geojson",
        "origin_geojson",
        "place_ids",
        "industry",
        "external_id",
    }
)
GEOMETRY_TYPES: tuple[str, ...] = ("Point", "Polygon", "MultiPolygon")


def check_feature(errs: Invalid, field: str, value: Any) -> None:
    """A GeoJSON Feature whose geometry is a Point, Polygon or MultiPolygon [D]."""
    if not isinstance(value, dict) or value.get("type") != "Feature":
        errs.add(f"{field}.type", "Input should be 'Feature'", "literal_error")
        return
    geometry = value.get("geometry")
    if not isinstance(geometry, dict) or geometry.get("type") not in GEOMETRY_TYPES:
        errs.add(f"{field}.geometry", one_of(GEOMETRY_TYPES), "union_tag_invalid")
    elif not isinstance(geometry.get("coordinates"), list):
        errs.add(f"{field}.geometry.coordinates", "Input should be a valid list", "list_type")


#: [D] the fields of DemandInput (additionalProperties=false)
DEMAND_FIELDS = frozenset({"date", "demand"})


def _demand_row(errs: Invalid, i: int, row: Any) -> tuple[int, Any, Any] | None:
    if not isinstance(row, dict):
        errs.add(
            f"body.demand[{i}]",
            "Input should be a valid dictionary or object to extract fields from",
            "model_attributes_type",
        )
        return None
    for key in sorted(set(row) - DEMAND_FIELDS):
        errs.add(f"body.demand[{i}].{key}", "Extra inputs are not permitted", "extra_forbidden")
    return (i, row.get("date"), row.get("demand"))


def parse_demand_rows(req: SimRequest) -> list[tuple[int, Any, Any]]:
    """(index, date, demand) rows from a json, csv or ndjson upload [D]."""
    ctype = req.content_type
    if ctype == "application/json":
        body = req.json()
        errs = Invalid()
        if check_object(errs, "body", body, {"demand"}, {"demand"}):
            rows = body.get("demand")
            if "demand" in body and (not isinstance(rows, list) or not rows):
                errs.add("body.demand", "List should have at least 1 item after validation, not 0", "too_short")
        errs.check()
        errs = Invalid()
        rows_out = [_demand_row(errs, i, row) for i, row in enumerate(body["demand"])]
        errs.check()
        return [r for r in rows_out if r is not None]
    text = req.body.decode("utf-8", "replace")
    if ctype == "text/csv":
        reader = csv.DictReader(io.StringIO(text))
        if [f.strip() for f in reader.fieldnames or []] != ["date", "demand"]:
            raise SimHTTPError(
                400,
                {
                    "error": INVALID_DATA,
                    "details": [{"field": "body", "msg": "CSV header must be 'date,demand'", "type": "value_error"}],
                },
            )
        return [(i, row.get("date"), _number_or_text(row.get("demand"))) for i, row in enumerate(reader)]
    if ctype == "application/x-ndjson":
        if text.strip().startswith('"'):
            # [D] the spec's ndjson body is `type: string`: a generated client sends the lines as
            # one JSON-quoted string. Plain NDJSON lines are accepted too.
            try:
                quoted = json.loads(text)
            except ValueError:
                quoted = None
            if not isinstance(quoted, str):
                raise SimHTTPError(
                    400,
                    {
                        "error": INVALID_DATA,
                        "details": [{"field": "body", "msg": "Invalid JSON string", "type": "json_invalid"}],
                    },
                )
            text = quoted
        out: list[tuple[int, Any, Any]] = []
        errs = Invalid()
        for i, line in enumerate(x for x in text.splitlines() if x.strip()):
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if not isinstance(row, dict):
                raise SimHTTPError(
                    400,
                    {
                        "error": INVALID_DATA,
                        "details": [{"field": f"body.demand[{i}]", "msg": "Invalid JSON line", "type": "json_invalid"}],
                    },
                )
            parsed = _demand_row(errs, i, row)
            if parsed is not None:
                out.append(parsed)
        errs.check()
        return out
    # [I] the spec lists exactly these three media types
    raise bad_request(f"Unsupported Content-Type {ctype!r}: use application/json, text/csv or application/x-ndjson")


def _number_or_text(value: str | None) -> Any:
    if value is None or not value.strip():
        return None
    try:
        return float(value)
    except ValueError:
        return value


#: [I] the window of Beam's demand upload docs ("between 2017-01-01 and one year into the future
#: from today's date"); the Forecasts docs give none
EARLIEST_DEMAND_DATE = date(2017, 1, 1)
DEMAND_DAYS_AHEAD = 365


def validate_demand(rows: list[tuple[int, Any, Any]], today: date) -> dict[str, float]:
    """Daily rows with no duplicate dates, no missing values and numeric demand >= 0 [D guide],
    dated from EARLIEST_DEMAND_DATE to a year after `today` [I]."""
    latest = today + timedelta(days=DEMAND_DAYS_AHEAD)
    errs = Invalid()
    if not rows:
        errs.add("body.demand", "List should have at least 1 item after validation, not 0", "too_short")
    parsed: dict[str, float] = {}
    for i, raw_date, raw_demand in rows:
        field = f"body.demand[{i}]"
        day = None
        if isinstance(raw_date, str):
            try:
                day = date.fromisoformat(raw_date) if len(raw_date) == 10 else None
            except ValueError:
                day = None
        if raw_date is None:
            errs.add(f"{field}.date", "Field required", "missing")
        elif day is None:
            errs.add(f"{field}.date", "Input should be a valid date in the format YYYY-MM-DD", "date_parsing")
        elif not EARLIEST_DEMAND_DATE <= day <= latest:
            errs.add(f"{field}.date", f"Date should be between {EARLIEST_DEMAND_DATE} and {latest}", "value_error")
            day = None
        if raw_demand is None:
            errs.add(f"{field}.demand", "Field required", "missing")
        elif isinstance(raw_demand, bool) or not isinstance(raw_demand, int | float) or not math.isfinite(raw_demand):
            errs.add(f"{field}.demand", "Input should be a valid number", "float_parsing")
        elif raw_demand < 0:
            errs.add(f"{field}.demand", "Input should be greater than or equal to 0", "greater_than_equal")
        if day is not None:
            key = day.isoformat()
            if key in parsed:
                errs.add(f"{field}.date", f"Duplicate date {key}", "value_error")
            elif isinstance(raw_demand, int | float) and not isinstance(raw_demand, bool):
                parsed[key] = float(raw_demand)
    errs.check()
    return parsed


def list_query(req: SimRequest, name: str) -> list[str] | None:
    """Every value of an array query parameter: repeated (`?a=x&a=y`) and comma lists [D]."""
    values = req.query.get(name)
    if values is None:
        return None
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def date_bounds(req: SimRequest) -> dict[str, str]:
    """The `date.gt/gte/lt/lte` filters (YYYY-MM-DD) by operator; 400 QueryValidationError [D]."""
    bounds: dict[str, str] = {}
    for op in ("gt", "gte", "lt", "lte"):
        raw = req.q(f"date.{op}")
        if raw is not None:
            try:
                bounds[op] = date.fromisoformat(raw).isoformat() if len(raw) == 10 else ""
            except ValueError:
                bounds[op] = ""
            if not bounds[op]:
                raise query_invalid(
                    f"date.{op}", "Input should be a valid date in the format YYYY-MM-DD", "date_parsing"
                )
    return bounds


def in_bounds(day: str, bounds: dict[str, str]) -> bool:
    """Whether an ISO date passes every `date_bounds` filter."""
    return (
        ("gt" not in bounds or day > bounds["gt"])
        and ("gte" not in bounds or day >= bounds["gte"])
        and ("lt" not in bounds or day < bounds["lt"])
        and ("lte" not in bounds or day <= bounds["lte"])
    )


def int_query(req: SimRequest, name: str, default: int, minimum: int) -> int:
    raw = req.q(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise query_invalid(
            name, "Input should be a valid integer, unable to parse string as an integer", "int_parsing"
        ) from None
    if value < minimum:
        raise query_invalid(name, f"Input should be greater than or equal to {minimum}", "greater_than_equal")
    return value


#: [D] CreateModelRequest / UpdateModelRequest fields (additionalProperties=false)
CREATE_UPDATE_FIELDS = frozenset(
    {"name", "location", "algo", "forecast_window", "demand_type", "label", "external_id", "generate_baseline"}
)
REPLACE_FIELDS = CREATE_UPDATE_FIELDS - {"generate_baseline"}

#: [D] the nulls each request accepts: the spec's optional fields are nullable per request.
#: Create: none (CreateModelRequest has no `type: 'null'`); replace: the optional model fields;
#: update: every field but generate_baseline. A null in an update of a field the model always
#: has (name, algo, forecast_window, location) changes nothing [I].
CREATE_NULLABLE: frozenset[str] = frozenset()
REPLACE_NULLABLE = frozenset({"demand_type", "label", "external_id"})
UPDATE_NULLABLE = REPLACE_NULLABLE | {"name", "algo", "forecast_window", "location"}
