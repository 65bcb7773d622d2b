"""Manifests: discovery, strict validation with file:line:col, YAML pitfalls, fingerprint."""

from __future__ import annotations

import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler import runtime
from reconciler.errors import ManifestError
from reconciler.spec import load_manifests
from reconciler.values import diff_snapshots, fingerprint, parse_duration

GOOD = """\
apiVersion: reconciler/v1
kind: TrainedModel
metadata:
  name: hardhat-detector
  labels: {team: vision}
spec:
  provider: roboflow
  model: {workspace: acme, project: hardhats}
  training: {version: 3, model_type: rfdetr-nano, epochs: 100}
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(textwrap.dedent(text))
    return p


def problems(tmp_path: Path) -> list[str]:
    with pytest.raises(ManifestError) as exc:
        load_manifests([tmp_path])
    return [str(p) for p in exc.value.problems]


def test_valid_manifest_loads_with_default_provider(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", GOOD)
    ms = load_manifests([tmp_path])
    m = ms.models["hardhat-detector"]
    assert m.provider == "roboflow" and m.provider_type == "roboflow"
    assert ms.providers["roboflow"].api_key_env == "ROBOFLOW_API_KEY"
    assert m.labels == {"team": "vision"}
    assert m.fingerprint.startswith("sha256:")


def test_files_found_recursively_multi_document(tmp_path: Path) -> None:
    write(
        tmp_path,
        "deep/er/a.yml",
        GOOD + "---\n" + GOOD.replace("hardhat-detector", "second").replace("hardhats}", "second}"),
    )
    write(tmp_path, "notes.txt", "not yaml: [")
    write(tmp_path, ".hidden/x.yaml", "garbage: [")
    ms = load_manifests([tmp_path])
    assert sorted(ms.models) == ["hardhat-detector", "second"]


def test_all_problems_reported_with_positions(tmp_path: Path) -> None:
    write(
        tmp_path,
        "a.yaml",
        """\
        apiVersion: reconciler/v1
        kind: TrainedModel
        metadata: {name: Bad_Name}
        spec:
          provider: roboflow
          model: {workspace: acme, project: hardhats, extra: 1}
          training:
            version: "3"
            epochs: 100
            epochs: 200
        ---
        apiVersion: reconciler/v1
        kind: Widget
        """,
    )
    found = problems(tmp_path)
    text = "\n".join(found)
    assert "a.yaml:3:" in text and "Bad_Name" in text
    assert "a.yaml:6:" in text and "unknown field 'spec.model.extra'" in text
    assert "a.yaml:8:" in text and "spec.training.version" in text
    assert "a.yaml:10:5: duplicate key 'epochs'" in text
    assert "a.yaml:13:" in text and "unknown kind 'Widget'" in text
    assert len(found) == 5


def test_duplicate_names_across_files(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", GOOD)
    write(tmp_path, "b.yaml", GOOD)
    (msg,) = problems(tmp_path)
    assert "b.yaml:4:" in msg and "duplicate model name 'hardhat-detector'" in msg and "a.yaml:4" in msg


def test_yaml_pitfalls_are_not_silently_coerced(tmp_path: Path) -> None:
    # `on`/`yes` stay strings (YAML 1.2), so a project called "on" is fine ...
    write(tmp_path, "a.yaml", GOOD.replace("project: hardhats", "project: on"))
    assert load_manifests([tmp_path]).models["hardhat-detector"].model.model_dump()["project"] == "on"
    # ... and `1.10` where a string is expected is an error with a hint, not "1.1"
    write(tmp_path, "a.yaml", GOOD.replace("project: hardhats", "project: 1.10"))
    (msg,) = problems(tmp_path)
    assert "spec.model.project" in msg and 'quote it: "1.10"' in msg


def test_syntax_error_has_position(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "apiVersion: reconciler/v1\nkind: [TrainedModel\n")
    (msg,) = problems(tmp_path)
    assert msg.startswith(f"{tmp_path / 'a.yaml'}:3:") and "invalid YAML" in msg


def test_unknown_provider_and_provider_manifest(tmp_path: Path) -> None:
    write(
        tmp_path,
        "a.yaml",
        GOOD.replace("provider: roboflow", "provider: roboflow-prod")
        + """\
---
apiVersion: reconciler/v1
kind: Provider
metadata: {name: roboflow-prod}
spec:
  type: roboflow
  base_url: https://api.roboflow.com
  api_key_env: RF_PROD_KEY
  max_concurrent_trainings: 1
  poll_interval: 2m
""",
    )
    # a key variable outside <TYPE>[_<NAME>]_API_KEY works once the operator allows it
    ms = load_manifests([tmp_path], trust=runtime.trust({"RECONCILER_ALLOWED_KEY_ENVS": "RF_PROD_KEY"}))
    p = ms.providers["roboflow-prod"]
    assert (p.type, p.api_key_env, p.max_concurrent_trainings, p.poll_interval) == (
        "roboflow",
        "RF_PROD_KEY",
        1,
        timedelta(minutes=2),
    )
    write(tmp_path, "a.yaml", GOOD.replace("provider: roboflow", "provider: nope"))
    (msg,) = problems(tmp_path)
    assert ":7:" in msg and "unknown provider 'nope'" in msg


def test_plain_http_to_remote_host_rejected(tmp_path: Path) -> None:
    write(
        tmp_path,
        "p.yaml",
        """\
        apiVersion: reconciler/v1
        kind: Provider
        metadata: {name: rf}
        spec: {type: roboflow, base_url: "http://api.example.com"}
        """,
    )
    write(tmp_path, "a.yaml", GOOD)
    (msg,) = problems(tmp_path)
    assert "plain http" in msg and "allow_insecure_http" in msg


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("10m", 600), ("1h30m", 5400), ("30d", 2592000), ("2w", 1209600), ("90", 90)],
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "fortnight", "10 parsecs", "-5m", "m10"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


# ---------------------------------------------------------------- fingerprint properties

BASE: dict[str, Any] = {
    "apiVersion": "reconciler/v1",
    "kind": "TrainedModel",
    "metadata": {"name": "m", "labels": {"team": "x"}},
    "spec": {
        "provider": "roboflow",
        "model": {"workspace": "acme", "project": "hardhats"},
        "training": {"version": 3, "model_type": "rfdetr-nano", "epochs": 100, "speed": "fast"},
        "policy": {"max_retries": 2},
    },
}


def _shuffle(value: Any, rnd: Any) -> Any:
    if isinstance(value, dict):
        items = list(value.items())
        rnd.shuffle(items)
        return {k: _shuffle(v, rnd) for k, v in items}
    return value


def _fp(tmp: Path, text: str) -> str:
    (tmp / "m.yaml").write_text(text)
    return load_manifests([tmp]).models["m"].fingerprint


@settings(max_examples=40, deadline=None)
@given(
    rnd=st.randoms(use_true_random=False),
    flow=st.booleans(),
    comment=st.text(alphabet="abc xyz#:-", max_size=20),
    quote=st.booleans(),
    labels=st.dictionaries(st.sampled_from(["a", "b", "team"]), st.sampled_from(["x", "y"]), max_size=2),
)
def test_cosmetic_edits_never_change_the_fingerprint(
    tmp_path_factory: pytest.TempPathFactory, rnd: Any, flow: bool, comment: str, quote: bool, labels: dict[str, str]
) -> None:
    tmp = tmp_path_factory.mktemp("fp")
    reference = _fp(tmp, yaml.safe_dump(BASE, sort_keys=True))
    doc = _shuffle(BASE, rnd)
    doc["metadata"]["labels"] = labels  # labels are not part of what is trained
    text = yaml.safe_dump(doc, default_flow_style=flow, sort_keys=False)
    if quote:  # quoting a string is cosmetic
        text = text.replace("acme", '"acme"').replace("hardhats", "'hardhats'")
    first, _, rest = text.partition("\n")
    text = f"# {comment}\n{first}  # {comment}\n{rest}"
    assert _fp(tmp, text) == reference


@settings(max_examples=40, deadline=None)
@given(epochs=st.integers(1, 5000), version=st.integers(1, 50), model_type=st.sampled_from(["rfdetr-nano", "yolov11s"]))
def test_meaningful_edits_change_the_fingerprint(
    tmp_path_factory: pytest.TempPathFactory, epochs: int, version: int, model_type: str
) -> None:
    tmp = tmp_path_factory.mktemp("fp2")
    reference = _fp(tmp, yaml.safe_dump(BASE))
    doc = yaml.safe_load(yaml.safe_dump(BASE))
    doc["spec"]["training"].update(epochs=epochs, version=version, model_type=model_type)
    changed = (epochs, version, model_type) != (100, 3, "rfdetr-nano")
    assert (_fp(tmp, yaml.safe_dump(doc)) != reference) == changed


def test_omitted_default_equals_explicit_null(tmp_path: Path) -> None:
    a = _fp(tmp_path, GOOD.replace("name: hardhat-detector", "name: m"))
    b = _fp(
        tmp_path,
        GOOD.replace("name: hardhat-detector", "name: m").replace("epochs: 100}", "epochs: 100, checkpoint: null}"),
    )
    assert a == b


KEYS = st.text(alphabet="abc_", min_size=1, max_size=3)  # field names, as in real snapshots
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(KEYS, children, max_size=3),
    max_leaves=10,
)


@given(a=st.dictionaries(KEYS, json_values, max_size=4), b=st.dictionaries(KEYS, json_values, max_size=4))
def test_diff_is_empty_exactly_when_fingerprints_match(a: dict[str, Any], b: dict[str, Any]) -> None:
    changes = diff_snapshots(a, b)
    same = fingerprint(a) == fingerprint(b)
    assert (changes == []) == same
    for c in changes:
        assert c.before != c.after


def test_diff_names_fields() -> None:
    before = {"provider": "roboflow", "training": {"epochs": 100, "version": 3}}
    after = {"provider": "roboflow", "training": {"epochs": 150, "version": 3}}
    (c,) = diff_snapshots(before, after)
    assert (c.path, c.before, c.after) == ("training.epochs", 100, 150)
