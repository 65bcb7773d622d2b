"""Where a provider's key may go: base URL checks, origins, and the operator's trust policy.

Manifests are untrusted (a pull request can change them); the operator's environment is trusted.
A key is sent only to an allowed origin of its provider type: the origin of the type's built-in
base URL, of `RECONCILER_<TYPE>_BASE_URL`, or one listed in `RECONCILER_ALLOWED_ORIGINS`.
`validate` checks this offline and the HTTP client again before every request.
Pure functions and frozen values only: `runtime` builds the policy from the environment.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

ALLOWED_ORIGINS_ENV = "RECONCILER_ALLOWED_ORIGINS"
ALLOWED_KEY_ENVS_ENV = "RECONCILER_ALLOWED_KEY_ENVS"
DEFAULT_PORTS = {"http": 80, "https": 443}
#: a host name after IDNA encoding: letters, digits, '-' and '_' in dot-separated labels
_HOST_RE = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*")
_ENV_NAME_RE = re.compile(r"[A-Z_][A-Z0-9_]*")


def base_url_env(type_name: str) -> str:
    """The operator's variable that replaces a type's built-in base URL."""
    return f"RECONCILER_{type_name.upper()}_BASE_URL"


def is_loopback(host: str) -> bool:
    """Whether a host name or address is this machine (plain http is allowed there)."""
    if host in ("localhost",) or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_base_url(url: str, allow_insecure_http: bool = False) -> str | None:
    """A reason the base URL is unacceptable, or None. Plain http only to loopback or by opt-in."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"base_url {url!r} must be an absolute http(s) URL"
    if parts.scheme == "http" and not is_loopback(parts.hostname) and not allow_insecure_http:
        return (
            f"base_url {url!r} uses plain http to a non-local host, which would send the API key "
            "unencrypted; use https, or set allow_insecure_http: true on the Provider"
        )
    if parts.query or parts.fragment:
        return f"base_url {url!r} must not carry a query or fragment"
    return None


def endpoint_url_problem(url: str) -> str | None:
    """Why `url` must not receive a notification, without quoting it (the URL is a secret); or None.

    The providers' rule: an absolute https URL, or plain http to a loopback host only.
    """
    try:
        origin(url)
    except ValueError:
        return "is not an absolute http(s) URL with a valid host (and no user name or password)"
    parts = urlsplit(url)
    if parts.scheme.lower() == "http" and not is_loopback(parts.hostname or ""):
        return "uses plain http to a non-local host; use https (plain http only to a loopback host)"
    if parts.fragment:
        return "must not carry a #fragment"
    return None


def _host(raw: str) -> str:
    """The normalised host: IPv6 compressed in brackets, IPv4 strict, names IDNA-encoded."""
    if raw.startswith("["):
        if not raw.endswith("]"):
            raise ValueError("an IPv6 address must be written in [brackets]")
        try:
            return f"[{ipaddress.IPv6Address(raw[1:-1]).compressed}]"
        except ValueError:
            raise ValueError(f"{raw!r} is not an IPv6 address") from None
    # one trailing dot names the same host (an absolute DNS name); more is not a host name
    name = raw[:-1] if raw.endswith(".") else raw
    try:
        name = name.encode("idna").decode("ascii").lower() if not name.isascii() else name.lower()
    except UnicodeError:
        raise ValueError(f"{raw!r} is not a valid host name") from None
    if not _HOST_RE.fullmatch(name):
        # rejects %-encoded dots or slashes, backslashes, spaces, empty labels: anything a client
        # or proxy might read as another host than this check did
        raise ValueError(f"{raw!r} is not a valid host name")
    last = name.rsplit(".", 1)[-1]
    if last.isdigit() or last.startswith("0x"):
        # numeric hosts only as a plain dotted quad: `127.1` or `0x7f.1` mean different hosts to different parsers
        try:
            return str(ipaddress.IPv4Address(name))
        except ValueError:
            raise ValueError(f"{raw!r} is not a dotted-quad IPv4 address") from None
    return name


def origin(url: str) -> str:
    """The normalised origin `scheme://host:port` of an absolute http(s) URL; ValueError otherwise.

    Scheme and host lower-case, default ports explicit, IDNA and one trailing dot handled; userinfo
    (`https://api.roboflow.com@evil.example`) is refused, never stripped.
    """
    if any(c in url for c in "\\\t\r\n ") or any(ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise ValueError(f"{url!r} contains a backslash, whitespace or a control character")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not url[len(scheme) :].startswith("://"):
        raise ValueError(f"{url!r} is not an absolute http(s) URL")
    netloc = parts.netloc
    if "@" in netloc:
        raise ValueError(f"{url!r} carries a user name or password before '@'; write only scheme://host:port")
    host_part, port_text = netloc, ""
    if netloc.startswith("["):
        end = netloc.find("]")
        host_part, rest = netloc[: end + 1], netloc[end + 1 :]
        if end < 0 or (rest and not rest.startswith(":")):
            raise ValueError(f"{url!r} has a malformed IPv6 host")
        port_text = rest[1:]
    elif ":" in netloc:
        host_part, _, port_text = netloc.rpartition(":")
    if not host_part:
        raise ValueError(f"{url!r} has no host")
    if port_text and not (port_text.isdigit() and port_text.isascii()):
        raise ValueError(f"{url!r} has a port that is not a number")
    port = int(port_text) if port_text else DEFAULT_PORTS[scheme]
    if not 0 < port < 65536:
        raise ValueError(f"{url!r} has a port out of range")
    return f"{scheme}://{_host(host_part)}:{port}"


def origin_or_none(url: str) -> str | None:
    """`origin(url)`, or None when the URL has none."""
    try:
        return origin(url)
    except ValueError:
        return None


def origin_refusal(url: str, allowed: Iterable[str]) -> str | None:
    """Why a request to `url` must not be sent with the key (its origin is not allowed), or None."""
    try:
        found = origin(url)
    except ValueError as exc:
        return str(exc)
    allowed = set(allowed)
    if found in allowed:
        return None
    shown = ", ".join(sorted(allowed)) or "none"
    return f"{found} is not an allowed origin for this provider (allowed: {shown})"


def key_env_forms(type_name: str) -> str:
    """The key variable names a Provider of this type may use, for messages."""
    t = type_name.upper()
    return f"{t}_API_KEY or {t}_<NAME>_API_KEY"


@dataclass(frozen=True)
class TrustPolicy:
    """What the operator allows: origins per provider type and extra key variable names."""

    #: type -> origins of its built-in base URL and of RECONCILER_<TYPE>_BASE_URL
    type_origins: Mapping[str, frozenset[str]] = field(default_factory=dict)
    #: RECONCILER_ALLOWED_ORIGINS: allowed for every type
    extra_origins: frozenset[str] = frozenset()
    #: RECONCILER_ALLOWED_KEY_ENVS: key variables allowed besides <TYPE>[_<NAME>]_API_KEY
    key_envs: frozenset[str] = frozenset()

    @classmethod
    def from_env(cls, env: Mapping[str, str], base_urls: Mapping[str, str | None]) -> TrustPolicy:
        """The policy of an operator environment over the types' built-in base URLs.

        ValueError names a bad `RECONCILER_ALLOWED_ORIGINS` or `RECONCILER_ALLOWED_KEY_ENVS` entry.
        A bad `RECONCILER_<TYPE>_BASE_URL` allows nothing; the client refuses it with its reason.
        """
        per_type: dict[str, frozenset[str]] = {}
        for type_name, builtin in base_urls.items():
            urls = (builtin, env.get(base_url_env(type_name)))
            per_type[type_name] = frozenset(o for o in map(origin_or_none, filter(None, urls)) if o)
        extra = set()
        for entry in _split(env.get(ALLOWED_ORIGINS_ENV, "")):
            try:
                extra.add(origin(entry))
            except ValueError as exc:
                raise ValueError(f"{ALLOWED_ORIGINS_ENV}: {exc} (write comma-separated scheme://host[:port])") from None
        keys = set()
        for name in _split(env.get(ALLOWED_KEY_ENVS_ENV, "")):
            if not _ENV_NAME_RE.fullmatch(name):
                raise ValueError(f"{ALLOWED_KEY_ENVS_ENV}: {name!r} is not an upper-case environment variable name")
            keys.add(name)
        return cls(per_type, frozenset(extra), frozenset(keys))

    def origins_for(self, type_name: str) -> frozenset[str]:
        """Every origin a key of this type may be sent to."""
        return self.type_origins.get(type_name, frozenset()) | self.extra_origins

    def allowing(self, urls: Mapping[str, str]) -> TrustPolicy:
        """This policy with each URL's origin also allowed for its type (type -> URL the operator gave)."""
        merged = dict(self.type_origins)
        for type_name, url in urls.items():
            found = origin_or_none(url)
            if found is not None:
                merged[type_name] = merged.get(type_name, frozenset()) | {found}
        return TrustPolicy(merged, self.extra_origins, self.key_envs)

    def base_url_problem(self, type_name: str, url: str) -> str | None:
        """Why a manifest's base_url must not receive this type's key, naming what to set; or None."""
        refusal = origin_refusal(url, self.origins_for(type_name))
        if refusal is None:
            return None
        return (
            f"base_url {url!r}: {refusal}; a manifest cannot choose where the key goes: the operator "
            f"sets {base_url_env(type_name)} or lists the origin in {ALLOWED_ORIGINS_ENV}"
        )

    def key_env_problem(self, type_name: str, name: str) -> str | None:
        """Why a Provider of this type must not read its key from `name`, naming what to set; or None."""
        t = type_name.upper()
        if name in self.key_envs or re.fullmatch(rf"{re.escape(t)}(_[A-Z0-9_]+)?_API_KEY", name):
            return None
        return (
            f"api_key_env {name!r} is not a {type_name} key variable: use {key_env_forms(type_name)} "
            f"(upper case, digits, '_'; e.g. {t}_PROD_API_KEY), or the operator lists it in {ALLOWED_KEY_ENVS_ENV}"
        )


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]
