"""The API checks workspace membership in one place, `route()`: every route with {workspace} in its path, and any
route added later, answers 404 to a non-member before its view runs. In process (Chalice's test client), with the
services of tests/service_wiring.py."""
from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
from chalice.test import Client

from chalicelib import config
from chalicelib.schemas import SPECS, RouteSpec
from chalicelib.wiring import Wiring
from tests.conftest import REPO
from tests.service_wiring import MEMBER, OWNER, STRANGER, environment, services, workspace  # noqa: F401

pytestmark = pytest.mark.filterwarnings("ignore:IAMAuthorizer is not a supported in local mode")
PROBE = "/workspaces/{workspace}/membership-probe"
REACHED: list[Any] = []


@pytest.fixture
def api(services: Wiring, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ModuleType, list[str]]]:  # noqa: F811
    """The Chalice app over the test services; the caller is whoever the returned list names."""
    for key, value in environment().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(config, "_loaded", None)  # importing the app loads "api"; later tests get none again
    # Under a private module name, executed afresh: chalice's loader and other tests import a module named `app`.
    spec = importlib.util.spec_from_file_location("kaos_api_membership", REPO / "app" / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    caller = [STRANGER]
    monkeypatch.setattr(module, "WIRING", services)
    monkeypatch.setattr(module, "caller", lambda context: caller[0])
    yield module, caller


def _path(template: str) -> str:
    return template.replace("{workspace}", "ws-a").replace("{job}", "train-0").replace("{grid}", "grid-0") \
        .replace("{snapshot}", "0" * 64).replace("{node}", "job:train-0")


def test_every_workspace_route_refuses_a_non_member(api: tuple[ModuleType, list[str]],
                                                     services: Wiring) -> None:  # noqa: F811
    module, caller = api
    workspace(services, "ws-a", MEMBER)
    routes = [(path, method) for path, method in SPECS if "{workspace}" in path and path != PROBE]
    assert len(routes) >= 20
    with Client(module.app) as client:
        for path, method in routes:
            response = client.http.request(method, _path(path), body=b"{}",
                                           headers={"content-type": "application/json"})
            assert response.status_code == 404, (method, path, response.body)
            assert response.json_body["error"]["code"] == "NotFound", (method, path)
        caller[0] = MEMBER  # positive control: a member gets past the check (here, to the view's answer)
        assert client.http.get("/workspaces/ws-a").json_body["name"] == "ws-a"


def test_a_new_route_cannot_skip_the_check(api: tuple[ModuleType, list[str]], services: Wiring,  # noqa: F811
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    module, caller = api
    workspace(services, "ws-a", MEMBER)
    monkeypatch.setitem(SPECS, (PROBE, "GET"), RouteSpec(PROBE, "GET", "probe", 200, {"type": "object"}))
    REACHED.clear()
    if PROBE not in module.app.routes:  # a Chalice app cannot forget a route: register it once per process
        @module.route(PROBE, "GET")  # type: ignore[untyped-decorator]  # the app module is imported by name
        def probe(user: str, workspace: Any) -> dict[str, Any]:  # a view that forgot to check anything
            REACHED.append(workspace)
            return {"workspace": workspace.name}
    with Client(module.app) as client:
        refused = client.http.get(_path(PROBE))
        assert refused.status_code == 404 and REACHED == []
        caller[0] = OWNER
        assert client.http.get(_path(PROBE)).json_body == {"workspace": "ws-a"}
