"""`reconciler schema [PATHS]` agrees with `validate` (issue 11): every shipped manifest passes
check-jsonschema with format checks on, and broken manifests are rejected by both.

check-jsonschema reads one document per file, so each manifest document is written to its own
JSON file first (yaml-language-server also checks per document)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from click.testing import CliRunner

from reconciler.cli import cli
from reconciler.errors import ManifestError
from reconciler.schema import DURATION_PATTERN, TIMESTAMP_PATTERN, json_schema
from reconciler.spec import load_manifests

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

GOOD: dict[str, Any] = {
    "apiVersion": "reconciler/v1",
    "kind": "TrainedModel",
    "metadata": {"name": "good-model"},
    "spec": {"provider": "roboflow", "model": {"workspace": "acme", "project": "hats"}, "training": {"version": 1}},
}


def documents(paths: list[Path]) -> list[dict]:  # type: ignore[type-arg]
    docs = []
    for f in paths:
        for d in yaml.safe_load_all(f.read_text()):
            if isinstance(d, dict) and d.get("kind") in ("TrainedModel", "Provider"):
                docs.append(d)
    return docs


def shipped() -> list[Path]:
    return sorted([*ROOT.joinpath("specs").rglob("*.yaml"), *ROOT.joinpath("examples").rglob("*.yaml")])


def test_every_shipped_manifest_passes_check_jsonschema(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["schema", str(ROOT / "specs"), str(ROOT / "examples")])
    assert res.exit_code == 0, res.output
    schema = tmp_path / "schema.json"
    schema.write_text(res.output)
    docs = documents(shipped())
    assert len(docs) >= 10
    files = []
    for i, d in enumerate(docs):
        f = tmp_path / f"doc{i}.json"
        f.write_text(json.dumps(d, default=str))
        files.append(str(f))
    run = subprocess.run(
        [str(BIN / "check-jsonschema"), "--schemafile", str(schema), *files], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "format" not in {
        k for d in _walk(json.loads(res.output)) for k in d if d.get("format") in ("duration", "date-time")
    }


def _walk(node: object) -> list[dict]:  # type: ignore[type-arg]
    if isinstance(node, dict):
        return [node, *[x for v in node.values() for x in _walk(v)]]
    if isinstance(node, list):
        return [x for v in node for x in _walk(v)]
    return []


def broken() -> list[tuple[str, dict]]:  # type: ignore[type-arg]
    def spec(**kw: object) -> dict:  # type: ignore[type-arg]
        return {**GOOD, "spec": {**GOOD["spec"], **kw}}

    def training(**kw: object) -> dict:  # type: ignore[type-arg]
        return spec(training={"version": 1, **kw})

    def policy(**kw: object) -> dict:  # type: ignore[type-arg]
        return spec(policy=kw)

    return [
        ("upper-case name", {**GOOD, "metadata": {"name": "Bad_Name"}}),
        ("name with a dot", {**GOOD, "metadata": {"name": "a.b"}}),
        ("name ends with -", {**GOOD, "metadata": {"name": "a-"}}),
        ("name too long", {**GOOD, "metadata": {"name": "a" * 64}}),
        ("wrong apiVersion", {**GOOD, "apiVersion": "reconciler/v2"}),
        ("unknown top field", {**GOOD, "extra": 1}),
        ("unknown kind", {**GOOD, "kind": "Model"}),
        ("unknown provider", spec(provider="nope")),
        ("missing model", {**GOOD, "spec": {"provider": "roboflow"}}),
        ("unknown model field", spec(model={"workspace": "a", "project": "b", "x": 1})),
        ("empty project", spec(model={"workspace": "a", "project": ""})),
        ("version 0", training(version=0)),
        ("version as string", training(version="1")),
        ("epochs too many", training(epochs=10001)),
        ("bad speed", training(speed="slow")),
        ("unknown training field", training(foo=1)),
        ("bad drift", policy(drift="maybe")),
        ("ISO duration", policy(retrain_after="P30D")),
        ("duration word", policy(retrain_after="soon")),
        ("negative duration", policy(retrain_after=-1)),
        ("duration with bad unit", policy(retrain_after="30y")),
        (
            "rebase: bad date",
            {
                **GOOD,
                "spec": {
                    "provider": "rebase",
                    "model": {"site_id": "s"},
                    "training": {"splits": [{"start_date": "yesterday", "end_date": "2023-01-02T00:00Z"}]},
                },
            },
        ),
        (
            "rebase: empty splits",
            {**GOOD, "spec": {"provider": "rebase", "model": {"site_id": "s"}, "training": {"splits": []}}},
        ),
        (
            "provider bad type",
            {"apiVersion": "reconciler/v1", "kind": "Provider", "metadata": {"name": "p"}, "spec": {"type": "x"}},
        ),
        (
            "provider bad poll",
            {
                "apiVersion": "reconciler/v1",
                "kind": "Provider",
                "metadata": {"name": "p"},
                "spec": {"type": "roboflow", "poll_interval": "PT5M"},
            },
        ),
    ]


@pytest.mark.parametrize(("why", "doc"), broken(), ids=[w for w, _ in broken()])
def test_broken_manifests_are_rejected_by_both(why: str, doc: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    f = tmp_path / "m.yaml"
    f.write_text(yaml.safe_dump(doc))
    with pytest.raises(ManifestError):
        load_manifests([f])
    assert not jsonschema.Draft202012Validator(json_schema()).is_valid(doc), why


def test_good_spellings_are_accepted_by_both(tmp_path: Path) -> None:
    import re

    for text in ("30d", "5m", "1h30m", "90s", "2w", "1.5h", "10", "1H"):
        assert re.match(DURATION_PATTERN, text), text
    for text in ("2023-01-01T00:00Z", "2023-01-01T00:00:00Z", "2023-01-01T00:00:00+02:00", "2023-01-01"):
        assert re.match(TIMESTAMP_PATTERN, text), text
    doc = {**GOOD, "spec": {**GOOD["spec"], "policy": {"retrain_after": "30d"}}}
    f = tmp_path / "m.yaml"
    f.write_text(yaml.safe_dump(doc))
    load_manifests([f])
    assert jsonschema.Draft202012Validator(json_schema()).is_valid(doc)


def test_named_providers_get_their_types_fields(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(
        "apiVersion: reconciler/v1\nkind: Provider\nmetadata: {name: rf-prod}\nspec: {type: roboflow}\n"
    )
    schema = json_schema([tmp_path])
    bad = {**GOOD, "spec": {**GOOD["spec"], "provider": "rf-prod", "training": {"version": 0}}}
    good = {**GOOD, "spec": {**GOOD["spec"], "provider": "rf-prod"}}
    assert jsonschema.Draft202012Validator(schema).is_valid(good)
    assert not jsonschema.Draft202012Validator(schema).is_valid(bad)
    assert "unique across all files" in schema["description"]
