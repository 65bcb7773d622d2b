"""`apply --wait` progress on stderr: one live table on a terminal, lines everywhere else.

Both are told what `slots.wait_for_all` sees, once per round (`ticks`), and are handed the
lines to say along the way (`note`: a trigger's outcome). Their times are the ticks' own, read
from the engine's clock (`Seams.clock`), so a test drives them with a fake one.

    LiveTable   a terminal: the table (model, provider, state, progress, elapsed) redrawn in place
    Lines       CI and logs: a line when a model's state changes; a progress-only change at most
                once per model every 30 s
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol, TextIO

from reconciler.errors import ProviderError
from reconciler.report.text import progress_line

if TYPE_CHECKING:
    from reconciler.slots import Tick

#: a progress-only change of one model is said at most this often in `Lines`
LINE_EVERY = timedelta(seconds=30)
HEADER = ("MODEL", "PROVIDER", "STATE", "PROGRESS", "ELAPSED")
#: cursor up and erase to the end of the screen (ECMA-48, every terminal emulator)
_UP = "\x1b[{n}A\r\x1b[J"


class Progress(Protocol):
    """What `ApplyReport` draws `--wait` progress with."""

    def ticks(self, ticks: Sequence[Tick]) -> None: ...

    def note(self, line: str) -> None: ...

    def close(self) -> None: ...


def state_text(t: Tick) -> str:
    """The STATE of one model: waiting for a slot, the provider's state, an error, or the end."""
    if t.phase == "queued":
        return "waiting for a slot"
    if t.observed is None:
        return t.record.status.value if t.record else "unknown"
    if isinstance(t.observed, ProviderError):
        return f"error: {t.observed}"
    obs = t.observed
    if t.phase == "ended" and t.record is not None:
        return progress_line(obs, t.record)
    return obs.provider_state or obs.status.value


def progress_text(t: Tick) -> str:
    obs = t.observed
    if t.phase == "running" and obs is not None and not isinstance(obs, ProviderError) and obs.progress is not None:
        return f"{obs.progress:.0%}"
    return "-"


def elapsed_text(td: timedelta) -> str:
    """`45s`, `3m05s`, `1h02m`."""
    secs = max(0, int(td.total_seconds()))
    if secs < 60:
        return f"{secs}s"
    if secs < 3600:
        return f"{secs // 60}m{secs % 60:02d}s"
    return f"{secs // 3600}h{secs % 3600 // 60:02d}m"


class Lines:
    """For CI and logs: `name: state` when a model's state changes (its start, its end, an error,
    the provider's state word); a change of its progress alone at most once every `every`."""

    def __init__(self, emit: Callable[[str], None], every: timedelta = LINE_EVERY) -> None:
        self.emit = emit
        self.every = every
        self._said: dict[str, tuple[str, str, datetime]] = {}  # name -> (state, line, when)

    def ticks(self, ticks: Sequence[Tick]) -> None:
        for t in ticks:
            state = state_text(t)
            if t.phase == "queued":
                line = f"{t.name}: {state}" + (f" ({t.detail})" if t.detail else "")
            elif t.phase == "ended" or isinstance(t.observed, ProviderError) or t.observed is None:
                line = f"{t.name}: {state}"
            else:
                line = f"{t.name}: {progress_line(t.observed, t.record)}"
            said = self._said.get(t.name)
            if said is not None:
                last_state, last_line, when = said
                if line == last_line:
                    continue
                if state == last_state and t.at - when < self.every:
                    continue  # only its progress moved, and it was said less than `every` ago
            self._said[t.name] = (state, line, t.at)
            self.emit(line)

    def note(self, line: str) -> None:
        self.emit(line)

    def close(self) -> None:
        """Nothing to tidy: every line is already out."""


class LiveTable:
    """For a terminal: one table of every model in play, redrawn in place on each round."""

    def __init__(self, stream: TextIO, width: int = 80) -> None:
        self.stream = stream
        self.width = width
        self._rows: dict[str, tuple[str, ...]] = {}
        self._ended_after: dict[str, timedelta] = {}
        self._drawn = 0

    def ticks(self, ticks: Sequence[Tick]) -> None:
        for t in ticks:
            since = t.since or t.at
            elapsed = self._ended_after.get(t.name, t.at - since)
            if t.phase == "ended":
                self._ended_after.setdefault(t.name, elapsed)
            self._rows[t.name] = (t.name, t.provider, state_text(t), progress_text(t), elapsed_text(elapsed))
        self._redraw()

    def note(self, line: str) -> None:
        """A line above the table (it is drawn again below it)."""
        self._erase()
        self.stream.write(line + "\n")
        self._draw()

    def close(self) -> None:
        """The table stays on the screen as it was last drawn; what follows is printed below it."""
        self._drawn = 0
        self._rows.clear()
        self.stream.flush()

    def render(self) -> list[str]:
        """The table's lines, each cut to the terminal's width (a wrapped line would break the redraw)."""
        rows = [HEADER, *(self._rows[n] for n in sorted(self._rows))]
        widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        return [line[: max(self.width - 1, 10)] for line in lines]

    def _erase(self) -> None:
        if self._drawn:
            self.stream.write(_UP.format(n=self._drawn))
            self._drawn = 0

    def _draw(self) -> None:
        if not self._rows:
            return
        lines = self.render()
        self.stream.write("\n".join(lines) + "\n")
        self.stream.flush()
        self._drawn = len(lines)

    def _redraw(self) -> None:
        self._erase()
        self._draw()
