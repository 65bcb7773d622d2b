"""The HTTP wire as simulators see it: requests, responses, errors, and the `route` decorator."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from email import policy as email_policy
from email.parser import BytesParser
from typing import Any, TypeVar
from urllib.parse import parse_qs


class SimHTTPError(Exception):
    """Raise inside a handler to answer with this status and body (JSON-able, bytes or None)."""

    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"HTTP {status}: {body!r}")
        self.status = status
        self.body = body
        self.headers = dict(headers or {})

    def response(self) -> SimResponse:
        """This error as a response."""
        return SimResponse(self.status, self.body, headers=dict(self.headers))


@dataclass
class FormPart:
    """One field of a multipart/form-data or urlencoded body."""

    name: str
    data: bytes
    filename: str | None = None
    content_type: str = "text/plain"

    @property
    def text(self) -> str:
        """The part decoded as UTF-8 (undecodable bytes replaced)."""
        return self.data.decode("utf-8", "replace")


_MISSING: Any = object()


@dataclass
class SimRequest:
    """What a simulator's handler receives.

    `path` is the path after the provider prefix (and after the simulator's `base_path`),
    percent-decoded, always starting with "/". Header names are lower-cased.
    """

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    provider: str = ""

    def json(self, default: Any = _MISSING) -> Any:
        """The body parsed as JSON; an empty body gives `default` when one is given.

        Raises SimHTTPError(400) on bad JSON (or on an empty body without a default).
        """
        if not self.body.strip():
            if default is not _MISSING:
                return default
            raise SimHTTPError(400, {"error": "Request body must be JSON."})
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise SimHTTPError(400, {"error": f"Invalid JSON body: {exc}"}) from exc

    def q(self, name: str, default: str | None = None) -> str | None:
        """The first value of query parameter `name`, else `default`."""
        values = self.query.get(name)
        return values[0] if values else default

    def header(self, name: str, default: str | None = None) -> str | None:
        """A header by case-insensitive name."""
        return self.headers.get(name.lower(), default)

    @property
    def content_type(self) -> str:
        """The media type of the body, lower-cased, without parameters."""
        return (self.headers.get("content-type") or "").split(";")[0].strip().lower()

    def form(self) -> dict[str, list[FormPart]]:
        """The body parsed as multipart/form-data or application/x-www-form-urlencoded.

        Raises SimHTTPError(400) for any other content type or an unparsable body.
        """
        ctype = self.content_type
        fields: dict[str, list[FormPart]] = {}
        if ctype == "application/x-www-form-urlencoded":
            parsed = parse_qs(self.body.decode("utf-8", "replace"), keep_blank_values=True)
            for name, values in parsed.items():
                fields[name] = [FormPart(name, v.encode()) for v in values]
            return fields
        if ctype != "multipart/form-data":
            raise SimHTTPError(400, {"error": f"Expected multipart/form-data, got {ctype!r}."})
        # The email package parses MIME multipart (cgi is gone from the stdlib in 3.13).
        raw_ct = self.headers.get("content-type", "")
        message = BytesParser(policy=email_policy.HTTP).parsebytes(
            b"Content-Type: " + raw_ct.encode("latin-1") + b"\r\n\r\n" + self.body
        )
        if not message.is_multipart():
            raise SimHTTPError(400, {"error": "Malformed multipart body."})
        for part in message.iter_parts():
            field_name = part.get_param("name", header="content-disposition")
            if not isinstance(field_name, str):
                continue
            payload = part.get_payload(decode=True)
            data = payload if isinstance(payload, bytes) else b""
            fields.setdefault(field_name, []).append(
                FormPart(field_name, data, part.get_filename(), part.get_content_type())
            )
        return fields


@dataclass
class SimResponse:
    """What a handler returns: `body` is JSON-able (serialised), bytes (raw) or None (no body)."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"

    def encode(self) -> bytes:
        """The body as bytes on the wire."""
        if self.body is None:
            return b""
        if isinstance(self.body, bytes | bytearray):
            return bytes(self.body)
        if isinstance(self.body, str) and not self.content_type.endswith("json"):
            return self.body.encode("utf-8")
        return json.dumps(self.body).encode("utf-8")


Handler = Callable[..., Any]
H = TypeVar("H", bound=Handler)


def route(method: str, pattern: str) -> Callable[[H], H]:
    """Declare a simulator method as the handler of `METHOD pattern`.

    `pattern` is a regex fully matched against `SimRequest.path`; its named groups are passed
    as keyword arguments: `@route("GET", r"/(?P<ws>[^/]+)") def get_ws(self, req, ws): ...`.
    Routes are tried in definition order (subclass routes before inherited ones). A handler
    returns a SimResponse, or any JSON-able value for a 200.
    """

    def decorate(fn: H) -> H:
        routes = list(getattr(fn, "__sim_routes__", []))
        routes.append((method.upper(), pattern))
        fn.__sim_routes__ = routes  # type: ignore[attr-defined]
        return fn

    return decorate
