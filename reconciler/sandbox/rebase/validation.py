"""Rebase Energy request validation: the 400 `ValidationResponse` [D], FastAPI-style errors [I] and
the checks of the train, site and actuals bodies (providers.md section 2)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from reconciler.sandbox.wire import SimHTTPError

SITE_TYPES = ("solar", "wind", "load")

#: [I] FastAPI's APIKeyHeader answers for a missing key; the wrong-key wording is a guess.
MISSING_KEY_BODY: dict[str, Any] = {"detail": "Not authenticated"}
INVALID_KEY_BODY: dict[str, Any] = {"detail": "Invalid API key"}


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        dt = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def validation_error(*errors: tuple[str, str]) -> SimHTTPError:
    """[D] 400 ValidationResponse `{"errors": [{"field", "message"}]}`."""
    return SimHTTPError(400, {"errors": [{"field": f, "message": m} for f, m in errors]})


def detail_error(status: int, message: str) -> SimHTTPError:
    return SimHTTPError(status, {"detail": message})


def is_number(value: Any) -> bool:
    """An int or float, not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse_splits(raw: Any) -> list[dict[str, str]] | None:
    """[D] optional list of `{"start_date", "end_date"}`; omitted = all data."""
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise validation_error(("splits", "splits must be a list of {start_date, end_date}"))
    errors: list[tuple[str, str]] = []
    for i, split in enumerate(raw):
        if not isinstance(split, dict):
            errors.append((f"splits.{i}", "a split must be an object with start_date and end_date"))
            continue
        start, end = parse_time(split.get("start_date")), parse_time(split.get("end_date"))
        for key, value in (("start_date", start), ("end_date", end)):
            if value is None:
                errors.append((f"splits.{i}.{key}", f"{key} must be an ISO 8601 date-time"))
        if start is not None and end is not None and start >= end:
            errors.append((f"splits.{i}", "start_date must be before end_date"))
    if errors:
        raise validation_error(*errors)
    return [{"start_date": s["start_date"], "end_date": s["end_date"]} for s in raw]


def train_request(body: Any) -> tuple[list[str], list[dict[str, str]] | None, bool]:
    """site_ids, splits and output_backtest_data of a train body, validated (400)."""
    if not isinstance(body, dict):
        raise validation_error(("body", "Request body must be a JSON object"))
    site_ids = body.get("site_ids")
    if not isinstance(site_ids, list) or not site_ids or not all(isinstance(s, str) for s in site_ids):
        raise validation_error(("site_ids", "site_ids must be a non-empty list of site ids"))
    splits = parse_splits(body.get("splits"))
    backtest = body.get("output_backtest_data", False)
    if not isinstance(backtest, bool):
        raise validation_error(("output_backtest_data", "output_backtest_data must be a boolean"))
    return site_ids, splits, backtest


def site_request(body: Any) -> tuple[dict[str, Any], list[Any]]:
    """A Create Site body and its assets, validated (400)."""
    if not isinstance(body, dict):
        raise validation_error(("body", "Request body must be a JSON object"))
    errors: list[tuple[str, str]] = []
    if body.get("type") not in SITE_TYPES:
        errors.append(("type", "type must be one of: solar, wind, load"))
    if not isinstance(body.get("name"), str) or not body["name"]:
        errors.append(("name", "name is required"))
    for key, limit in (("latitude", 90), ("longitude", 180)):
        value = body.get(key)
        if not isinstance(value, int | float) or isinstance(value, bool) or not -limit <= value <= limit:
            errors.append((key, f"{key} must be a number between -{limit} and {limit}"))
    settings = body.get("settings", {})
    if not isinstance(settings, dict):
        errors.append(("settings", "settings must be an object"))
    assets = body.get("assets", [])
    if not isinstance(assets, list):
        errors.append(("assets", "assets must be a list"))
    if errors:
        raise validation_error(*errors)
    return body, assets


def actuals_request(body: Any) -> tuple[str, int, list[str]]:
    """The series type, the number of points and their times of an actuals upload, validated (400)."""
    if not isinstance(body, dict):
        raise validation_error(("body", "Request body must be a JSON object"))
    kind = body.get("type", "power")
    if not isinstance(kind, str) or not kind:
        raise validation_error(("type", "type must be a string such as power"))
    data = body.get("data")
    if not isinstance(data, list) or not data:
        raise validation_error(("data", "data must be a non-empty list of {valid_time, value}"))
    times: list[str] = []
    errors: list[tuple[str, str]] = []
    for i, point in enumerate(data):
        when = parse_time(point.get("valid_time")) if isinstance(point, dict) else None
        if when is None:
            errors.append((f"data.{i}.valid_time", "valid_time must be an ISO 8601 date-time"))
        else:
            times.append(when.strftime("%Y-%m-%dT%H:%M:%SZ"))
        if isinstance(point, dict) and point.get("value") is not None and not is_number(point.get("value")):
            errors.append((f"data.{i}.value", "value must be a number"))
    if errors:
        raise validation_error(*errors)
    return kind, len(data), times
