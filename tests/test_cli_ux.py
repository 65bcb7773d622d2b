"""The CLI as users meet it (issue 13): selectors, messages, status documents, validate's reach."""

from __future__ import annotations

import pytest
from helpers import Workspace, roboflow_model

from reconciler.selectors import SelectorError, matches, parse_selectors

VISION = roboflow_model(labels="{team: vision, tier: gold}")
OPS = roboflow_model("forklift-detector", project="forklifts", version=2, labels="{team: ops}")
ENERGY = roboflow_model("panel-detector", project="panels", version=1, labels="{team: energy, tier: silver}")


@pytest.mark.parametrize(
    ("selectors", "picked"),
    [
        (["team=vision"], {"hardhat-detector"}),
        (["team==vision"], {"hardhat-detector"}),
        (["team!=energy"], {"hardhat-detector", "forklift-detector"}),
        (["team in (vision,ops)"], {"hardhat-detector", "forklift-detector"}),
        (["team notin (vision, ops)"], {"panel-detector"}),
        (["tier"], {"hardhat-detector", "panel-detector"}),
        (["!tier"], {"forklift-detector"}),
        (["team!=ops,tier"], {"hardhat-detector", "panel-detector"}),
        (["tier", "team=energy"], {"panel-detector"}),  # repeated flags are ANDed
        (["team in (vision,energy)", "tier notin (gold)"], {"panel-detector"}),
    ],
)
def test_selector_grammar(selectors: list[str], picked: set[str]) -> None:
    labels = {
        "hardhat-detector": {"team": "vision", "tier": "gold"},
        "forklift-detector": {"team": "ops"},
        "panel-detector": {"team": "energy", "tier": "silver"},
    }
    reqs = parse_selectors(selectors)
    assert {n for n, ls in labels.items() if matches(reqs, ls)} == picked


@pytest.mark.parametrize("bad", ["", "team=", "=x", "team in (a,,b)", "team in a", "a=b=c", "team!"])
def test_selector_errors(bad: str) -> None:
    if bad == "team=":  # kubectl allows an empty value: it matches an empty label
        assert parse_selectors([bad])[0].values == frozenset([""])
        return
    with pytest.raises(SelectorError):
        parse_selectors([bad])


def test_selectors_on_the_cli(workspace: Workspace) -> None:
    ws = workspace
    ws.write("a.yaml", VISION)
    ws.write("b.yaml", OPS)
    ws.write("c.yaml", ENERGY)
    plan = ws.run("plan", "-l", "team!=energy", "--selector", "!tier", "-o", "json")
    assert [m["name"] for m in plan.json()["models"]] == ["forklift-detector"], plan.output
    for command in ("plan", "apply", "status"):
        none = ws.run(command, "--selector", "team=nobody")
        assert none.code == 1, (command, none.output)
        assert "--selector matches no model in the manifests" in none.stderr
    bad = ws.run("plan", "--selector", "team in vision")
    assert bad.code == 1 and "--selector" in bad.stderr


def test_adopt_names_the_missing_model(workspace: Workspace) -> None:
    workspace.write("a.yaml", VISION)
    res = workspace.run("adopt", "nosuch")
    assert res.code == 1
    assert "no model named 'nosuch' in the manifests" in res.stderr
    assert "--target" not in res.stderr


def test_status_json_prints_errors_when_manifests_are_invalid(workspace: Workspace) -> None:
    workspace.write("a.yaml", VISION.replace("epochs: 100", "epochs: many"))
    res = workspace.run("status", "-o", "json")
    assert res.code == 1
    doc = res.json()
    assert doc["models"] == [] and any("epochs" in e for e in doc["errors"])
