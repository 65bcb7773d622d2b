"""systemd integration: sd_notify datagrams (READY, STOPPING, WATCHDOG, STATUS) and the watchdog."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping

log = logging.getLogger("reconciler.daemon")


def sd_notify(message: str, env: Mapping[str, str] | None = None) -> bool:
    """Send a datagram to systemd's $NOTIFY_SOCKET (READY=1, STOPPING=1, WATCHDOG=1, STATUS=...).

    False when not run by systemd (no socket) or the send failed; never raises.
    """
    address = (env if env is not None else os.environ).get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            # never block the event loop on a reader that is not reading: drop the message instead
            sock.setblocking(False)
            sock.connect(address)
            sock.send(message.encode())
    except OSError as exc:
        log.debug("sd_notify %r failed: %s", message, exc)
        return False
    return True


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when not asked for."""
    env = env if env is not None else os.environ
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2 / 1_000_000


async def watchdog(interval: float, alive: Callable[[], bool], env: Mapping[str, str]) -> None:
    """Ping systemd's watchdog every `interval` seconds while `alive()`; runs until cancelled."""
    while True:
        if alive():  # a dead worker must look dead to systemd
            sd_notify("WATCHDOG=1", env)
        await asyncio.sleep(interval)
