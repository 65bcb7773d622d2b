"""Which base URLs a provider's key may be sent to (checked offline by `validate` and again by the client)."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


def is_loopback(host: str) -> bool:
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
