"""The control API of a running sandbox, under `/_sandbox/`: the request log, faults and
failures for out-of-process users (`reconciler sandbox`, `apply --sandbox`)."""

from __future__ import annotations

import json
import re
from typing import Any, Protocol

from reconciler.sandbox.faults import Fault, LoggedRequest, Traffic
from reconciler.sandbox.simulator import Simulator
from reconciler.sandbox.wire import SimHTTPError, SimResponse

#: The first path segment of the control API (no provider type may take it).
CONTROL_PREFIX = "_sandbox"


class ControlledSandbox(Protocol):
    """What the control API needs of the sandbox it controls."""

    url: str
    training_seconds: float

    @property
    def served(self) -> list[str]: ...

    def base_url(self, type: str) -> str: ...

    def env(self) -> dict[str, str]: ...

    def sim(self, type: str) -> Simulator: ...

    def requests(
        self, provider: str | None = None, *, method: str | None = None, path: str | None = None
    ) -> list[LoggedRequest]: ...

    def clear_requests(self) -> None: ...

    def inject(self, fault: Fault) -> None: ...

    def clear_faults(self) -> None: ...

    def clear_failures(self) -> int: ...

    def faults(self) -> list[Fault]: ...

    @property
    def traffic(self) -> Traffic: ...


class ControlAPI:
    """`/_sandbox/...`: the request log, faults and failures for out-of-process users.

    GET /_sandbox                      -> {"url", "providers": {type: base_url}, "env"}
    GET /_sandbox/requests[?provider=] -> [LoggedRequest as JSON, body as text]
    DELETE /_sandbox/requests          -> {"cleared": n}
    GET /_sandbox/traffic              -> {type: {"requests", "peak_in_flight", "in_flight"}}
    DELETE /_sandbox/traffic           -> {} (counts and peaks start again)
    GET /_sandbox/faults               -> [Fault as JSON]
    POST /_sandbox/faults              -> 201 (body: Fault fields as JSON)
    DELETE /_sandbox/faults            -> {"cleared": n, "faults": n, "fail_next": n}: every
                                          pending fault, and every simulator's pending fail-next
    POST /_sandbox/{type}/fail-next    -> {"pending": n} (body: {"n": 1, "message"?: str})
    DELETE /_sandbox/{type}/fail-next  -> {"cleared": n, "pending": 0}
    GET /_sandbox/{type}/world         -> the simulator's world
    """

    def __init__(self, sandbox: ControlledSandbox) -> None:
        self.sandbox = sandbox

    def handle(self, method: str, path: str, query: dict[str, list[str]], body: bytes) -> SimResponse:
        sb = self.sandbox
        parts = [p for p in path.split("/") if p]
        try:
            if not parts and method == "GET":
                return SimResponse(
                    200,
                    {
                        "url": sb.url,
                        "providers": {t: sb.base_url(t) for t in sb.served},
                        "env": sb.env(),
                        "training_seconds": sb.training_seconds,
                    },
                )
            if parts == ["requests"]:
                if method == "GET":
                    provider = query["provider"][0] if query.get("provider") else None
                    return SimResponse(200, [r.to_dict() for r in sb.requests(provider)])
                if method == "DELETE":
                    count = len(sb.requests())
                    sb.clear_requests()
                    return SimResponse(200, {"cleared": count})
            if parts == ["traffic"]:
                if method == "GET":
                    return SimResponse(200, sb.traffic.stats())
                if method == "DELETE":
                    sb.traffic.reset()
                    return SimResponse(200, {})
            if parts == ["faults"]:
                if method == "GET":
                    return SimResponse(200, [f.to_dict() for f in sb.faults()])
                if method == "POST":
                    data = _json_object(body)
                    try:
                        fault = Fault.from_dict(data)
                    except (TypeError, ValueError, re.error) as exc:
                        return SimResponse(400, {"error": f"bad fault: {exc}"})
                    sb.inject(fault)
                    return SimResponse(201, fault.to_dict())
                if method == "DELETE":
                    count = len(sb.faults())
                    sb.clear_faults()
                    # a fail-next is a fault too, and it persists with the world across restarts
                    failures = sb.clear_failures()
                    return SimResponse(200, {"cleared": count + failures, "faults": count, "fail_next": failures})
            if len(parts) == 2 and parts[0] in sb.served:
                sim = sb.sim(parts[0])
                if parts[1] == "fail-next" and method == "POST":
                    data = _json_object(body) if body.strip() else {}
                    n = data.get("n", 1)
                    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                        return SimResponse(400, {"error": "n must be a non-negative integer"})
                    sim.fail_next_trainings(n, str(data.get("message", "simulated failure")))
                    with sim.transaction(save=False) as world:
                        pending = len(world.get("_sandbox", {}).get("fail_next", []))
                    return SimResponse(200, {"pending": pending})
                if parts[1] == "fail-next" and method == "DELETE":
                    return SimResponse(200, {"cleared": sim.clear_failures(), "pending": 0})
                if parts[1] == "world" and method == "GET":
                    with sim.transaction(save=False) as world:
                        return SimResponse(200, json.loads(json.dumps(world)))
        except SimHTTPError as err:
            return err.response()
        return SimResponse(404, {"error": f"unknown sandbox control route: {method} {path}"})


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body or b"{}")
    except ValueError as exc:
        raise SimHTTPError(400, {"error": f"invalid JSON: {exc}"}) from exc
    if not isinstance(data, dict):
        raise SimHTTPError(400, {"error": "expected a JSON object"})
    return data
