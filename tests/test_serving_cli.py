"""The client-side rules of `kaos serve` and `kaos model` that need no stack: model references, content types,
GROUP/VERSION, when a deployment counts as failed, and the refusals made before anything is sent."""
from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from kaos import operations as ops
from kaos.cli import app
from kaos.cli.common import describe
from kaos.client import Client
from kaos.settings import ClientConfig


def unreachable_client(tmp: Path) -> Client:
    """A client that would fail on any request (nothing listens on port 9): the rules must decide without one."""
    credentials = tmp / "credentials"
    credentials.write_text("[p]\naws_access_key_id = AKIAEXAMPLE\naws_secret_access_key = secret\n")
    return Client(ClientConfig(api_url="http://127.0.0.1:9", profile="p", credentials_file=str(credentials)))


def test_model_references_pass_registry_forms_and_refuse_what_no_job_id_can_be(tmp_path: Path) -> None:
    api = unreachable_client(tmp_path)
    assert ops.model_reference(api, "w", "digits/3") == "digits/3"
    assert ops.model_reference(api, "w", "digits@champion") == "digits@champion"
    full = "train-" + "0123456789abcdef01234567"
    assert ops.model_reference(api, "w", full) == full
    assert ops.model_reference(api, "w", f"model:{full}") == full
    for bad in ("digits", "model:nope", "-"):
        with pytest.raises(ops.Refused, match="GROUP@ALIAS"):
            ops.model_reference(api, "w", bad)


def test_group_version() -> None:
    assert ops.group_version("digits/12") == ("digits", 12)
    for bad in ("digits", "digits/", "digits/x", "/3", "a/b/3"):
        with pytest.raises(ops.Refused, match="GROUP/VERSION"):
            ops.group_version(bad)


def test_content_type_from_the_extension_or_the_flag() -> None:
    assert ops.content_type("rows.csv", None) == "text/csv"
    assert ops.content_type("x/rows.JSON", None) == "application/json"
    assert ops.content_type("a.npy", None) == "application/x-npy"
    assert ops.content_type("a.bin", "application/octet-stream") == "application/octet-stream"
    assert ops.content_type("-", "text/csv") == "text/csv"
    with pytest.raises(ops.Refused, match="stdin: give --content-type"):
        ops.content_type("-", None)
    with pytest.raises(ops.Refused, match=r"extension \.txt\): give --content-type"):
        ops.content_type("rows.txt", None)


def deployment(status: str, ended: bool = True, reason: str | None = None) -> dict[str, object]:
    return {"deployment": "d", "status": status, "ended_at": "t" if ended else None, "failure_reason": reason}


def test_a_deployment_failed_unless_the_endpoint_serves_it() -> None:
    live = {"status": "InService", "failure_reason": None, "deployments": [deployment("InService")]}
    assert ops.deployment_failure(live) is None
    rolled_back = {"status": "InService", "deployments": [deployment("RolledBack", reason="alarm kaos-x in ALARM")]}
    assert ops.deployment_failure(rolled_back) == "alarm kaos-x in ALARM"
    failed = {"status": "Failed", "failure_reason": "model_fn raised", "deployments": [deployment("Failed")]}
    assert ops.deployment_failure(failed) == "model_fn raised"
    assert ops.deployment_failure({"status": "Failed", "deployments": []}) == "status Failed"


def test_an_endpoint_rests_once_its_latest_deployment_ended() -> None:
    rests = ops.endpoint_rests
    assert rests({"status": "InService", "deployments": [deployment("InService")]})
    # A promotion is recorded before the status moves: InService with a running deployment is not the end.
    assert not rests({"status": "InService", "deployments": [deployment("Updating", ended=False)]})
    assert not rests({"status": "Updating", "deployments": [deployment("Updating", ended=False)]})
    assert rests({"status": "Failed", "deployments": []})
    assert rests({"status": "Deleted", "deployments": [deployment("Updating", ended=False)]})


@pytest.mark.parametrize(("args", "message"), [
    (("serve", "predict", "e", "-w", "ws", "--data", "-"), "--data stdin: give --content-type"),
    (("model", "approve", "digits", "-w", "ws"), "'digits': give GROUP/VERSION"),
    (("model", "alias", "digits", "champion", "-w", "ws"), "give either VERSION (move the alias) or --delete"),
    (("model", "alias", "digits", "champion", "2", "--delete", "-w", "ws"), "give either VERSION"),
])
def test_refused_before_anything_is_sent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...],
                                         message: str) -> None:
    """No API is configured in this home: each refusal comes before the client would need one, as the one
    message main() prints."""
    monkeypatch.setenv("KAOS_HOME", str(tmp_path))
    result = CliRunner().invoke(app, list(args))
    assert result.exception is not None
    described = describe(result.exception)
    assert described is not None and described[1] == 1 and message in described[0], described


class EndpointLogPages:
    """The one faked boundary here: the client's endpoint log pages, served in order."""

    def __init__(self, pages: list[dict[str, object]]) -> None:
        self.pages = pages
        self.tokens: list[str | None] = []

    def endpoint_logs(self, workspace: str, name: str, token: str | None) -> dict[str, object]:
        self.tokens.append(token)
        return self.pages[min(len(self.tokens), len(self.pages)) - 1]


def test_endpoint_logs_follow_until_the_endpoint_is_deleted() -> None:
    """The endpoint's pages have no `complete`: -f reads on while it serves and ends once it is Deleted and a
    page brings nothing new."""
    api = EndpointLogPages([
        {"status": "InService", "events": [{"timestamp": 1, "message": "loaded"}], "next": "t1"},
        {"status": "InService", "events": [], "next": "t1"},
        {"status": "Deleting", "events": [{"timestamp": 2, "message": "stopping"}], "next": "t2"},
        {"status": "Deleted", "events": [], "next": "t2"},
    ])
    reader = ops.EndpointLogReader(api, "w", "digits", follow=True, timeout=30)  # type: ignore[arg-type]
    assert [e["message"] for e in reader] == ["loaded", "stopping"] and reader.status == "Deleted"
    assert api.tokens[0] is None and api.tokens[-1] == "t2"
