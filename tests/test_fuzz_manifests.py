"""Bad input: the manifest loader on random text, random bytes and mutated valid manifests.

`reconciler.spec.load_manifests` may only ever raise ManifestError, whose every Problem names the
file and a line >= 0; `reconciler validate` never prints a traceback; alias bombs, deep nesting
and huge numbers are bounded (see reconciler/yamlpos.py MAX_VALUES).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import time
from pathlib import Path

import pytest
from helpers import ROOT, run_in_process
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.errors import ManifestError
from reconciler.spec import load_manifests

SEEDS = [p for p in sorted((ROOT / "specs").glob("*.yaml")) if "photogpt" not in p.name]
SEED_TEXTS = [p.read_text() for p in SEEDS]

PROBLEM_LINE = re.compile(r"^(?P<file>.+?):(?P<line>\d+):(?P<col>\d+): \S")

#: Fragments that trip YAML parsers and loaders, inserted at random places.
NASTY = [
    "\t",
    "&a ",
    "*a",
    "*undefined",
    "<<: *a\n",
    "!!python/object/apply:os.system ['echo pwned']",
    "!!python/name:os.system",
    "!!binary aGVsbG8=",
    "!custom",
    "9" * 5000,
    "1e99999",
    "-.inf",
    ".nan",
    "0x" + "f" * 40,
    "0o777",
    "1_000",
    "2022-01-01T00:00Z",
    "~",
    "null",
    "yes",
    "on",
    "'unterminated",
    '"\\x00\\uffff"',
    "\u202e\u200b\ufeff",
    "名前",
    "🤖",
    "\x00",
    "\x1b[31m",
    "{",
    "}",
    "[",
    "]",
    "- ",
    ": ",
    "? ",
    "---\n",
    "...\n",
    "%YAML 1.1\n",
    "#",
    "|\n  block",
    ">-\n  folded",
    "[" * 300 + "]" * 300,
    "{a: " * 200 + "1" + "}" * 200,
]


def mutate(text: str, rng: random.Random) -> str:
    """One random structural or textual mutation of a manifest."""
    lines = text.splitlines(keepends=True) or [""]
    i = rng.randrange(len(lines))
    kind = rng.randrange(8)
    if kind == 0:  # delete a line (a key, a value, a document marker)
        del lines[i]
    elif kind == 1:  # duplicate a line (a duplicate key)
        lines.insert(i, lines[i])
    elif kind == 2:  # retype a value
        line = lines[i]
        if ":" in line:
            key, _, _ = line.partition(":")
            lines[i] = (
                f"{key}: {rng.choice(['[]', '{}', '42', '-1', 'true', 'null', '3.5', '[1, [2]]', rng.choice(NASTY)])}\n"
            )
    elif kind == 3:  # insert a nasty fragment in a line
        line = lines[i]
        at = rng.randrange(len(line) + 1)
        lines[i] = line[:at] + rng.choice(NASTY) + line[at:]
    elif kind == 4:  # re-indent a line
        lines[i] = " " * rng.randrange(0, 7) + lines[i].lstrip()
    elif kind == 5:  # an alias bomb in front
        bomb = "x0: &x0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
            f"x{n}: &x{n} [{', '.join([f'*x{n - 1}'] * 9)}]\n" for n in range(1, rng.randrange(3, 10))
        )
        lines.insert(0, bomb)
    elif kind == 6:  # swap two lines
        j = rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
    else:  # deep nesting under a key
        depth = rng.randrange(50, 600)
        lines.insert(i, "deep: " + "[" * depth + "]" * depth + "\n")
    return "".join(lines)


def check_load(path: Path) -> None:
    """The contract: a ManifestSet, or ManifestError whose every Problem is in this file."""
    try:
        load_manifests([path])
    except ManifestError as exc:
        assert exc.problems
        for p in exc.problems:
            assert p.file == str(path), p
            assert p.line >= 0 and p.col >= 0, p
            assert p.message, p


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FAST
@given(st.text(max_size=400))
def test_random_text(fuzz_dir: Path, text: str) -> None:
    path = fuzz_dir / "text.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    check_load(path)


@FAST
@given(st.binary(max_size=400))
def test_random_bytes(fuzz_dir: Path, data: bytes) -> None:
    path = fuzz_dir / "bytes.yaml"
    path.write_bytes(data)
    check_load(path)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(SEED_TEXTS), st.integers(min_value=0, max_value=2**32), st.integers(min_value=1, max_value=4))
def test_mutated_valid_manifests(fuzz_dir: Path, seed_text: str, seed: int, rounds: int) -> None:
    rng = random.Random(seed)
    text = seed_text
    for _ in range(rounds):
        text = mutate(text, rng)
    path = fuzz_dir / "mutated.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    started = time.monotonic()
    check_load(path)
    assert time.monotonic() - started < 5, "a manifest took more than 5 s to load"


@FAST
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
        max_leaves=30,
    )
)
def test_any_yaml_shaped_value_in_any_field(fuzz_dir: Path, value: object) -> None:
    """Valid YAML with wrong shapes: every field of a valid manifest replaced by an arbitrary value."""
    import json

    rng = random.Random(json.dumps(value, default=str))
    text = rng.choice(SEED_TEXTS)
    lines = [i for i, line in enumerate(text.splitlines()) if ":" in line and not line.lstrip().startswith("#")]
    target = rng.choice(lines)
    out = text.splitlines()
    key = out[target].partition(":")[0]
    out[target] = f"{key}: {json.dumps(value, default=str)}"
    path = fuzz_dir / "shaped.yaml"
    path.write_text("\n".join(out) + "\n")
    check_load(path)


def test_an_alias_bomb_is_refused_quickly_with_its_position(tmp_path: Path) -> None:
    levels = "".join(f"l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 9)}]\n" for n in range(1, 10))
    path = tmp_path / "bomb.yaml"
    path.write_text('l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + levels)
    started = time.monotonic()
    with pytest.raises(ManifestError) as info:
        load_manifests([path])
    assert time.monotonic() - started < 2
    (problem,) = info.value.problems
    assert problem.file == str(path) and problem.line >= 1 and "expands to more than" in problem.message


def test_a_number_too_long_to_convert_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    text = (ROOT / "specs" / "roboflow.yaml").read_text()
    assert "version: 3" in text
    path.write_text(text.replace("version: 3", "version: " + "9" * 5000))
    with pytest.raises(ManifestError) as info:
        load_manifests([path])
    assert any("too long" in p.message and p.line >= 1 for p in info.value.problems), info.value.problems


def test_deep_nesting_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("a: " + "[" * 20000 + "]" * 20000 + "\n")
    with pytest.raises(ManifestError) as info:
        load_manifests([path])
    assert "nested too deeply" in str(info.value)


def test_python_tags_never_build_objects(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "tag.yaml"
    path.write_text(
        SEED_TEXTS[0].replace("kind: TrainedModel", f"kind: !!python/object/apply:os.system ['touch {marker}']")
    )
    with pytest.raises(ManifestError):
        load_manifests([path])
    assert not marker.exists()


def test_the_cli_never_prints_a_traceback_on_fuzzed_manifests(tmp_path: Path) -> None:
    rng = random.Random(20260526)
    cases: list[Path] = []
    for n in range(24):
        folder = tmp_path / f"case{n}"
        folder.mkdir()
        text = rng.choice(SEED_TEXTS)
        for _ in range(rng.randrange(1, 4)):
            text = mutate(text, rng)
        if n % 6 == 0:
            (folder / "m.yaml").write_bytes(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))))
        else:
            (folder / "m.yaml").write_text(text, encoding="utf-8", errors="surrogatepass")
        cases.append(folder)
    # the quickstart PhotoGPT manifest, with its images, among them
    shutil.copy(ROOT / "specs" / "photogpt.yaml", cases[1] / "photogpt.yaml")

    # in-process, through the entry point's exception mapping: an uncaught exception comes back as
    # the interpreter would print it (a traceback, exit code 1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    results = [(folder, run_in_process(("validate", str(folder)), env, tmp_path)) for folder in cases]
    invalid = 0
    for folder, proc in results:
        assert proc.code in (0, 1), (folder, proc.stderr[-2000:])
        assert "Traceback" not in proc.stdout + proc.stderr, (folder, proc.stderr[-2000:])
        if proc.code == 1:
            invalid += 1
            lines = proc.stderr.strip().splitlines()
            assert re.fullmatch(r"\d+ problems? found", lines[-1]), lines[-1]
            for line in lines[:-1]:
                m = PROBLEM_LINE.match(line)
                assert m and m["file"].startswith(str(folder)), line
    assert invalid >= 12  # most mutations break something, and every break is reported


@pytest.mark.parametrize("value", ["[1, 2]", "{a: 1}", "[]", "null"])
def test_a_list_or_mapping_where_a_duration_belongs_is_a_problem(tmp_path: Path, value: str) -> None:
    path = tmp_path / "d.yaml"
    text = SEED_TEXTS[0]
    assert "retrain_after: 30d" in text
    path.write_text(text.replace("retrain_after: 30d", f"retrain_after: {value}"))
    if value == "null":
        load_manifests([path])  # optional field: null means "never"
        return
    with pytest.raises(ManifestError) as info:
        load_manifests([path])
    (problem,) = info.value.problems
    assert "retrain_after" in problem.message and "duration" in problem.message and problem.line > 1
