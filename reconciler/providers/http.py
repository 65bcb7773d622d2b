"""The only module that imports httpx: one `HttpClient` per provider instance.

It owns what every adapter needs and none should write again:
- rate limiting (requests per second) and a cap on concurrent requests;
- retries of reads on 429, 5xx, timeouts and connection errors (stamina counts the attempts and
  asks `retry_on` which errors qualify), with capped, jittered exponential backoff that honours
  `Retry-After`, waited through the injected `sleep`;
- writes (train calls) are resent only when the request provably never left: a connection that
  was refused or never opened. Anything after sending is reported, to be settled by observing;
- status codes mapped onto the error tree in reconciler.errors, with the provider's own message;
- API keys redacted from every message, and never put in a URL that is logged.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote, quote_plus

import httpx
import stamina

from reconciler.errors import (
    AuthError,
    BadResponseError,
    InvalidRequestError,
    NotFoundError,
    OriginNotAllowedError,
    PermanentProviderError,
    ProviderError,
    RequestNotSentError,
    TemporaryProviderError,
)
from reconciler.providers.origins import origin_or_none, origin_refusal
from reconciler.providers.policy import Auth, RetryPolicy
from reconciler.seams import RequestObserver, Sleep

# stamina reports each retry by default as a WARNING log line and a Prometheus counter in the global
# registry: the CLI's stderr and the daemon's metrics must stay as they are (retries show up in the
# request observers and in the final error), so its instrumentation is off
stamina.instrumentation.set_on_retry_hooks([])


class Response:
    """A provider's answer, with helpers that turn bad bodies into BadResponseError."""

    def __init__(self, raw: httpx.Response, provider: str, redact: Callable[[str], str] = str) -> None:
        self.status = raw.status_code
        self.headers: Mapping[str, str] = raw.headers
        self.content = raw.content
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


class HttpClient:
    """HTTP for one provider instance: auth, limits, retries, error mapping, redaction."""

    def __init__(
        self,
        provider: str,
        base_url: str,
        *,
        api_key: str,
        auth: Auth,
        requests_per_second: float = 5.0,
        max_concurrent: int = 16,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Sleep = asyncio.sleep,
        observers: Sequence[RequestObserver] = (),
        allowed_origins: Iterable[str] | None = None,
        key_env: str = "",
    ) -> None:
        """`sleep` waits out retry backoff; `observers` are called after every HTTP exchange;
        `allowed_origins` is where the key may be sent (default: the base URL's origin only);
        `key_env` names the variable the key came from, for the hint of a refused key."""
        self.provider = provider
        self.key_env = key_env
        self.base_url = base_url.rstrip("/")
        self.allowed_origins = frozenset(allowed_origins or filter(None, [origin_or_none(base_url)]))
        self._key = api_key
        self._key_forms = secret_forms(api_key)
        self._auth = auth
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self._observers = tuple(observers)
        self._interval = 1.0 / requests_per_second if requests_per_second > 0 else 0.0
        self._next_slot = 0.0
        self._rate_lock = asyncio.Lock()
        self._sem = asyncio.Semaphore(max_concurrent)
        headers = {"Accept": "application/json", "User-Agent": "reconciler/0.1", **auth.extra_headers}
        if auth.header:
            headers[auth.header] = f"{auth.prefix}{api_key}"
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(10.0, timeout)),
            limits=httpx.Limits(max_connections=max_concurrent, max_keepalive_connections=max_concurrent),
            transport=transport,
            follow_redirects=False,
        )
        self.request_count = 0

    async def aclose(self) -> None:
        await self._client.aclose()

    def redact(self, text: str) -> str:
        """`text` with the key masked, also as it looks inside a URL or a JSON string."""
        for form in self._key_forms:
            if form in text:
                text = text.replace(form, "***")
        return text

    async def _throttle(self) -> None:
        if not self._interval:
            return
        async with self._rate_lock:
            now = time.monotonic()
            wait = self._next_slot - now
            self._next_slot = max(now, self._next_slot) + self._interval
        if wait > 0:
            await asyncio.sleep(wait)

    def _error(self, resp: Response, method: str, path: str) -> ProviderError:
        # masked before parsing and cutting: a provider that echoes the key back must not have
        # it (or half of it, cut at a length limit) quoted in our message
        text = self.redact(resp.text)
        try:
            body: Any = json.loads(text) if text.strip() else None
        except ValueError:
            body = text[:120]
        detail = self.redact(error_message(body)) or f"HTTP {resp.status}"
        what = f"{method} {path} -> HTTP {resp.status}: {detail}"
        status = resp.status
        retry_after = parse_retry_after(resp.headers.get("retry-after"))
        kw: dict[str, Any] = {"provider": self.provider, "status": status, "retry_after": retry_after}
        if status in (401, 403):
            where = (
                f"the environment variable {self.key_env}" if self.key_env else "the key variable the Provider names"
            )
            return AuthError(f"{what.rstrip('.')}; check the key in {where} (missing, wrong, or lacking a scope)", **kw)
        if status == 404:
            return NotFoundError(f"{what}; check the model fields in the manifest", **kw)
        if status in (400, 422):
            return InvalidRequestError(what, **kw)
        if status in (408, 409, 423, 425, 429) or status >= 500:
            return TemporaryProviderError(what, **kw)
        return PermanentProviderError(what, **kw)

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        content: bytes | None = None,
        data: Mapping[str, Any] | None = None,
        files: Any = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool | None = None,
        ok: tuple[int, ...] = (),
    ) -> Response:
        """Send a request; return a 2xx (or `ok`) response or raise from reconciler.errors.

        `idempotent` defaults to True for GET/HEAD. Non-idempotent requests are resent only
        after a connection error that proves nothing was sent.
        """
        if idempotent is None:
            idempotent = method in ("GET", "HEAD")
        query = dict(params or {})
        if self._auth.query_param:
            query[self._auth.query_param] = self._key
        # the trust boundary, whatever the caller: a URL outside the allowed origins is never sent
        if (refusal := origin_refusal(self.base_url + path, self.allowed_origins)) is not None:
            raise OriginNotAllowedError(f"{method} {path}: {refusal}; nothing was sent", provider=self.provider)
        send = {
            "url": self.base_url + path,
            "params": query or None,
            "json": json_body,
            "content": content,
            "data": data,
            "files": files,
            "headers": headers,
        }
        failed: ProviderError | None = None
        # stamina counts attempts and asks `retry_on` whether an error may be retried; its own
        # backoff is told to be 0 and the client waits the policy's delay through `self._sleep`,
        # so a test can record (not wait) it. In stamina's test mode (set_testing) the delay is 0.
        async for attempt in stamina.retry_context(
            on=self._retry_on(idempotent), attempts=self.retry.attempts, timeout=None
        ):
            if failed is not None:
                retry_number = attempt.num - 2  # attempt 2 is retry 0: `base` seconds
                await self._sleep(0.0 if stamina.is_testing() else self.retry.delay(retry_number, failed.retry_after))
            with attempt:
                try:
                    return await self._send(method, path, idempotent, ok, send)
                except ProviderError as exc:
                    failed = exc
                    raise
        raise AssertionError("unreachable: stamina re-raises the last error")  # pragma: no cover

    @staticmethod
    def _retry_on(idempotent: bool) -> Callable[[Exception], bool | float]:
        """stamina's `on=` predicate: which errors are retried (0.0: retry, backoff waited by the client).

        Temporary errors (429, 5xx, 408, 425, timeouts, connection errors) of reads; never a 409/423
        (a conflict does not pass by retrying at once); a non-idempotent request only when it provably
        never left (RequestNotSentError), never after anything was sent.
        """

        def retry_on(exc: Exception) -> bool | float:
            if not isinstance(exc, TemporaryProviderError) or exc.status in (409, 423):
                return False
            if not idempotent and not isinstance(exc, RequestNotSentError):
                return False
            return 0.0

        return retry_on

    async def _send(
        self,
        method: str,
        path: str,
        idempotent: bool,
        ok: tuple[int, ...],
        send: dict[str, Any],
    ) -> Response:
        """One attempt: the response when it is 2xx (or `ok`), else the error it maps onto.

        `send` holds httpx's arguments (url, params, json, content, data, files, headers).
        """
        await self._throttle()
        started = time.monotonic()
        try:
            async with self._sem:
                self.request_count += 1
                raw = await self._client.request(method, **send)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            self._observe(method, type(exc).__name__, started)
            raise RequestNotSentError(
                f"{method} {path}: cannot connect to {self.base_url} ({self.redact(str(exc)) or type(exc).__name__})",
                provider=self.provider,
            ) from None
        except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            self._observe(method, type(exc).__name__, started)
            raise TemporaryProviderError(
                f"{method} {path}: {type(exc).__name__} after the request was sent"
                + ("" if idempotent else "; whether it took effect is settled by observing, not by resending"),
                provider=self.provider,
            ) from None
        except httpx.HTTPError as exc:
            self._observe(method, type(exc).__name__, started)
            raise PermanentProviderError(f"{method} {path}: {self.redact(str(exc))}", provider=self.provider) from None
        resp = Response(raw, self.provider, self.redact)
        self._observe(method, str(resp.status), started)
        if 200 <= resp.status < 300 or resp.status in ok:
            return resp
        raise self._error(resp, method, path)

    def _observe(self, method: str, outcome: str, started: float) -> None:
        for obs in self._observers:
            obs(self.provider, method, outcome, time.monotonic() - started)


def secret_forms(secret: str) -> tuple[str, ...]:
    """The spellings a secret takes in URLs, form bodies and JSON, longest first (for redaction)."""
    if not secret:
        return ()
    forms = {
        secret,
        quote(secret, safe=""),
        quote_plus(secret, safe=""),
        str(httpx.QueryParams({"k": secret}))[2:],  # how httpx writes it into `?api_key=`
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
