"""What goes over the wire to a provider and back, apart from the client that sends it.

Pure helpers with no HTTP client library: the answer (`Response`), the providers' error shapes,
query and multipart encoding, the spellings of a secret (for redaction), Retry-After. The client
itself, and every HTTP library import, stay in `reconciler.providers.http`.
"""

from __future__ import annotations

import email.utils
import json
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote, quote_plus, urlencode

import orjson

from reconciler.errors import BadResponseError

#: every digit to b"0", every other byte to a space: a body holding b"0" * 20 after translation may
#: hold an integer past 64 bits (20 digits at most fit; floats as Python writes them have at most 17
#: significant digits), and is read by json instead of orjson. bytes.translate and `in` run at C
#: speed: a third of orjson's own time, where a regular expression took longer than json itself.
_DIGITS_ONLY = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_TWENTY_DIGITS = b"0" * 20


class Response:
    """A provider's answer, with helpers that turn bad bodies into BadResponseError."""

    def __init__(
        self, status: int, headers: Mapping[str, str], content: bytes, provider: str, redact: Callable[[str], str] = str
    ) -> None:
        self.status = status
        #: case-insensitive (aiohttp's and httpx's header mappings both are)
        self.headers = headers
        self.content = content
        self.provider = provider
        #: masks the key in anything quoted from the body (a provider may echo it back)
        self.redact = redact

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        if not self.content:
            raise BadResponseError("empty body where JSON was expected", provider=self.provider, status=self.status)
        try:
            if _TWENTY_DIGITS not in self.content.translate(_DIGITS_ONLY):
                try:
                    return orjson.loads(self.content)
                except orjson.JSONDecodeError:
                    pass  # what orjson refuses and json reads (NaN, Infinity): read as json does
            # json keeps an integer past 64 bits exact; orjson would read it as a float, and an
            # id (or anything compared later) would silently change
            return json.loads(self.content)
        except (ValueError, UnicodeDecodeError):
            snippet = self.redact(self.text)[:80].replace("\n", " ")
            raise BadResponseError(
                f"answered HTTP {self.status} with a body that is not JSON ({snippet!r}...)",
                provider=self.provider,
                status=self.status,
            ) from None

    def json_object(self) -> dict[str, Any]:
        body = self.json()
        if not isinstance(body, dict):
            raise BadResponseError(f"expected a JSON object, got {type(body).__name__}", provider=self.provider)
        return body

    def json_list(self) -> list[Any]:
        body = self.json()
        if not isinstance(body, list):
            raise BadResponseError(f"expected a JSON array, got {type(body).__name__}", provider=self.provider)
        return body


def error_message(body: Any) -> str:
    """The provider's own message from any of the error shapes the five APIs use.

    {"error": "..."}, {"error": {"message": ...}}, {"error": [{"field","msg"}]},
    {"error": "...", "details": [...]}, {"errors": [{"field","message"}]}, {"message": ...},
    {"detail": ...}, {"status": "NOK", "message", "err"}.
    """

    def items(seq: list[Any]) -> str:
        parts = []
        for it in seq:
            if isinstance(it, dict):
                fld = it.get("field") or ".".join(str(x) for x in it.get("loc", []) if x)
                msg = it.get("msg") or it.get("message") or json.dumps(it)
                parts.append(f"{fld}: {msg}" if fld else str(msg))
            else:
                parts.append(str(it))
        return "; ".join(parts)

    if isinstance(body, dict):
        err = body.get("error")
        details = body.get("details")
        if isinstance(err, str):
            return f"{err} ({items(details)})" if isinstance(details, list) and details else err
        if isinstance(err, dict):
            return str(err.get("message") or err.get("type") or json.dumps(err))
        if isinstance(err, list):
            return items(err)
        if isinstance(body.get("errors"), list) and body["errors"]:
            return items(body["errors"])
        msg, detail = body.get("message"), body.get("err")
        if body.get("status") == "NOK" and isinstance(msg, str) and isinstance(detail, str) and msg and detail:
            # PhotoGPT: `err` often says more than `message`; show both unless they repeat
            return msg if detail.lower() in msg.lower() else f"{msg} ({detail})"
        for key in ("message", "err", "detail"):
            val = body.get(key)
            if isinstance(val, str) and val:
                return val
            if isinstance(val, list):
                return items(val)
    if isinstance(body, str):
        return body[:200]
    return ""


def encode_query(params: Mapping[str, Any]) -> str:
    """`a=1&b=x+y&t=p&t=q`: lists as repeated parameters, booleans as true/false, None left out."""
    pairs: list[tuple[str, str]] = []
    for key, value in params.items():
        for one in value if isinstance(value, list | tuple) else [value]:
            if one is None:
                continue
            pairs.append((key, ("true" if one else "false") if isinstance(one, bool) else str(one)))
    return urlencode(pairs)


def multipart(fields: Mapping[str, Any], files: Mapping[str, tuple[str, bytes, str]]) -> tuple[bytes, str]:
    """A multipart/form-data body (form fields first, then files) and its Content-Type."""
    boundary = uuid.uuid4().hex
    parts: list[bytes] = []

    def quoted(text: str) -> str:
        return text.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")

    for name, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{quoted(name)}"\r\n\r\n'.encode()
            + str(value).encode("utf-8")
            + b"\r\n"
        )
    for name, (filename, content, content_type) in files.items():
        parts.append(
            (
                f"--{boundary}\r\n"
                f'Content-Disposition: form-data; name="{quoted(name)}"; filename="{quoted(filename)}"\r\n'
                f"Content-Type: {content_type}\r\n\r\n"
            ).encode()
            + content
            + b"\r\n"
        )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def secret_forms(secret: str) -> tuple[str, ...]:
    """The spellings a secret takes in URLs, form bodies and JSON, longest first (for redaction)."""
    if not secret:
        return ()
    forms = {
        secret,
        quote(secret, safe=""),
        quote_plus(secret, safe=""),
        encode_query({"k": secret})[2:],  # how it is written into `?api_key=`
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
    }
    return tuple(sorted((f for f in forms if f), key=len, reverse=True))


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
