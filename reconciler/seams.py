"""The engine's test seams, passed in and never read from the environment.

One frozen `Seams` is given to `Engine` (through `runtime.build_engine`/`runtime.session`, or
`reconciler.cli.main(argv, seams=...)`); the engine hands the clock to adapters (`ProviderContext`)
and the sleep, transport and request observers to each `HttpClient`. The defaults are the real
world, so production code never builds one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from reconciler.values import utc_now

if TYPE_CHECKING:
    import httpx

Clock = Callable[[], datetime]
Sleep = Callable[[float], Awaitable[None]]
#: Called after every HTTP exchange as (provider, method, status or error class name, seconds).
RequestObserver = Callable[[str, str, str, float], None]
#: Called with a step name of a training trigger (`CRASHPOINTS`) as the engine reaches it.
StepHook = Callable[[str], None]

#: The steps of a training trigger `on_step` is called at (docs/guarantees.md): before the
#: intent is written, after it, and after the provider answered the train call but before the
#: acknowledgement is written. The crash tests SIGKILL the process there.
CRASHPOINTS = ("before-intent", "after-intent", "after-train-call")


def no_step(step: str) -> None:
    """The default step hook: nothing happens at a step."""


@dataclass(frozen=True)
class Seams:
    """What tests may replace: time, waiting, the network, request observers and trigger steps."""

    #: "now" for plans, records and PhotoGPT's training timeout
    clock: Clock = utc_now
    #: how retry backoff waits (not the rate limiter, which paces real requests)
    sleep: Sleep = asyncio.sleep
    #: the HTTP transport of every provider client; None is httpx's own (the network)
    transport: httpx.AsyncBaseTransport | None = None
    request_observers: tuple[RequestObserver, ...] = ()
    on_step: StepHook = no_step
