"""The trust boundary (docs/security.md): a manifest cannot send a key, a file or a request where the
operator did not allow. Each attack runs against a listener on 127.0.0.1 that must receive nothing."""

from __future__ import annotations

import dataclasses
import http.server
import ipaddress
import logging
import os
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ROOT, Workspace
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler import runtime
from reconciler.daemon import DaemonOptions
from reconciler.daemon.app import build_app
from reconciler.daemon.lifecycle import Daemon
from reconciler.engine import Engine
from reconciler.errors import ConfigError, OriginNotAllowedError
from reconciler.providers.http import HttpClient
from reconciler.providers.origins import TrustPolicy, origin, origin_refusal
from reconciler.providers.photogpt.images import GlobError, match_images, scan_images
from reconciler.providers.policy import Auth
from reconciler.spec import load_manifests

SECRET = "s3cret-token-value-0123456789"
ROBOFLOW_MODEL = """\
apiVersion: reconciler/v1
kind: TrainedModel
metadata: {name: hardhats}
spec:
  provider: PROVIDER
  model: {workspace: acme, project: hardhats}
  training: {version: 3, model_type: rfdetr-nano, epochs: 100}
"""
PROVIDER = """\
apiVersion: reconciler/v1
kind: Provider
metadata: {name: NAME}
spec:
  type: roboflow
  base_url: URL
  api_key_env: KEYVAR
"""


class Listener:
    """An HTTP server on 127.0.0.1 that records every connection and request it gets."""

    def __init__(self, redirect_to: str | None = None) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.connections = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _any(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                self.rfile.read(length)
                outer.requests.append((self.command, self.path, dict(self.headers)))
                if redirect_to is not None:
                    self.send_response(302)
                    self.send_header("Location", redirect_to + self.path)
                else:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _any

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            def verify_request(self, request: Any, client_address: Any) -> bool:
                outer.connections += 1
                return True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def received_nothing(self) -> bool:
        return self.connections == 0 and self.requests == []

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    ln = Listener()
    try:
        yield ln
    finally:
        ln.close()


def provider(name: str, url: str, keyvar: str = "ROBOFLOW_API_KEY") -> str:
    return PROVIDER.replace("NAME", name).replace("URL", url).replace("KEYVAR", keyvar)


def model(provider_name: str) -> str:
    return ROBOFLOW_MODEL.replace("PROVIDER", provider_name)


# ====================================================================== key variables


@pytest.mark.parametrize("keyvar", ["GITHUB_TOKEN", "PGPASSWORD", "RECONCILER_STATE", "AWS_SECRET_ACCESS_KEY"])
def test_a_key_variable_outside_the_allowed_names_sends_nothing(
    workspace: Workspace, listener: Listener, keyvar: str
) -> None:
    ws = workspace
    # the origin is allowed, so only the key variable's name stands between the secret and the listener
    env = ws.env(RECONCILER_ALLOWED_ORIGINS=listener.url)
    if keyvar != "RECONCILER_STATE":  # that one already holds a secret: the state URL
        env[keyvar] = SECRET
    ws.write("p.yaml", provider("stealer", listener.url, keyvar) + "---\n" + model("stealer"))
    res = ws.run("validate", env=env)
    assert res.code == 1, res.output
    (line,) = [ln for ln in res.stderr.splitlines() if "api_key_env" in ln]
    assert line.startswith("specs/p.yaml:7:") and keyvar in line, res.stderr
    assert "ROBOFLOW_API_KEY or ROBOFLOW_<NAME>_API_KEY" in line and "RECONCILER_ALLOWED_KEY_ENVS" in line
    for command in ("plan", "apply"):
        assert ws.run(command, env=env).code == 1
    assert listener.received_nothing(), listener.requests
    assert SECRET not in res.output


def test_a_key_variable_the_operator_lists_is_allowed(workspace: Workspace, listener: Listener) -> None:
    ws = workspace
    ws.write("p.yaml", provider("custom", listener.url, "GITHUB_TOKEN") + "---\n" + model("custom"))
    env = ws.env(
        GITHUB_TOKEN=SECRET, RECONCILER_ALLOWED_ORIGINS=listener.url, RECONCILER_ALLOWED_KEY_ENVS="GITHUB_TOKEN"
    )
    assert ws.run("validate", env=env).code == 0
    ws.run("plan", env=env)
    assert listener.requests, "the operator allowed both: plan talks to the listener"


def test_a_named_key_variable_of_the_type_works(workspace: Workspace) -> None:
    """`ROBOFLOW_PROD_API_KEY` is a roboflow key variable: plan runs against the sandbox with it."""
    ws = workspace
    ws.write("p.yaml", provider("roboflow-prod", ws.sandbox.base_url("roboflow"), "ROBOFLOW_PROD_API_KEY"))
    ws.write("m.yaml", model("roboflow-prod"))
    env = ws.env(ROBOFLOW_PROD_API_KEY=ws.sandbox.sim("roboflow").api_key)
    res = ws.run("plan", "--output", "json", env=env)
    assert res.code == 2, res.output
    assert res.json()["models"][0]["action"] == "train"


def test_key_variable_names_per_type() -> None:
    trust = runtime.trust({})
    assert trust.key_env_problem("roboflow", "ROBOFLOW_API_KEY") is None
    assert trust.key_env_problem("roboflow", "ROBOFLOW_PROD_2_API_KEY") is None
    for bad in ("PREDICTHQ_API_KEY", "roboflow_api_key", "ROBOFLOW_KEY", "ROBOFLOW__API_KEYX", "GITHUB_TOKEN"):
        assert trust.key_env_problem("roboflow", bad) is not None, bad
    assert (
        runtime.trust({"RECONCILER_ALLOWED_KEY_ENVS": "A_KEY, GITHUB_TOKEN"}).key_env_problem(
            "roboflow", "GITHUB_TOKEN"
        )
        is None
    )
    with pytest.raises(ConfigError, match="RECONCILER_ALLOWED_KEY_ENVS"):
        runtime.trust({"RECONCILER_ALLOWED_KEY_ENVS": "lower-case"})


# ====================================================================== origins


def test_a_base_url_at_another_origin_sends_nothing(workspace: Workspace, listener: Listener) -> None:
    ws = workspace
    ws.write("p.yaml", provider("rf", listener.url + "/x") + "---\n" + model("rf"))
    res = ws.run("validate")
    assert res.code == 1
    (line,) = [ln for ln in res.stderr.splitlines() if "base_url" in ln]
    assert line.startswith("specs/p.yaml:6:") and "not an allowed origin" in line, res.stderr
    assert "RECONCILER_ROBOFLOW_BASE_URL" in line and "RECONCILER_ALLOWED_ORIGINS" in line
    for command in ("plan", "apply", "status"):
        assert ws.run(command).code == 1
    assert listener.received_nothing(), listener.requests


def test_an_https_host_of_the_authors_choice_is_refused_offline(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(provider("rf", "https://evil.example/api") + "---\n" + model("rf"))
    with pytest.raises(Exception, match=r"p.yaml:6:\d+: base_url 'https://evil.example/api': https://evil.example:443"):
        load_manifests([tmp_path])


def test_a_type_named_provider_cannot_redirect_the_type(workspace: Workspace, listener: Listener) -> None:
    ws = workspace
    ws.write("p.yaml", provider("roboflow", listener.url))
    ws.write("m.yaml", model("roboflow"))
    res = ws.run("plan")
    assert res.code == 1 and "specs/p.yaml:6:" in res.stderr and "not an allowed origin" in res.stderr
    assert listener.received_nothing(), listener.requests


def test_a_type_named_provider_is_announced(workspace: Workspace) -> None:
    ws = workspace
    ws.write("p.yaml", provider("roboflow", ws.sandbox.base_url("roboflow")))
    ws.write("m.yaml", model("roboflow"))
    for command in ("validate", "plan"):
        res = ws.run(command)
        assert res.code in (0, 2), res.output
        (notice,) = [ln for ln in res.stderr.splitlines() if ln.startswith("notice:")]
        assert "specs/p.yaml:3:" in notice and "replaces the built-in roboflow defaults" in notice


def test_an_origin_the_operator_lists_is_allowed(workspace: Workspace) -> None:
    """The positive path: a base_url outside the type's origins works once listed in RECONCILER_ALLOWED_ORIGINS."""
    ws = workspace
    url = ws.sandbox.base_url("roboflow")
    ws.write("p.yaml", provider("rf", url) + "---\n" + model("rf"))
    env = ws.env()
    env.pop("RECONCILER_ROBOFLOW_BASE_URL")
    assert ws.run("validate", env=env).code == 1  # not allowed by default
    env["RECONCILER_ALLOWED_ORIGINS"] = f"https://other.example, {ws.sandbox.url.upper()}"
    res = ws.run("plan", "--output", "json", env=env)
    assert res.code == 2, res.output
    assert res.json()["models"][0]["action"] == "train"


def test_a_redirect_to_another_origin_sends_nothing_there(workspace: Workspace, listener: Listener) -> None:
    ws = workspace
    redirector = Listener(redirect_to=listener.url)
    try:
        ws.write("m.yaml", model("roboflow"))
        res = ws.run("plan", "--output", "json", env=ws.env(RECONCILER_ROBOFLOW_BASE_URL=redirector.url))
        assert res.code == 1
        assert "302" in res.json()["models"][0]["reasons"][0]["detail"]
        assert redirector.requests, "the provider was asked"
        assert listener.received_nothing(), listener.requests
    finally:
        redirector.close()


async def test_the_client_refuses_a_url_outside_its_origins_whatever_the_caller(listener: Listener) -> None:
    http = HttpClient(
        "rf",
        listener.url,
        api_key=SECRET,
        auth=Auth(query_param="api_key"),
        allowed_origins={"https://api.roboflow.com:443"},
    )
    with pytest.raises(OriginNotAllowedError, match="not an allowed origin"):
        await http.request("GET", "/x")
    await http.aclose()
    # a path that smuggles another host in as userinfo is refused too
    http = HttpClient("rf", "https://api.roboflow.com", api_key=SECRET, auth=Auth(query_param="api_key"))
    with pytest.raises(OriginNotAllowedError):
        await http.request("GET", "@" + listener.url.removeprefix("http://") + "/x")
    await http.aclose()
    assert listener.received_nothing(), listener.requests


def test_the_engine_refuses_a_provider_config_that_skipped_validation(tmp_path: Path, listener: Listener) -> None:
    (tmp_path / "m.yaml").write_text(model("roboflow"))
    manifests = load_manifests([tmp_path])
    cfg = manifests.providers["roboflow"]
    manifests.providers["roboflow"] = dataclasses.replace(cfg, base_url=listener.url)
    no_state: Any = None
    engine = Engine(manifests, no_state, env={"ROBOFLOW_API_KEY": SECRET})
    with pytest.raises(ConfigError, match="not an allowed origin"):
        engine.adapter("roboflow")
    assert listener.received_nothing()


def test_allowed_origins_come_from_builtin_env_and_list() -> None:
    trust = runtime.trust(
        {"RECONCILER_LUCID_BASE_URL": "https://Lucid.Example.com/", "RECONCILER_ALLOWED_ORIGINS": "http://127.0.0.1:9"}
    )
    assert trust.origins_for("roboflow") == {"https://api.roboflow.com:443", "http://127.0.0.1:9"}
    assert trust.origins_for("lucid") == {"https://lucid.example.com:443", "http://127.0.0.1:9"}
    with pytest.raises(ConfigError, match="RECONCILER_ALLOWED_ORIGINS"):
        runtime.trust({"RECONCILER_ALLOWED_ORIGINS": "https://user@host"})


def test_the_daemon_gets_the_policy_from_the_environment(tmp_path: Path) -> None:
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "p.yaml").write_text(provider("rf", "https://evil.example") + "---\n" + model("rf"))
    opts = DaemonOptions(paths=[str(specs)], state_url=f"sqlite:///{tmp_path / 'state.db'}", resync=timedelta(hours=1))
    d = Daemon(opts, env={})
    d._load("startup")
    assert any("not an allowed origin" in p.message for p in d.problems), d.problems
    allowed = Daemon(opts, env={"RECONCILER_ALLOWED_ORIGINS": "https://evil.example"})
    allowed._load("startup")
    assert allowed.problems == [] and "hardhats" in allowed.manifests.models


# ---------------------------------------------------------------------- the origin check, by property

HOSTS = st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9](\.[a-z][a-z0-9-]{0,10}[a-z0-9]){1,3}", fullmatch=True)
PORTS = st.integers(1, 65535)


@settings(max_examples=200, deadline=None)
@given(
    host=HOSTS, evil=HOSTS, scheme=st.sampled_from(["http", "https"]), sep=st.sampled_from(["@", ":x@", "%40", "\\@"])
)
def test_userinfo_and_smuggled_hosts_are_never_an_allowed_origin(host: str, evil: str, scheme: str, sep: str) -> None:
    allowed = {origin(f"{scheme}://{host}")}
    for url in (f"{scheme}://{host}{sep}{evil}", f"{scheme}://{host}{sep}{evil}/x", f"{scheme}://{evil}{sep}{host}"):
        assert origin_refusal(url, allowed) is not None, url


@settings(max_examples=200, deadline=None)
@given(
    host=HOSTS,
    scheme=st.sampled_from(["http", "https"]),
    enc=st.sampled_from(["%2e", "%2E", "%2f", "%5c", "%00", "\\", " "]),
)
def test_encoded_dots_and_slashes_are_refused(host: str, scheme: str, enc: str) -> None:
    first, _, rest = host.partition(".")
    with pytest.raises(ValueError):
        origin(f"{scheme}://{first}{enc}{rest}")


@settings(max_examples=200, deadline=None)
@given(host=HOSTS, scheme=st.sampled_from(["http", "https"]), flips=st.lists(st.booleans(), min_size=40, max_size=40))
def test_case_trailing_dots_and_default_ports_normalise(host: str, scheme: str, flips: list[bool]) -> None:
    default = {"http": 80, "https": 443}[scheme]
    mixed = "".join(c.upper() if f else c for c, f in zip(host, flips * 2, strict=False))
    expected = f"{scheme}://{host}:{default}"
    for url in (
        f"{scheme}://{host}",
        f"{scheme.upper()}://{mixed}/a",
        f"{scheme}://{host}.:{default}",
        f"{scheme}://{mixed}:{default}",
    ):
        assert origin(url) == expected, url
    assert origin_refusal(f"{scheme}://{host}:{default + 1}", {expected}) is not None
    assert origin_refusal(f"{'https' if scheme == 'http' else 'http'}://{host}", {expected}) is not None
    with pytest.raises(ValueError):
        origin(f"{scheme}://{host}..")


@settings(max_examples=200, deadline=None)
@given(address=st.ip_addresses(v=6), port=PORTS)
def test_ipv6_literals_normalise(address: ipaddress.IPv6Address, port: int) -> None:
    expected = f"https://[{address.compressed}]:{port}"
    assert origin(f"https://[{address.exploded.upper()}]:{port}") == expected
    assert origin(f"https://[{address.compressed}]:{port}/x") == expected
    with pytest.raises(ValueError):
        origin(f"https://{address.compressed}:{port}")  # without brackets it is no host


@settings(max_examples=200, deadline=None)
@given(
    host=HOSTS,
    scheme=st.sampled_from(["http", "https"]),
    port=st.one_of(st.none(), PORTS),
    path=st.text("ab/%.@:?#", max_size=12),
)
def test_an_accepted_url_is_where_httpx_connects(host: str, scheme: str, port: int | None, path: str) -> None:
    url = f"{scheme}://{host}{f':{port}' if port else ''}/{path}"
    try:
        found = origin(url)
    except ValueError:
        return
    u = httpx.URL(url)
    assert found == f"{u.scheme}://{u.host}:{u.port or {'http': 80, 'https': 443}[u.scheme]}"


def test_numeric_hosts_only_as_dotted_quads() -> None:
    assert origin("http://127.0.0.1:8080") == "http://127.0.0.1:8080"
    for url in ("http://127.1", "http://0x7f.0.0.1", "http://2130706433", "http://127.000.000.001"):
        with pytest.raises(ValueError):
            origin(url)
    assert origin("https://bücher.example") == "https://xn--bcher-kva.example:443"
    assert TrustPolicy().origins_for("roboflow") == frozenset()


# ====================================================================== input images

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 8


def images(folder: Path, n: int = 12) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"f{i:02}.png").write_bytes(PNG + bytes([i]))
    return folder


PHOTOGPT = """\
apiVersion: reconciler/v1
kind: TrainedModel
metadata: {name: portrait}
spec:
  provider: photogpt
  model: {model_id: 018f5f29-7c2b-7b4e-9a8c-4f8b4c2d1e0f}
  training:
    input_images: "GLOB"
"""


@pytest.mark.parametrize("kind", ["absolute", "dotdot", "home", "symlink"])
def test_files_outside_the_repository_are_never_read_or_uploaded(workspace: Workspace, kind: str) -> None:
    ws = workspace
    outside = images(ws.root.parent / "outside")
    home = ws.root.parent / "home"
    images(home / "photos")
    (ws.specs / "faces").symlink_to(outside)
    glob = {
        "absolute": f"{outside}/*.png",
        "dotdot": "../../outside/*.png",
        "home": "~/photos/*.png",
        "symlink": "faces/*.png",
    }[kind]
    ws.write("m.yaml", PHOTOGPT.replace("GLOB", glob))
    env = ws.env(HOME=str(home))
    res = ws.run("validate", env=env)
    assert res.code == 1, res.output
    (line,) = [ln for ln in res.stderr.splitlines() if "input_images" in ln or "outside" in ln]
    assert line.startswith("specs/m.yaml:8:"), res.stderr
    assert ws.run("apply", env=env).code == 1
    assert ws.sandbox.requests("photogpt") == []
    # nor by the adapter's own walk, whatever validate said
    images_, problems = scan_images(glob, ws.specs, ws.specs)
    assert images_ == [] and problems


def test_images_elsewhere_in_the_git_repository_are_allowed(tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()
    images(tmp_path / "data" / "faces")
    specs = tmp_path / "deploy" / "specs"
    specs.mkdir(parents=True)
    (specs / "m.yaml").write_text(PHOTOGPT.replace("GLOB", "../../data/faces/*.png"))
    (m,) = load_manifests([specs]).models.values()
    assert m.root == tmp_path.resolve()
    assert len(scan_images("../../data/faces/*.png", m.manifest_dir, m.root)[0]) == 12
    (tmp_path / "data" / "link").symlink_to(tmp_path / "data" / "faces")  # a symlink inside stays inside
    assert len(match_images("../../data/link/*.png", specs, tmp_path)) == 12


@pytest.mark.parametrize("glob", ["~/../../**/*.png", "../../../**/*.png", "/**/*.png", "../../../../../../**/*"])
def test_a_filesystem_walking_glob_fails_fast(tmp_path: Path, glob: str) -> None:
    started = time.perf_counter()
    _, problems = scan_images(glob, tmp_path / "a" / "b")
    elapsed = time.perf_counter() - started
    assert problems and ("outside the repository" in problems[0] or "relative to the manifest" in problems[0])
    assert elapsed < 10, elapsed


def test_a_filesystem_walking_glob_fails_fast_in_validate(workspace: Workspace) -> None:
    ws = workspace
    ws.write("m.yaml", PHOTOGPT.replace("GLOB", "../../../**/*.png"))
    res = ws.run("validate")
    assert res.code == 1 and "specs/m.yaml:8:" in res.stderr and "outside the repository" in res.stderr


def test_the_walk_is_bounded_inside_the_repository(tmp_path: Path) -> None:
    for folder, count, suffix in (("wide", 10_001, "txt"), ("many", 1_001, "png")):
        (tmp_path / folder).mkdir()
        for i in range(count):
            (tmp_path / folder / f"{i}.{suffix}").touch()
    with pytest.raises(GlobError, match="visits more than 10,000 entries"):
        match_images("wide/**/*.png", tmp_path)
    with pytest.raises(GlobError, match="matches more than 1,000 files"):
        match_images("many/*.png", tmp_path)
    # a symlink loop inside the repository ends: each folder is listed once per pattern step
    loop = images(tmp_path / "loop", 2)
    (loop / "again").symlink_to(loop)
    assert len(match_images("loop/**/*.png", tmp_path)) == 2


def test_the_quickstart_images_still_match() -> None:
    found = match_images("photogpt-images/*.png", ROOT / "specs", ROOT)
    assert len(found) == 12 and all(p.is_relative_to(ROOT / "specs") for p in found)


# ====================================================================== the Lucid webhook token


LUCID = """\
apiVersion: reconciler/v1
kind: TrainedModel
metadata: {name: shop}
spec:
  provider: lucid
  model: {model_id: shop-recs}
  training: {data_tags: [shop]}
"""


async def test_the_lucid_hook_takes_its_secret_as_a_token_and_never_shows_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "m.yaml").write_text(LUCID)
    opts = DaemonOptions(paths=[str(specs)], state_url=f"sqlite:///{tmp_path / 'state.db'}", resync=timedelta(hours=1))
    d = Daemon(opts, env={"RECONCILER_LUCID_WEBHOOK_SECRET": SECRET})
    d._load("startup")
    d.loaded = True
    caplog.set_level(logging.DEBUG)
    transport = httpx.ASGITransport(app=build_app(d))
    async with httpx.AsyncClient(transport=transport, base_url="http://daemon") as c:
        ok = await c.post("/hooks/lucid", params={"token": SECRET}, json={"model_id": "shop-recs"})
        assert ok.status_code == 202 and ok.json()["models"] == ["shop"], ok.text
        assert d.pending == {"shop": "webhook"}
        for wrong in ("", SECRET[:-1], SECRET + "x", "x" * len(SECRET)):
            bad = await c.post("/hooks/lucid", params={"token": wrong}, json={"model_id": "shop-recs"})
            assert bad.status_code == 401, wrong
        shown = (await c.get("/status")).text + (await c.get("/metrics")).text
    assert SECRET not in shown and SECRET[:-1] not in shown
    # the daemon's own lines (the test's httpx client logs the URL it was given, as any client would)
    daemon_lines = [r.getMessage() for r in caplog.records if r.name.startswith("reconciler")]
    assert daemon_lines and not any(SECRET[:8] in line for line in daemon_lines)


def test_the_token_is_documented() -> None:
    text = (ROOT / "docs" / "security.md").read_text()
    assert "RECONCILER_LUCID_CALLBACK_URL=https://host/hooks/lucid?token=" in text
    readme = (ROOT / "README.md").read_text()
    assert "RECONCILER_ALLOWED_ORIGINS" in readme and "RECONCILER_ALLOWED_KEY_ENVS" in readme
    assert "docs/security.md" in readme
    assert os.path.exists(ROOT / "examples" / "ci" / "github-actions.yaml")
