"""Every error `reconciler` raises on purpose, as one tree.

    ReconcilerError                  base; `str(err)` is a message fit for a user
    ├── ManifestError                bad manifests: carries a list of `Problem(file, line, col, message)`
    ├── ConfigError                  bad configuration: missing key variable, bad --state URL, missing base URL
    ├── StateError                   the state store cannot be opened, migrated or written
    │   ├── LockHeldError            the leader lease is held by another process (names the holder)
    │   └── RefusedError             `rename`/`forget`/`retry` refused: says why and what to do instead
    └── ProviderError                a provider call failed; carries `provider` and optionally `model`
        ├── TemporaryProviderError   retry later: 429, 5xx, timeouts, connection errors, 409 "busy"
        │   └── RequestNotSentError  the request provably never left (connection refused): safe to resend a train call
        └── PermanentProviderError   give up: reported, never retried
            ├── OriginNotAllowedError a URL outside the provider's allowed origins: refused, never sent
            ├── AuthError            401/403: the key is missing, wrong or lacks a scope
            ├── NotFoundError        404: the model/project/site does not exist at the provider
            ├── InvalidRequestError  400/422: the provider rejected what we sent
            │   └── SpecRefusedError a train call refused for the spec or its data (Lucid's 422): not an attempt
            └── BadResponseError     the provider answered something we cannot read (HTML, truncated, wrong types)

The split between temporary and permanent follows kopf: the engine retries or reschedules the
first kind and reports the second, so a caller only ever needs `except TemporaryProviderError`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass


class ReconcilerError(Exception):
    """Base of every error `reconciler` raises on purpose."""


@dataclass(frozen=True)
class Problem:
    """One manifest problem, located as `file:line:col` (1-based; 0 when unknown)."""

    file: str
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.message}"


class ManifestError(ReconcilerError):
    """One or more problems in the manifests; all of them, not only the first."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems, key=lambda p: (p.file, p.line, p.col, p.message))
        super().__init__("\n".join(str(p) for p in self.problems))


class ConfigError(ReconcilerError):
    """Configuration that cannot work: say what is wrong and what to set."""


class StateError(ReconcilerError):
    """The state store cannot be opened, migrated or written."""


class LockHeldError(StateError):
    """Another process holds the state lease (`StateStore.lock`)."""

    def __init__(self, holder: str, waited: float) -> None:
        self.holder = holder
        super().__init__(
            f"the state is locked by {holder} (waited {waited:.0f}s); wait for it to finish or raise --lock-timeout"
        )


class RefusedError(StateError):
    """A command that edits the state by hand (`rename`, `forget`, `retry`) refused, or lost to
    another writer: nothing was written; the message says why and what to do instead."""


class ProviderError(ReconcilerError):
    """A provider call failed. Treated as immutable: `with_model` returns a copy.

    Its message is redacted where it is built (the HTTP layer masks the key in everything it
    quotes), so nothing downstream rewrites it.
    """

    def __init__(
        self,
        message: str,
        *,
        provider: str = "",
        model: str = "",
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.provider = provider
        self.model = model
        self.status = status
        self.retry_after = retry_after
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:
        where = " ".join(p for p in (self.provider, f"model {self.model}" if self.model else "") if p)
        return f"{where}: {self.message}" if where else self.message

    def with_model(self, model: str) -> ProviderError:
        """A copy naming the model it concerns (of the same class); self when it names one already.

        A copy, because one error may be shared by several models (a failed list request).
        """
        if self.model:
            return self
        named = copy.copy(self)
        named.model = model
        return named


class TemporaryProviderError(ProviderError):
    """Worth retrying later: rate limits, server errors, timeouts, conflicts."""


class RequestNotSentError(TemporaryProviderError):
    """The request never left this machine, so resending cannot duplicate work."""


class PermanentProviderError(ProviderError):
    """Retrying will not help; a person has to act."""


class OriginNotAllowedError(PermanentProviderError):
    """A request to an origin the operator did not allow for this provider; it was never sent."""


class AuthError(PermanentProviderError):
    """The provider refused the key."""


class NotFoundError(PermanentProviderError):
    """The thing named in the manifest does not exist at the provider."""


class InvalidRequestError(PermanentProviderError):
    """The provider rejected the request as invalid."""


class SpecRefusedError(InvalidRequestError):
    """The provider refused a train call because of the spec or its data (Lucid: no data batch
    carries the `data_tags`). Nothing trained and nothing failed: no attempt is counted and no
    backoff set; the model is reported as an error until the manifest or the data changes."""


class BadResponseError(PermanentProviderError):
    """The provider answered with something that is not the documented shape."""
