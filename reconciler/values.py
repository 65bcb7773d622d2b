"""Value types every layer shares: durations, timestamps, the strict schema base, field changes
and the spec fingerprint. A leaf module: it imports nothing of reconciler's but errors-free stdlib
and pydantic, so `spec`, `plan`, providers and state can all use it without import circles.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str | int | float) -> timedelta:
    """`90s`, `10m`, `1h30m`, `30d`, `2w`; a bare number is seconds."""
    if isinstance(text, bool):
        raise ValueError("expected a duration such as 30s, 10m, 1h or 30d")
    if isinstance(text, int | float):
        if text < 0:
            raise ValueError("a duration cannot be negative")
        return _timedelta(text, text)
    if not isinstance(text, str):  # a list or mapping where a duration belongs
        raise ValueError("expected a duration such as 30s, 10m, 1h or 30d")
    s = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return _timedelta(float(s), text)
    pos, total = 0, 0.0
    for m in _DURATION_RE.finditer(s):
        if m.start() != pos and s[pos : m.start()].strip():
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos == 0 or s[pos:].strip():
        raise ValueError(f"{text!r} is not a duration; write e.g. 30s, 10m, 1h30m or 30d")
    return _timedelta(total, text)


def _timedelta(seconds: float, written: object) -> timedelta:
    # a duration beyond timedelta's range (about 2.7 million years) is bad input, not a crash
    try:
        return timedelta(seconds=seconds)
    except (OverflowError, ValueError):
        raise ValueError(f"{written!r} is too long for a duration") from None


def format_duration(td: timedelta) -> str:
    """The shortest exact spelling: 30d, 1h30m, 90s."""
    secs = int(td.total_seconds())
    if secs == 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if secs >= size:
            parts.append(f"{secs // size}{unit}")
            secs %= size
    return "".join(parts)


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
]


def parse_timestamp(value: Any) -> datetime:
    """ISO 8601 in any common spelling; naive times are UTC."""
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"{value!r} is not an ISO 8601 date-time, e.g. 2022-01-01T00:00Z") from None
    else:
        raise ValueError("expected an ISO 8601 date-time string, e.g. 2022-01-01T00:00Z")
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def _format_timestamp(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat()


#: A date-time normalised to UTC, so `2022-01-01T00:00Z` and `2022-01-01T00:00:00+00:00` are equal.
Timestamp = Annotated[
    datetime,
    BeforeValidator(parse_timestamp),
    PlainSerializer(_format_timestamp, return_type=str),
]


class Strict(BaseModel):
    """Base for manifest schemas: unknown fields and wrong types are errors, not coercions."""

    # defer_build: a schema is built when first used, so a run that reads one provider type does
    # not pay for the others (start-up time)
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, defer_build=True)


# ---------------------------------------------------------------- fingerprint and changes


def spec_snapshot(provider_type: str, model: BaseModel, training: BaseModel) -> dict[str, Any]:
    return {
        "provider": provider_type,
        "model": model.model_dump(mode="json"),
        "training": training.model_dump(mode="json"),
    }


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def prune_nulls(value: Any) -> Any:
    """Drop null fields: an omitted optional field and an explicit null mean the same, and a
    later release adding an optional field must not change every fingerprint (a paid retrain)."""
    if isinstance(value, dict):
        return {k: prune_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [prune_nulls(v) for v in value]
    return value


def fingerprint(snapshot: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of the normalised spec; cosmetic edits never change it."""
    return "sha256:" + hashlib.sha256(canonical_json(prune_nulls(snapshot)).encode()).hexdigest()


@dataclass(frozen=True)
class Change:
    path: str
    before: Any
    after: Any


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict) and value:
        for k, v in value.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    else:
        out[prefix] = value


_MISSING = object()


def diff_snapshots(before: dict[str, Any], after: dict[str, Any]) -> list[Change]:
    """Field-level changes between two snapshots; lists compare as a whole."""
    a: dict[str, Any] = {}
    b: dict[str, Any] = {}
    _flatten(prune_nulls(before), "", a)
    _flatten(prune_nulls(after), "", b)
    changes = []
    for path in sorted(set(a) | set(b)):
        old, new = a.get(path, _MISSING), b.get(path, _MISSING)
        if old != new:
            changes.append(Change(path, None if old is _MISSING else old, None if new is _MISSING else new))
    return changes


def as_utc(value: datetime) -> datetime:
    """The same instant as a timezone-aware UTC datetime; a naive one is taken to be UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def utc_now() -> datetime:
    """Now, timezone-aware UTC."""
    return datetime.now(UTC)
