"""HTTP clients shared by the engines of one process, so a provider's limits hold across them.

The daemon builds a new engine when a manifest is saved, while the other lane may still be
running a batch on the old one. Each engine making its own `HttpClient` would give a provider two
request rates and two in-flight limits at once: up to twice what it allows. `SharedClients`
hands every engine the same client for the same provider instance and settings (name, type, base
URL, key, rate, limits, seams); a client whose settings changed is a new one, and a client is
closed when the last engine using it is.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reconciler.providers.http import HttpClient


def identity(obj: object) -> Hashable:
    """A hashable stand-in for a seam (transport, sleep, observer): the same object, or the same
    bound method of the same object, gives the same value; never hashes the object itself."""
    return (id(getattr(obj, "__self__", None)), id(getattr(obj, "__func__", obj)))


class SharedClients:
    """Clients by their settings, each counted by the engines using it."""

    def __init__(self) -> None:
        self._by_key: dict[Hashable, HttpClient] = {}
        self._users: dict[int, int] = {}  # id(client) -> engines using it

    def acquire(self, settings: Hashable, seams: Iterable[object], make: Callable[[], HttpClient]) -> HttpClient:
        """The client for these settings and seams, made on first use; give it back with `release`."""
        key = (settings, tuple(identity(s) for s in seams))
        client = self._by_key.get(key)
        if client is None:
            client = self._by_key[key] = make()
        self._users[id(client)] = self._users.get(id(client), 0) + 1
        return client

    async def release(self, client: HttpClient) -> None:
        """One engine is done with `client`: closed when no engine uses it any more."""
        left = self._users.get(id(client), 0) - 1
        if left > 0:
            self._users[id(client)] = left
            return
        self._users.pop(id(client), None)
        for key in [k for k, c in self._by_key.items() if c is client]:
            del self._by_key[key]
        await client.aclose()

    def __len__(self) -> int:
        return len(self._by_key)

    async def aclose(self) -> None:
        """Close every client (the process is ending)."""
        clients = list(self._by_key.values())
        self._by_key.clear()
        self._users.clear()
        for client in clients:
            await client.aclose()
