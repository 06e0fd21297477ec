"""Provenance views on the embedded stack: paged lineage, graph renderings (dot, mermaid, svg/png via Graphviz),
depth limits and errors, and `kaos data impact` of a data snapshot or of an S3 object in a remote manifest."""
from __future__ import annotations

import html
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from kaos.client import ApiError

from .conftest import TEMPLATE, Stack, tiny_code

WS = "prov"
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` is not installed (.ci/run "
                                                                   "installs it)")


@pytest.fixture(scope="module")
def job(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("prov")
    stack.kaos("workspace", "create", WS)
    done = json.loads(stack.kaos("train", "deploy", "-w", WS, "-s", str(tiny_code(tmp)), "-d", str(TEMPLATE / "data"),
                                 "--wait", "--json").stdout)
    assert done["status"] == "COMPLETED", done
    return dict(done)


def provenance(stack: Stack, *args: str, check: bool = True) -> Any:
    return stack.kaos("train", "provenance", "-w", WS, *args, check=check)


def test_dot_and_mermaid(stack: Stack, job: dict[str, Any]) -> None:
    dot = provenance(stack, f"model:{job['id']}", "--format", "dot").stdout
    assert dot.startswith("digraph provenance {")
    assert f'"job:{job["id"]}"' in dot and f'"model:{job["id"]}"' in dot
    assert f'"job:{job["id"]}" -> "model:{job["id"]}" [label="produced"]' in dot
    assert f'"job:{job["id"]}" -> "snapshot:{job["inputs"]["data"]["training"]}" [label="used"]' in dot
    assert "shape=cylinder" in dot and "shape=box3d" in dot
    mermaid = provenance(stack, f"model:{job['id']}", "--format", "mermaid").stdout
    assert mermaid.startswith("graph LR\n")
    assert "-->|produced|" in mermaid and "-->|used|" in mermaid


@needs_dot
def test_svg_and_png_are_rendered_by_graphviz(stack: Stack, job: dict[str, Any], tmp_path: Path) -> None:
    svg = tmp_path / "graph.svg"
    provenance(stack, f"model:{job['id']}", "--format", "svg", "-o", str(svg))
    head = svg.read_text()[:200].lstrip()
    assert head.startswith(("<svg", "<?xml")), head
    assert f"job:{job['id']}" in html.unescape(svg.read_text())  # dot writes "-" as &#45;
    png = tmp_path / "graph.png"
    provenance(stack, f"model:{job['id']}", "--format", "png", "-o", str(png))
    assert png.read_bytes().startswith(b"\x89PNG")
    refused = provenance(stack, f"model:{job['id']}", "--format", "png", check=False)
    assert refused.returncode != 0 and "-o FILE" in refused.stderr


def test_text_tree_to_a_file_and_unknown_format(stack: Stack, job: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "tree.txt"
    provenance(stack, job["id"], "-o", str(out))
    assert "used" in out.read_text() and f"job:{job['id']}" in out.read_text()
    bad = provenance(stack, job["id"], "--format", "gif", check=False)
    assert bad.returncode != 0 and "--format must be one of" in " ".join(bad.stderr.split())


def test_depth_limits_the_walk(stack: Stack, job: dict[str, Any]) -> None:
    one = json.loads(provenance(stack, f"model:{job['id']}", "--depth", "1", "--json").stdout)
    assert {n["id"] for n in one["nodes"]} == {f"model:{job['id']}", f"job:{job['id']}"}
    assert one["edges"] == [{"source": f"job:{job['id']}", "rel": "produced", "target": f"model:{job['id']}"}]
    full = json.loads(provenance(stack, f"model:{job['id']}", "--json").stdout)
    # model, job, code, params, data, and two environments: the image asked for (in the fingerprint) and the one the
    # job ran in (recorded at the end: the built packages and any fidelity warning)
    assert len(full["nodes"]) == 7


@pytest.mark.parametrize("depth", ["0", "-1", "x"])
def test_bad_depth_is_a_clear_error(stack: Stack, job: dict[str, Any], depth: str) -> None:
    result = provenance(stack, job["id"], "--depth", depth, check=False)
    assert result.returncode != 0
    assert "--depth" in result.stderr, result.stderr
    # The API says the same for callers that bypass the CLI.
    with pytest.raises(ApiError) as raised:
        stack.client().request("GET", f"/workspaces/{WS}/lineage/job:{job['id']}", query={"depth": depth})
    assert raised.value.status == 400 and "depth" in raised.value.message


def test_unknown_node_is_404(stack: Stack, job: dict[str, Any]) -> None:
    with pytest.raises(ApiError) as raised:
        stack.client().lineage(WS, "job:train-000000000000000000000000", "up")
    assert raised.value.status == 404
    result = provenance(stack, "train-000000000000000000000000", check=False)
    assert result.returncode != 0 and "does not exist" in result.stderr


def test_paging_resumes_the_walk(stack: Stack, job: dict[str, Any]) -> None:
    client = stack.client()
    node = f"model:{job['id']}"
    whole = client.lineage(WS, node, "up")
    assert whole["next"] is None and whole["requests"] <= len(whole["nodes"])
    first = client.lineage(WS, node, "up", limit=2)
    assert [n["id"] for n in first["nodes"]] == [node, f"job:{job['id']}"]
    assert first["next"] and first["requests"] <= 2 + 1
    second = client.lineage(WS, node, "up", cursor=first["next"])
    assert second["next"] is None
    ids = [n["id"] for n in first["nodes"] + second["nodes"]]
    assert len(ids) == len(set(ids)) and set(ids) == {n["id"] for n in whole["nodes"]}
    edges = {tuple(e.values()) for e in first["edges"] + second["edges"]}
    assert edges == {tuple(e.values()) for e in whole["edges"]}
    # A cursor continues its own walk only.
    with pytest.raises(ApiError) as raised:
        client.lineage(WS, node, "down", cursor=first["next"])
    assert raised.value.status == 400 and "cursor" in raised.value.message
    with pytest.raises(ApiError) as raised:
        client.lineage(WS, node, "up", cursor="0" * 32)
    assert raised.value.status == 400
    with pytest.raises(ApiError) as raised:
        client.lineage(WS, node, "up", limit=5001)
    assert raised.value.status == 400 and "limit" in raised.value.message


def test_impact_of_a_snapshot(stack: Stack, job: dict[str, Any]) -> None:
    data = job["inputs"]["data"]["training"]
    for target in (f"snapshot:{data}", data):
        impact = stack.kaos_json("data", "impact", "-w", WS, target)
        assert impact["matched"] == [f"snapshot:{data}"]
        assert f"job:{job['id']}" in {j["id"] for j in impact["jobs"]}
        assert [m["id"] for m in impact["models"]] == [f"model:{job['id']}"]
    text = stack.kaos("data", "impact", "-w", WS, data).stdout
    assert f"job:{job['id']}" in text and f"model:{job['id']}" in text
    missing = stack.kaos("data", "impact", "-w", WS, "f" * 64, check=False)
    assert missing.returncode != 0 and "does not exist" in missing.stderr
    bad = stack.kaos("data", "impact", "-w", WS, "ftp://x/y", check=False)
    assert bad.returncode != 0 and "target" in bad.stderr


def test_impact_of_an_s3_object_in_a_remote_manifest(stack: Stack, tmp_path: Path) -> None:
    s3 = stack.aws("s3")
    s3.create_bucket(Bucket="impact-data")
    s3.put_object(Bucket="impact-data", Key="sets/digits.csv", Body=(TEMPLATE / "data" / "digits.csv").read_bytes())
    manifest = tmp_path / "remote.jsonl"
    manifest.write_text(json.dumps({"url": "s3://impact-data/sets/digits.csv", "path": "digits.csv"}) + "\n")
    stack.kaos("workspace", "create", "prov-s3")
    done = json.loads(stack.kaos("train", "deploy", "-w", "prov-s3", "-s", str(tiny_code(tmp_path)), "-m",
                                 str(manifest), "--wait", "--json").stdout)
    assert done["status"] == "COMPLETED", done
    impact = stack.kaos_json("data", "impact", "-w", "prov-s3", "s3://impact-data/sets/digits.csv")
    assert impact["matched"] == [f"snapshot:{done['inputs']['data']['training']}"]
    assert [j["id"] for j in impact["jobs"]] == [f"job:{done['id']}"]
    assert [m["id"] for m in impact["models"]] == [f"model:{done['id']}"]
    assert impact["manifests_scanned"] >= 1
    prefix = stack.kaos_json("data", "impact", "-w", "prov-s3", "s3://impact-data/sets/")
    assert prefix["matched"] == impact["matched"]
    other = stack.kaos_json("data", "impact", "-w", "prov-s3", "s3://impact-data/other.csv")
    assert other["matched"] == [] and other["jobs"] == []
    assert "no data snapshot" in stack.kaos("data", "impact", "-w", "prov-s3", "s3://impact-data/x").stdout
