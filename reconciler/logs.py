"""Log lines on stderr: one JSON object per line, or human text; never a key or a secret.

`setup_logging` installs one stderr handler on the root logger whose formatter passes every
finished line (message, extra fields, traceback) through a `Redactor`. The redactor knows the
values of the environment variables that hold secrets: each provider type's key variable, the
`api_key_env` a Provider manifest names (added when manifests load), any `*_API_KEY` variable and
the daemon's webhook secret. Redacting the finished line, not the message, also covers tracebacks
and values that reach the log through `extra=` fields or exception text.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

#: Secrets that are not provider keys but must never be printed either.
EXTRA_SECRET_ENV = ("RECONCILER_LUCID_WEBHOOK_SECRET",)
#: Any variable whose name ends like this is taken for a key, whoever names it.
KEY_SUFFIXES = ("_API_KEY",)
#: Shorter values are not credible secrets, and replacing them would mangle ordinary words.
MIN_SECRET_LENGTH = 4
MASK = "***"

#: Loggers that log every request (with URLs that may carry a key) or every file event at INFO.
NOISY_LOGGERS = ("httpx", "httpcore", "watchfiles", "uvicorn.access")

_STANDARD_ATTRS = frozenset(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's copy of the message with terminal colours
}


def provider_key_envs() -> set[str]:
    """The key variables of every provider type (the catalog's `key_env` and `<TYPE>_API_KEY`)."""
    from reconciler.providers.catalog import key_envs

    return key_envs()


class Redactor:
    """Replaces every known secret value in a text with `***`."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self._env = env if env is not None else os.environ
        self._names: set[str] = set(EXTRA_SECRET_ENV)
        self._values: set[str] = set()
        self._patterns: tuple[str, ...] = ()
        self._lock = threading.Lock()
        self._rebuild()

    def watch_env(self, names: Iterable[str]) -> None:
        """Also redact the values of these environment variables (e.g. a Provider's api_key_env)."""
        with self._lock:
            self._names.update(n for n in names if n)
            self._rebuild()

    def add_values(self, values: Iterable[str | None]) -> None:
        """Also redact these literal values (keys that do not come from the environment)."""
        with self._lock:
            self._values.update(v for v in values if v)
            self._rebuild()

    def _rebuild(self) -> None:
        secrets = set(self._values)
        for name, value in self._env.items():
            if name in self._names or name.endswith(KEY_SUFFIXES):
                secrets.add(value)
        patterns: set[str] = set()
        for s in secrets:
            if len(s) < MIN_SECRET_LENGTH:
                continue
            patterns.add(s)
            # the same value as it appears inside a JSON string (quotes, backslashes, controls)
            patterns.add(json.dumps(s)[1:-1])
            patterns.add(json.dumps(s, ensure_ascii=False)[1:-1])
        # longest first, so a secret containing another is masked whole
        self._patterns = tuple(sorted(patterns, key=len, reverse=True))

    def __call__(self, text: str) -> str:
        for secret in self._patterns:
            if secret in text:
                text = text.replace(secret, MASK)
        return text


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS and not k.startswith("_")}


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, the record's extra fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _extras(record).items():
            doc.setdefault(key, value)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`2025-01-01T12:00:00.000Z INFO    reconciler.daemon: message` (traceback on the next lines)."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class RedactingFormatter(logging.Formatter):
    """Formats with `inner`, then masks every secret in the finished text."""

    def __init__(self, inner: logging.Formatter, redactor: Redactor) -> None:
        super().__init__()
        self.inner = inner
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        return self.redactor(self.inner.format(record))


def setup_logging(
    log_format: str = "text",
    *,
    level: int = logging.INFO,
    stream: TextIO | None = None,
    redactor: Redactor | None = None,
) -> Redactor:
    """Send every log record to stderr (or `stream`) as JSON lines or text, secrets masked.

    Keeps a more verbose level already chosen (`-vv`); returns the redactor so callers can add
    the key variables Provider manifests name.
    """
    redactor = redactor or Redactor()
    redactor.watch_env(provider_key_envs())
    inner: logging.Formatter = JsonFormatter() if log_format == "json" else TextFormatter()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(RedactingFormatter(inner, redactor))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level if root.level == logging.NOTSET else min(root.level, level))
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    logging.captureWarnings(True)
    return redactor
