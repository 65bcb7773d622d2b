"""Two TrainedModels on one provider model are a validation error naming both (issue 13)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import Workspace, roboflow_model, write_text
from hypothesis import given
from hypothesis import strategies as st

from reconciler.errors import ManifestError
from reconciler.providers.catalog import CATALOG, provider_type
from reconciler.providers.roboflow.schema import RoboflowModel
from reconciler.spec import load_manifests

LUCID = """\
apiVersion: reconciler/v1
kind: TrainedModel
metadata: {name: NAME}
spec:
  provider: PROVIDER
  model: {model_id: MODEL_ID}
"""


def provider(name: str, type_name: str, base_url: str | None = None) -> str:
    url = f", base_url: {base_url!r}" if base_url else ""
    return f"apiVersion: reconciler/v1\nkind: Provider\nmetadata: {{name: {name}}}\nspec: {{type: {type_name}{url}}}\n"


def lucid(name: str, model_id: str, provider_name: str = "lucid") -> str:
    return LUCID.replace("NAME", name).replace("MODEL_ID", model_id).replace("PROVIDER", provider_name)


def problems(root: Path) -> list[str]:
    with pytest.raises(ManifestError) as exc:
        load_manifests([root])
    return [str(p) for p in exc.value.problems]


@pytest.mark.parametrize("type_name", sorted(CATALOG))
def test_every_type_names_its_identity_fields(type_name: str) -> None:
    ptype = provider_type(type_name)
    assert ptype.identity_fields
    assert set(ptype.identity_fields) <= set(ptype.model_schema.model_fields)


@given(
    st.tuples(st.text(min_size=1).filter(lambda s: "/" not in s), st.text(min_size=1).filter(lambda s: "/" not in s)),
    st.tuples(st.text(min_size=1).filter(lambda s: "/" not in s), st.text(min_size=1).filter(lambda s: "/" not in s)),
)
def test_roboflow_identity_is_workspace_and_project(a: tuple[str, str], b: tuple[str, str]) -> None:
    roboflow = provider_type("roboflow")
    ia = roboflow.model_identity(RoboflowModel(workspace=a[0], project=a[1]))
    ib = roboflow.model_identity(RoboflowModel(workspace=b[0], project=b[1]))
    assert ia == f"{a[0]}/{a[1]}"
    assert (ia == ib) == (a == b)


def test_two_models_on_one_project_name_each_other(tmp_path: Path) -> None:
    write_text(tmp_path / "a.yaml", roboflow_model("hardhats-v3", version=3))
    write_text(tmp_path / "b.yaml", "# the same project, another version\n" + roboflow_model("hardhats-v4", version=4))
    found = problems(tmp_path)
    assert len(found) == 2, found
    first, second = found
    assert first.startswith(f"{tmp_path / 'a.yaml'}:4:") and second.startswith(f"{tmp_path / 'b.yaml'}:5:")
    for p in found:
        assert "'hardhats-v3'" in p and "'hardhats-v4'" in p
        assert f"{tmp_path / 'a.yaml'}:4:" in p.partition(": ")[2] and f"{tmp_path / 'b.yaml'}:5:" in p
        assert "'acme/hardhats'" in p and "https://api.roboflow.com" in p


def test_other_projects_types_and_hosts_do_not_clash(tmp_path: Path) -> None:
    write_text(tmp_path / "a.yaml", roboflow_model("hardhats"))
    write_text(tmp_path / "b.yaml", roboflow_model("forklifts", project="forklifts"))
    write_text(tmp_path / "c.yaml", roboflow_model("other-ws", workspace="globex"))
    # the same id at two Lucid hosts names two models
    write_text(tmp_path / "p.yaml", provider("lucid-eu", "lucid", "https://eu.lucid.example"))
    write_text(tmp_path / "p2.yaml", provider("lucid-us", "lucid", "https://us.lucid.example"))
    write_text(
        tmp_path / "d.yaml", lucid("recs-eu", "recs", "lucid-eu") + "---\n" + lucid("recs-us", "recs", "lucid-us")
    )
    # and the same id at another type is another model
    write_text(tmp_path / "e.yaml", lucid("recs-default", "hardhats"))
    trust_env = {"RECONCILER_ALLOWED_ORIGINS": "https://eu.lucid.example,https://us.lucid.example"}
    from reconciler.providers.catalog import base_urls
    from reconciler.providers.origins import TrustPolicy

    ms = load_manifests([tmp_path], trust=TrustPolicy.from_env(trust_env, base_urls()))
    assert len(ms.models) == 6


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (None, "https://API.roboflow.com:443/"),  # the built-in host, spelled another way
        ("https://api.roboflow.com", "https://api.roboflow.com/"),
    ],
)
def test_two_providers_on_one_host_clash(tmp_path: Path, first: str | None, second: str) -> None:
    write_text(
        tmp_path / "p.yaml", provider("rf-one", "roboflow", first) + "---\n" + provider("rf-two", "roboflow", second)
    )
    write_text(tmp_path / "a.yaml", roboflow_model("one").replace("provider: roboflow", "provider: rf-one"))
    write_text(tmp_path / "b.yaml", roboflow_model("two").replace("provider: roboflow", "provider: rf-two"))
    found = problems(tmp_path)
    assert len(found) == 2 and all("'one'" in p and "'two'" in p for p in found), found


def test_lucid_providers_without_base_url_share_the_operators_host(tmp_path: Path) -> None:
    write_text(tmp_path / "p.yaml", provider("lucid-a", "lucid") + "---\n" + provider("lucid-b", "lucid"))
    write_text(tmp_path / "m.yaml", lucid("a", "recs", "lucid-a") + "---\n" + lucid("b", "recs", "lucid-b"))
    found = problems(tmp_path)
    assert len(found) == 2 and all("RECONCILER_LUCID_BASE_URL" in p for p in found), found


def test_plan_refuses_before_any_request(workspace: Workspace) -> None:
    """What happened before: the second model's train call got a 409, then unknown-baseline."""
    workspace.write("a.yaml", roboflow_model("hardhats-v3", version=3))
    workspace.write("b.yaml", roboflow_model("hardhats-v4", version=4))
    for command in ("validate", "plan", "apply"):
        res = workspace.run(command)
        assert res.code == 1, (command, res.output)
        assert "'hardhats-v3'" in res.stderr and "'hardhats-v4'" in res.stderr and "2 problems found" in res.stderr
    assert workspace.sandbox.requests("roboflow") == []
