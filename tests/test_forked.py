"""Manifests parsed partly in a forked child: the same results, in order, whatever the child does."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler import forked
from reconciler.errors import ManifestError
from reconciler.spec import PARALLEL_MIN_BYTES, load_manifests

PARENT = os.getpid()


def require_fork() -> None:
    """Skip, saying why, where `map_split` would not fork now: not Linux, one core, or a thread left
    running by an earlier test (checked when the test runs, not when it is collected)."""
    if not forked.can_fork():
        others = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
        pytest.skip(f"no fork here now (Linux, two cores and one thread needed; other threads: {others})")


@pytest.fixture
def forkable() -> None:
    require_fork()


@pytest.fixture
def forks(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The pids of the children forked during the test, each checked reaped at its end."""
    pids: list[int] = []
    fork = os.fork

    def counted() -> int:
        pid = fork()
        if pid:
            pids.append(pid)
        return pid

    monkeypatch.setattr(os, "fork", counted)
    yield pids
    for pid in pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # already reaped: no zombie left behind


def square_noting_where(x: int) -> tuple[int, bool]:
    return x * x, os.getpid() == PARENT


@settings(max_examples=15)
@given(st.lists(st.integers(0, 10_000), min_size=2, max_size=40), st.data())
def test_results_are_the_map_in_order_with_the_leading_part_from_the_child(
    items: list[int], data: st.DataObject
) -> None:
    require_fork()
    weights = data.draw(st.lists(st.integers(1, 100), min_size=len(items), max_size=len(items)))
    got = forked.map_split(square_noting_where, items, weights, min_weight=1)
    assert [v for v, _ in got] == [x * x for x in items]
    cut = forked.split_point(weights)
    if 0 < cut < len(items):
        assert [here for _, here in got] == [False] * cut + [True] * (len(items) - cut)
    else:
        assert all(here for _, here in got)


def test_split_point_reaches_the_childs_share() -> None:
    assert forked.split_point([1] * 100, 0.45) == 45
    assert forked.split_point([90, 5, 5]) == 1
    assert forked.split_point([5, 5, 90]) == 3  # all of it: nothing left here, so no fork
    assert forked.split_point([]) == 0


def test_little_work_or_another_thread_forks_nothing(forks: list[int]) -> None:
    assert forked.map_split(square_noting_where, [1, 2, 3], [10, 10, 10], min_weight=31) == [
        (n * n, True) for n in [1, 2, 3]
    ]
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        got = forked.map_split(square_noting_where, [1, 2, 3], [10, 10, 10], min_weight=1)
    finally:
        stop.set()
        other.join()
    assert got == [(n * n, True) for n in [1, 2, 3]]
    assert forks == []


def in_child_only(action: Callable[[], object]) -> Callable[[int], int]:
    def fn(x: int) -> int:
        if os.getpid() != PARENT:
            action()
        return x + 1

    return fn


def exit_abruptly() -> None:
    os._exit(3)


def fail() -> None:
    raise RuntimeError("a bug that shows only in the child")


@pytest.mark.parametrize("action", [fail, exit_abruptly], ids=["raises", "dies"])
def test_a_failing_child_leaves_its_part_to_the_parent(
    action: Callable[[], object], forks: list[int], forkable: None
) -> None:
    items = list(range(10))
    assert forked.map_split(in_child_only(action), items, [1] * 10, min_weight=1) == [x + 1 for x in items]
    assert len(forks) == 1


def test_an_interrupted_parent_kills_and_reaps_its_child(forks: list[int], forkable: None) -> None:
    def fn(x: int) -> int:
        if os.getpid() == PARENT:
            raise KeyboardInterrupt
        threading.Event().wait()  # the child would run on for ever
        return x

    with pytest.raises(KeyboardInterrupt):
        forked.map_split(fn, list(range(10)), [1] * 10, min_weight=1)
    assert len(forks) == 1  # the fixture checks it reaped


def write_specs(root: Path, files: int, docs: int, broken: int | None = None) -> None:
    root.mkdir()
    for f in range(files):
        manifests = [
            f"apiVersion: reconciler/v1\nkind: TrainedModel\nmetadata:\n  name: m-{f}-{d}\n  labels: {{team: t{d % 7}}}\n"
            f"spec:\n  provider: roboflow\n  model: {{workspace: acme, project: p{f}-{d}}}\n"
            f"  training: {{version: {d + 1}, model_type: rfdetr-nano, epochs: {10 + d}}}\n"
            for d in range(docs)
        ]
        if f == broken:
            manifests[docs // 2] = manifests[docs // 2].replace("epochs: ", "epochs: -")
        (root / f"models-{f:03d}.yaml").write_text("---\n".join(manifests))


def test_parallel_loading_gives_the_same_manifests_and_problems(
    tmp_path: Path, forks: list[int], forkable: None
) -> None:
    specs = tmp_path / "specs"
    write_specs(specs, files=40, docs=60)
    assert sum(p.stat().st_size for p in specs.iterdir()) >= PARALLEL_MIN_BYTES
    alone = load_manifests([specs])
    assert forks == []
    shared = load_manifests([specs], parallel=True)
    assert len(forks) == 1
    assert shared == alone
    assert list(shared.models) == list(alone.models)  # the files' order kept

    bad = tmp_path / "bad"
    write_specs(bad, files=40, docs=60, broken=3)  # in the child's part
    problems = []
    for parallel in (False, True):
        with pytest.raises(ManifestError) as caught:
            load_manifests([bad], parallel=parallel)
        problems.append(caught.value.problems)
    assert problems[0] == problems[1]
    assert problems[0] and all("models-003.yaml" in p.file for p in problems[0])
