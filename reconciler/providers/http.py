"""The only module that imports an HTTP client library: one `HttpClient` per provider instance.

The network is reached through aiohttp: on the plan benchmark (benchmarks/plan_scale.py) its
client costs about a third of the CPU per request of httpx or httpx2, the difference between a
plan of 10,000 models being bound by the provider's latency or by our own CPU. Tests may pass an
httpx transport instead (`Seams.transport`, e.g. `httpx.MockTransport`): the same request, built
here once, is then handed to it, and httpx is imported only then.

It owns what every adapter needs and none should write again:
- rate limiting (requests per second) and the requests in flight: Little's law from the rate and
  the latency measured, never above what the provider allows, halved by a 429 and grown back one
  per round trip (AIMD, reconciler.providers.concurrency), which the run logs once; one queue
  for both, where the daemon's change lane goes first;
- retries of reads on 429, 5xx, timeouts and connection errors (stamina counts the attempts and
  asks `retry_on` which errors qualify), with capped, jittered exponential backoff that honours
  `Retry-After`, waited through the injected `sleep`;
- writes (train calls) are resent only when the request provably never left: a connection that
  was refused or never opened. Anything after sending is reported, to be settled by observing;
- status codes mapped onto the error tree in reconciler.errors, with the provider's own message;
- API keys redacted from every message, and never put in a URL that is logged.

`post_json` (notifications) is apart from all that: one POST to an operator's endpoint.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import stamina
import yarl

from reconciler.errors import (
    AuthError,
    InvalidRequestError,
    NotFoundError,
    OriginNotAllowedError,
    PermanentProviderError,
    ProviderError,
    RequestNotSentError,
    TemporaryProviderError,
)
from reconciler.providers.concurrency import ConcurrencyController, ConcurrencyGate
from reconciler.providers.origins import endpoint_url_problem, origin_or_none, origin_refusal
from reconciler.providers.policy import Auth, RetryPolicy
from reconciler.providers.wire import Response, encode_query, error_message, multipart, parse_retry_after, secret_forms
from reconciler.seams import RequestObserver, Sleep

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("reconciler.providers.http")

#: what may make a URL mean another origin than its base URL's (see origins.origin)
_UNSAFE_IN_PATH = re.compile(r"[\\\s\x00-\x1f\x7f]")

# stamina reports each retry by default as a WARNING log line and a Prometheus counter in the global
# registry: the CLI's stderr and the daemon's metrics must stay as they are (retries show up in the
# request observers and in the final error), so its instrumentation is off
stamina.instrumentation.set_on_retry_hooks([])


@dataclass(frozen=True)
class _Request:
    """One request as it goes on the wire: the URL with its query, headers and body bytes."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None


class _NotSent(Exception):
    """The connection was refused or never opened: nothing left."""


class _AfterSend(Exception):
    """The request may have left (timeout, connection lost, bad answer)."""


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
        `key_env` names the variable the key came from, for the hint of a refused key;
        `transport` (tests) answers instead of the network."""
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
        self.concurrency = ConcurrencyController(ceiling=max_concurrent, requests_per_second=requests_per_second)
        self._gate = ConcurrencyGate(self.concurrency)
        self._max_concurrent = max(1, max_concurrent)
        headers = {"Accept": "application/json", "User-Agent": "reconciler/0.1", **auth.extra_headers}
        if auth.header:
            headers[auth.header] = f"{auth.prefix}{api_key}"
        self._headers = headers
        self._timeout = timeout
        self._transport = transport
        self._session: aiohttp.ClientSession | None = None
        self._proxy: str | None = None
        self.request_count = 0
        self._base_allowed = (
            not any(c in self.base_url for c in "?#")
            and origin_refusal(self.base_url + "/", self.allowed_origins) is None
        )

    def _open(self) -> aiohttp.ClientSession:
        """The connection pool, made on first use (aiohttp wants a running event loop)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_concurrent, limit_per_host=0),
                timeout=aiohttp.ClientTimeout(total=None, connect=min(10.0, self._timeout), sock_read=self._timeout),
                # the proxy is looked up once (`_proxy`), not in a worker thread for every request
                trust_env=False,
                # keys authenticate; a cookie one answer sets must not ride along on the next requests
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=True,
                skip_auto_headers=("Content-Type",),
            )
            self._proxy = env_proxy(self.base_url)
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def redact(self, text: str) -> str:
        """`text` with the key masked, also as it looks inside a URL or a JSON string."""
        for form in self._key_forms:
            if form in text:
                text = text.replace(form, "***")
        return text

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
        files: Mapping[str, tuple[str, bytes, str]] | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool | None = None,
        ok: tuple[int, ...] = (),
    ) -> Response:
        """Send a request; return a 2xx (or `ok`) response or raise from reconciler.errors.

        The body is one of `json_body`, `content` (bytes), `data` (a form; multipart with `files`,
        each `name: (filename, bytes, content type)`). `idempotent` defaults to True for GET/HEAD.
        Non-idempotent requests are resent only after a connection error that proves nothing was sent.
        """
        if idempotent is None:
            idempotent = method in ("GET", "HEAD")
        query = dict(params or {})
        if self._auth.query_param:
            query[self._auth.query_param] = self._key
        # the trust boundary, whatever the caller: a URL outside the allowed origins is never sent
        if (refusal := self._origin_refusal(path)) is not None:
            raise OriginNotAllowedError(f"{method} {path}: {refusal}; nothing was sent", provider=self.provider)
        send = self._build(method, path, query, json_body, content, data, files, headers)
        retry_on = self._retry_on(idempotent)
        # the first attempt goes without the retry machinery (most requests need none: it costs
        # about a tenth of a millisecond per request); stamina takes over from the first failure
        try:
            return await self._send(path, idempotent, ok, send)
        except ProviderError as exc:
            if self.retry.attempts < 2 or retry_on(exc) is False:
                raise
            failed = exc
        # stamina counts attempts and asks `retry_on` whether an error may be retried; its own
        # backoff is told to be 0 and the client waits the policy's delay through `self._sleep`,
        # so a test can record (not wait) it. In stamina's test mode (set_testing) the delay is 0.
        async for attempt in stamina.retry_context(on=retry_on, attempts=self.retry.attempts - 1, timeout=None):
            retry_number = attempt.num - 1  # the first retry is retry 0: `base` seconds
            await self._sleep(0.0 if stamina.is_testing() else self.retry.delay(retry_number, failed.retry_after))
            with attempt:
                try:
                    return await self._send(path, idempotent, ok, send)
                except ProviderError as exc:
                    failed = exc
                    raise
        raise AssertionError("unreachable: stamina re-raises the last error")  # pragma: no cover

    def _origin_refusal(self, path: str) -> str | None:
        """Why `base_url + path` must not get the key, or None (origin_refusal, without re-parsing
        the base URL's origin for every request: a path that starts with `/` and holds no
        backslash, whitespace or control character cannot change the origin)."""
        if self._base_allowed and path.startswith("/") and not _UNSAFE_IN_PATH.search(path):
            return None
        return origin_refusal(self.base_url + path, self.allowed_origins)

    def _build(
        self,
        method: str,
        path: str,
        query: Mapping[str, Any],
        json_body: Any,
        content: bytes | None,
        data: Mapping[str, Any] | None,
        files: Mapping[str, tuple[str, bytes, str]] | None,
        extra: Mapping[str, str] | None,
    ) -> _Request:
        """The request as bytes on the wire, built once whatever sends it (network or test transport)."""
        url = self.base_url + path
        if query:
            url += "?" + encode_query(query)
        headers = dict(self._headers)
        body: bytes | None = None
        if files:
            body, content_type = multipart(data or {}, files)
            headers["Content-Type"] = content_type
        elif data is not None:
            body = encode_query(data).encode("ascii")
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif content is not None:
            body = content
        elif json_body is not None:
            body = json.dumps(json_body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if extra:
            headers.update(extra)
        return _Request(method, url, headers, body)

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

    async def _send(self, path: str, idempotent: bool, ok: tuple[int, ...], req: _Request) -> Response:
        """One attempt: the response when it is 2xx (or `ok`), else the error it maps onto."""
        method = req.method
        started = time.monotonic()
        slot = await self._gate.acquire()  # the rate and the requests in flight, urgent lane first
        try:
            self.request_count += 1
            sent = time.monotonic()
            status, headers, body = await self._transmit(req)
            self._pace(status, time.monotonic() - sent)
        except _NotSent as exc:
            self._observe(method, str(exc.args[0]), started)
            raise RequestNotSentError(
                f"{method} {path}: cannot connect to {self.base_url} ({self.redact(str(exc.args[1]))})",
                provider=self.provider,
            ) from None
        except _AfterSend as exc:
            self._observe(method, str(exc.args[0]), started)
            raise TemporaryProviderError(
                f"{method} {path}: {exc.args[0]} after the request was sent"
                + ("" if idempotent else "; whether it took effect is settled by observing, not by resending"),
                provider=self.provider,
            ) from None
        except (aiohttp.ClientError, ValueError) as exc:
            self._observe(method, type(exc).__name__, started)
            raise PermanentProviderError(f"{method} {path}: {self.redact(str(exc))}", provider=self.provider) from None
        finally:
            self._gate.release(slot)
        resp = Response(status, headers, body, self.provider, self.redact)
        self._observe(method, str(status), started)
        if 200 <= status < 300 or status in ok:
            return resp
        raise self._error(resp, method, path)

    def _pace(self, status: int, latency: float) -> None:
        """Feed the answer's latency (or its 429) to the concurrency controller."""
        limit = self.concurrency.allowed()
        if status == 429:
            if self.concurrency.throttled(latency):
                log.log(
                    logging.WARNING if self.concurrency.decreases == 1 else logging.DEBUG,
                    "%s answered 429 (too many requests): requests in flight lowered from %d to %d; "
                    "they grow back one per round trip",
                    self.provider,
                    limit,
                    self.concurrency.allowed(),
                )
        else:
            self.concurrency.answered(latency)
            if self.concurrency.allowed() > limit:
                self._gate.wake()

    async def _transmit(self, req: _Request) -> tuple[int, Mapping[str, str], bytes]:
        """Send `req` and read the whole answer; _NotSent / _AfterSend say how it failed."""
        if self._transport is not None:
            return await self._transmit_to(self._transport, req)
        session = self._open()
        try:
            async with session.request(
                req.method,
                yarl.URL(req.url, encoded=True),  # encoded already: `%2E` and `%2F` stay as they are
                headers=req.headers,
                data=req.body,
                allow_redirects=False,
                proxy=self._proxy,
            ) as raw:
                return raw.status, raw.headers, await raw.read()
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise _NotSent(type(exc).__name__, str(exc) or type(exc).__name__) from None
        except (TimeoutError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise _AfterSend(type(exc).__name__) from None
        except aiohttp.ClientResponseError as exc:  # an answer that is not HTTP
            raise _AfterSend(type(exc).__name__) from None

    @staticmethod
    async def _transmit_to(transport: httpx.AsyncBaseTransport, req: _Request) -> tuple[int, Mapping[str, str], bytes]:
        """The same request, answered by an httpx transport (tests: MockTransport, scripted errors)."""
        import httpx

        request = httpx.Request(req.method, req.url, headers=req.headers, content=req.body)
        try:
            raw = await transport.handle_async_request(request)
            content = await raw.aread()
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise _NotSent(type(exc).__name__, str(exc) or type(exc).__name__) from None
        except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            raise _AfterSend(type(exc).__name__) from None
        except httpx.HTTPError as exc:
            raise aiohttp.ClientError(str(exc)) from None
        return raw.status_code, raw.headers, content

    def _observe(self, method: str, outcome: str, started: float) -> None:
        for obs in self._observers:
            obs(self.provider, method, outcome, time.monotonic() - started)


def env_proxy(url: str) -> str | None:
    """The proxy the environment names for `url` (HTTPS_PROXY, HTTP_PROXY, NO_PROXY), as httpx read it."""
    try:
        proxy, _ = aiohttp.helpers.get_env_proxy_for_url(yarl.URL(url))
    except LookupError:
        return None
    return str(proxy)


# ---------------------------------------------------------------- notifications


@dataclass(frozen=True)
class PostOutcome:
    """What one notification POST came to: the HTTP status, or why there was none."""

    status: int | None
    error: str = ""
    #: refused before sending (the URL breaks the rule): retrying cannot help
    refused: bool = False

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


async def post_json(url: str, body: Any, *, timeout: float, user_agent: str = "reconciler/0.1") -> PostOutcome:
    """POST `body` as JSON to an operator's endpoint (a notification): one attempt, at most
    `timeout` seconds in all. Never raises for the network, and no outcome quotes the URL (it
    is a secret: a Slack webhook URL is its own credential). A URL outside the providers' rule
    (https, or plain http to loopback only) is refused without sending."""
    if (problem := endpoint_url_problem(url)) is not None:
        return PostOutcome(None, f"the URL {problem}; nothing was sent", refused=True)
    content = json.dumps(body, ensure_ascii=False).encode("utf-8")
    headers = {"Content-Type": "application/json", "User-Agent": user_agent}
    try:
        # one bound for the whole exchange, so an endpoint that answers byte by byte is cut off too
        client_timeout = aiohttp.ClientTimeout(total=timeout)
        async with (
            aiohttp.ClientSession(timeout=client_timeout) as client,
            client.post(url, data=content, headers=headers, allow_redirects=False) as raw,
        ):
            status = raw.status
    except TimeoutError:
        return PostOutcome(None, f"no answer within {timeout:g}s")
    except aiohttp.ClientError as exc:
        # the exception's text may quote the URL: only its kind is reported
        return PostOutcome(None, type(exc).__name__)
    if 200 <= status < 300:
        return PostOutcome(status)
    return PostOutcome(status, f"HTTP {status}")
