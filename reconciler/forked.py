"""A CPU-bound map shared with a forked child: a one-shot command on a machine of two cores or
more parses its manifests in about two thirds of the time (benchmarks/validate_scale.py).

The child inherits the parent's memory as it is at the fork: the function, its arguments and
every module already imported, so nothing is sent to it; it sends back its results pickled
through a pipe. Only a process with one thread forks (a thread holding a lock at the fork, a
logging handler's say, would leave the child waiting on it forever), only on Linux (macOS
forbids fork after some system frameworks load), and only where the work outweighs the fork.
Whatever goes wrong on the child's side (it fails, dies, or sends what cannot be read), the
parent does the child's part itself: the result is the same either way, only slower.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: the share of the work the child takes: it also pickles what it made (about 15% of making it),
#: and the parent unpickles that (about 20%) after its own part, so both finish together near here
CHILD_SHARE = 0.45


def can_fork() -> bool:
    """Whether this process may share work with a forked child now (see the module docstring)."""
    if sys.platform != "linux" or not hasattr(os, "fork"):
        return False
    if threading.active_count() != 1:
        return False
    return len(os.sched_getaffinity(0)) >= 2


def split_point(weights: Sequence[int], share: float = CHILD_SHARE) -> int:
    """The number of leading items whose weights first reach `share` of the whole."""
    goal = share * sum(weights)
    done = 0
    for i, w in enumerate(weights):
        if done >= goal:
            return i
        done += w
    return len(weights)


def map_split(fn: Callable[[T], R], items: Sequence[T], weights: Sequence[int], *, min_weight: int) -> list[R]:
    """`[fn(x) for x in items]`, the leading part computed in a forked child where that pays.

    `weights` (one per item, e.g. file sizes) estimate each item's work; below `min_weight` in
    all, or where `can_fork()` says no, everything runs here. `fn` must not raise (a child's
    exception would be lost): it reports problems in what it returns.
    """
    cut = split_point(weights)
    if sum(weights) < min_weight or cut in (0, len(items)) or not can_fork():
        return [fn(x) for x in items]
    import pickle  # here: `validate` of one file starts without it

    theirs, ours = items[:cut], items[cut:]
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: compute, send, leave without running the parent's exit handlers
        os.close(read_end)
        code = 1
        try:
            signal.signal(signal.SIGINT, signal.SIG_DFL)  # a Ctrl-C stops the child as it stops the command
            with os.fdopen(write_end, "wb") as out:
                pickle.dump([fn(x) for x in theirs], out, protocol=pickle.HIGHEST_PROTOCOL)
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    received = bytearray()
    # a reader thread drains the pipe while this process works (a full pipe would stop the child);
    # the child is already running, so this thread cannot be inherited by it
    reader = threading.Thread(target=_drain, args=(read_end, received), daemon=True)
    reader.start()
    reaped = False
    try:
        mine = [fn(x) for x in ours]
        reader.join()
        _, status = os.waitpid(pid, 0)
        reaped = True
        if os.waitstatus_to_exitcode(status) == 0:
            try:
                got: list[R] = pickle.loads(received)
            except Exception:  # a truncated or garbled answer: do their part here
                got = []
            if len(got) == len(theirs):
                return [*got, *mine]
        return [*(fn(x) for x in theirs), *mine]
    finally:
        if not reaped:  # interrupted (Ctrl-C): no child outlives the command
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def _drain(fd: int, into: bytearray) -> None:
    with os.fdopen(fd, "rb") as pipe:
        while chunk := pipe.read(1 << 20):
            into += chunk
