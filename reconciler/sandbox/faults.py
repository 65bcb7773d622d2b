"""Faults injected in front of the simulators, the log of the requests they received and the traffic."""

from __future__ import annotations

import dataclasses
import json
import re
import threading
from dataclasses import dataclass
from typing import Any

from reconciler.sandbox.wire import SimResponse


@dataclass
class Fault:
    """A misbehaviour injected in front of the simulators, matched in order of injection.

    Matches requests by provider, method and a regex searched in the path after the provider
    prefix. Then: sleep `delay`; `drop` closes the connection without an answer; `status`
    answers with that status (`body`, `content_type`, `retry_after`) instead of handling.
    With `after_handling` the real handler runs first (the world changes) and the fault then
    replaces or loses its answer: "the provider did it but the answer was lost".
    """

    provider: str | None = None
    method: str | None = None
    path: str = ".*"
    status: int | None = None
    body: bytes | str | dict[str, Any] | list[Any] | None = None
    content_type: str = "application/json"
    retry_after: float | None = None
    delay: float = 0.0
    drop: bool = False
    after_handling: bool = False
    times: int = 1  # -1: forever

    def matches(self, provider: str, method: str, path: str) -> bool:
        """Whether this fault applies to a request."""
        if self.provider is not None and self.provider != provider:
            return False
        if self.method is not None and self.method.upper() != method:
            return False
        return re.search(self.path, path) is not None

    def response(self) -> SimResponse:
        """The answer this fault gives (requires `status`)."""
        assert self.status is not None
        headers: dict[str, str] = {}
        if self.retry_after is not None:
            headers["Retry-After"] = f"{self.retry_after:g}"
        body: Any = self.body
        if body is None and self.status not in (204, 304):
            body = {"error": f"sandbox fault: HTTP {self.status}"}
        elif isinstance(body, str):
            body = body.encode("utf-8")
        return SimResponse(self.status, body, headers=headers, content_type=self.content_type)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (bytes bodies as text)."""
        data = dataclasses.asdict(self)
        if isinstance(self.body, bytes):
            data["body"] = self.body.decode("utf-8", "replace")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fault:
        """Build from JSON (the control API); raises ValueError on unknown fields/bad regex."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown fault fields: {', '.join(unknown)}")
        fault = cls(**data)
        re.compile(fault.path)
        checks = [
            (fault.status is None or _is_int(fault.status), "status must be an integer"),
            (_is_int(fault.times), "times must be an integer"),
            (_is_number(fault.delay) and fault.delay >= 0, "delay must be a number >= 0"),
            (fault.retry_after is None or _is_number(fault.retry_after), "bad retry_after"),
            (isinstance(fault.path, str), "path must be a regex string"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        return fault


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass
class LoggedRequest:
    """One request a simulator received. `status` is 0 when the connection was dropped."""

    provider: str
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    status: int
    at: float
    #: the request target exactly as received (percent-encoded, provider prefix and query included)
    raw_path: str = ""

    def json(self) -> Any:
        """The body parsed as JSON (None when empty)."""
        return json.loads(self.body) if self.body.strip() else None

    @property
    def text(self) -> str:
        """The body as text."""
        return self.body.decode("utf-8", "replace")

    def q(self, name: str, default: str | None = None) -> str | None:
        """The first value of a query parameter."""
        values = self.query.get(name)
        return values[0] if values else default

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, body as text (the control API)."""
        data = dataclasses.asdict(self)
        data["body"] = self.text
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoggedRequest:
        """Inverse of `to_dict` (for clients of the control API)."""
        fields = dict(data)
        fields["body"] = str(fields.get("body", "")).encode("utf-8")
        return cls(**fields)


class Traffic:
    """Requests each simulator is answering now, and the most it answered at once (thread-safe).

    What a benchmark measures at the provider's side: the requests in flight that the client
    really achieved, whatever it believes it sends.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._now: dict[str, int] = {}
        self._peak: dict[str, int] = {}
        self._count: dict[str, int] = {}
        self._busy: dict[str, float] = {}

    def enter(self, provider: str) -> None:
        with self._lock:
            now = self._now.get(provider, 0) + 1
            self._now[provider] = now
            self._count[provider] = self._count.get(provider, 0) + 1
            if now > self._peak.get(provider, 0):
                self._peak[provider] = now

    def leave(self, provider: str, seconds: float) -> None:
        """A request `enter`ed `seconds` ago was answered."""
        with self._lock:
            self._now[provider] -= 1
            self._busy[provider] = self._busy.get(provider, 0.0) + seconds

    def stats(self) -> dict[str, dict[str, float]]:
        """{provider: {"requests", "peak_in_flight", "in_flight", "busy_seconds"}} since the last `reset`
        (busy_seconds: the answered requests' time in the simulator, the injected latency included)."""
        with self._lock:
            return {
                p: {
                    "requests": n,
                    "peak_in_flight": self._peak.get(p, 0),
                    "in_flight": self._now.get(p, 0),
                    "busy_seconds": round(self._busy.get(p, 0.0), 6),
                }
                for p, n in self._count.items()
            }

    def reset(self) -> None:
        with self._lock:
            self._count.clear()
            self._busy.clear()
            self._peak = {p: n for p, n in self._now.items() if n}
