"""`kaos ui` in a real headless Chromium (Debian's, driven by Playwright; no browser is downloaded) against the
embedded stack: the runs table with 500 runs, sorting, columns kept over a reload, comparing 3 runs, a lineage
graph 20 jobs deep with click-through, following a running job's log, the param/metric charts; and the server's
refusals (no token, a foreign Host, anything but GET).

How the data is made, cheaply but through the real storage: one real training runs (the job whose log the view
follows; it logs a metric over steps). 500 real trainings would take many minutes, so the 500 runs are its job row
cloned with other ids, params and metrics, written into the stack's DynamoDB with the admin test credentials as
`chalicelib.tables.JobItem` rows (the same model and key layout the jobs repository writes), and a few get the
series object the Record step writes (built by chalicelib.metrics.Extractor from JSON metric lines). The depth-20
lineage is likewise 20 batch jobs chained through their output snapshots, written as the provenance repository's
node and edge rows, with one failed job beside the chain.

Screenshots of every page go to tmp_path, or to docs/img/ when KAOS_UI_SCREENSHOTS=docs/img (how the README's
were made). The runs table's time to first render is printed (goal < 2 s), not asserted.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright.sync_api import Browser, Page, expect, sync_playwright

from chalicelib.metrics import Extractor, series_key
from chalicelib.repositories.provenance import _edge_rows
from chalicelib.tables import EdgeItem, JobItem, NodeItem, node_key, ws_key
from tests.conftest import TEMPLATE, Stack
from tests.test_kill import bucket, table

CHROMIUM = "/usr/bin/chromium"
# What a headless Chromium needs on a machine without network or GPU (see /work/.library/env/machines/python.md).
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
RUNS_WS, LINEAGE_WS = "ui-runs", "ui-lineage"
SEEDED = 500
LRS = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0]
CHAIN = 20
# Generous: the machine running the suite is shared (the measured first render is printed, not asserted).
TIMEOUT_MS = 60_000
expect.set_options(timeout=TIMEOUT_MS)


def shots() -> Path | None:
    target = os.environ.get("KAOS_UI_SCREENSHOTS")
    return Path(target) if target else None


@pytest.fixture(scope="module")
def live_job(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A real training that logs a loss over steps and then waits for the file its params name: the view can
    follow it while it runs, and the test decides when it ends (no timing guess)."""
    tmp = tmp_path_factory.mktemp("ui-live")
    code = tmp / "code"
    code.mkdir()
    (code / "train.py").write_text(
        "import json, os, sys, time\n"
        "hps = json.loads(os.environ.get('SM_HPS') or '{}')\n"
        "for step in range(5):\n"
        "    print(json.dumps({'metric': 'loss', 'value': 1 / (step + 1), 'step': step}), flush=True)\n"
        "print('waiting for the go file', flush=True)\n"
        "while not os.path.exists(hps['go']):\n"
        "    time.sleep(0.2)  # the workload: waiting for the test's signal\n"
        "for step in range(5, 10):\n"
        "    print(json.dumps({'metric': 'loss', 'value': 1 / (step + 1), 'step': step}), flush=True)\n"
        "print('training done', flush=True)\n"
        "model = os.environ['SM_MODEL_DIR']\n"
        "json.dump({'accuracy': 0.9}, open(os.path.join(model, 'metrics.json'), 'w'))\n"
    )
    params = tmp / "params.json"
    go = tmp / "go"
    params.write_text(json.dumps({"go": str(go), "lr": 0.05}))
    stack.client().create_workspace(RUNS_WS)
    job = json.loads(stack.kaos("train", "deploy", "-w", RUNS_WS, "-s", str(code), "-d", str(TEMPLATE / "data"),
                                "-h", str(params), "--json").stdout)
    return {"id": job["id"], "go": go}


def _job_rows(stack: Stack, workspace: str, job_id: str) -> dict[str, Any]:
    item = stack.aws("dynamodb").get_item(TableName=table(stack), Key={"pk": {"S": ws_key(workspace)},
                                                                        "sk": {"S": f"JOB#{job_id}"}})["Item"]
    return dict(item)


def _write(stack: Stack, items: list[dict[str, Any]]) -> None:
    dynamodb, name = stack.aws("dynamodb"), table(stack)
    for start in range(0, len(items), 25):  # BatchWriteItem takes 25 items per call
        dynamodb.batch_write_item(RequestItems={name: [{"PutRequest": {"Item": i}} for i in items[start:start + 25]]})


def _clone(template: JobItem, workspace: str, index: int, kind: str, status: str, **changes: Any) -> dict[str, Any]:
    """A job row like `template` under another id (what a submission with other inputs would have written)."""
    digest = hashlib.sha256(f"{workspace}-{index}".encode()).hexdigest()
    job_id = f"{kind}-{digest[:24]}"
    start = datetime.datetime(2026, 11, 1, tzinfo=datetime.UTC) + datetime.timedelta(minutes=index)
    created, ended = (t.isoformat(timespec="milliseconds") for t in (start, start + datetime.timedelta(
        seconds=30 + index % 60)))
    spec = {**template.spec, "workspace": workspace, "kind": kind, "params": digest}
    values = {"job_id": job_id, "fingerprint": digest, "kind": kind, "status": status, "spec": spec,
              "created_at": created, "created_by": template.created_by, "updated_at": created,
              "started_at": created, "ended_at": ended, "history": [{"status": status, "at": created}],
              "training_job_name": None, "execution_arn": None,
              "attempt": 1, "sources": template.sources, "version": 1, **changes}
    row = JobItem(ws_key(workspace), f"JOB#{job_id}", gsi1pk=f"JOBS#{workspace}", gsi1sk=f"{created}#{job_id}",
                  **values)
    return dict(row.serialize())


@pytest.fixture(scope="module")
def runs(stack: Stack, live_job: dict[str, Any]) -> list[dict[str, Any]]:
    """500 runs beside the live one: lr x depth x seed (10 x 5 x 10), accuracy a function of them."""
    template = JobItem.from_raw_data(_job_rows(stack, RUNS_WS, live_job["id"]))
    seeded, items = [], []
    for index in range(SEEDED):
        lr, depth, seed = LRS[index % 10], 2 + (index // 10) % 5, index // 50
        accuracy = round(0.5 + 0.4 * (1 - abs(lr - 0.1) / 30) - 0.01 * seed + 0.02 * depth, 4)
        status = "FAILED" if index % 37 == 5 else "COMPLETED"
        loss = {"min": round(1 - accuracy, 4), "max": 2.3, "last": round(1.05 - accuracy, 4), "count": 50,
                "last_step": 49}
        item = _clone(template, RUNS_WS, index, "train", status,
                      hyperparameters={"lr": lr, "depth": depth, "seed": seed, "go": "/nonexistent"},
                      metrics={"accuracy": accuracy} if status == "COMPLETED" else None,
                      metric_series={"loss": loss} if status == "COMPLETED" else None)
        items.append(item)
        seeded.append({"id": item["job_id"]["S"], "lr": lr, "depth": depth, "seed": seed, "status": status,
                       "accuracy": accuracy if status == "COMPLETED" else None})
    _write(stack, items)
    s3 = stack.aws("s3")
    for run in seeded[:30]:  # series objects as Record writes them, for the compare charts
        extractor = Extractor()
        for step in range(50):
            extractor.feed(json.dumps({"metric": "loss", "value": 2.3 * (1 - run["lr"] / 40) ** step, "step": step}))
        s3.put_object(Bucket=bucket(stack), Key=series_key(RUNS_WS, run["id"]),
                      Body=json.dumps(extractor.document()).encode())
    return seeded


@pytest.fixture(scope="module")
def chain(stack: Stack, live_job: dict[str, Any]) -> list[str]:
    """snapshot s0 <-used- batch b1 -produced-> s1 <-used- b2 ... b20 -produced-> s20, and a failed batch job that
    used s10 (node, edge and job rows as the repositories write them). Returns the node ids, inputs first."""
    stack.client().create_workspace(LINEAGE_WS)
    template = JobItem.from_raw_data(_job_rows(stack, RUNS_WS, live_job["id"]))
    at = "2026-11-02T00:00:00.000+00:00"
    snapshots = [f"snapshot:{hashlib.sha256(f'chain-{i}'.encode()).hexdigest()}" for i in range(CHAIN + 1)]
    items, jobs, nodes = [], [], [snapshots[0]]
    for i in range(1, CHAIN + 2):
        failed = i == CHAIN + 1
        row = _clone(template, LINEAGE_WS, i, "batch", "FAILED" if failed else "COMPLETED")
        items.append(row)
        job = f"job:{row['job_id']['S']}"
        jobs.append(job)
        edges = [(job, "used", snapshots[CHAIN // 2 if failed else i - 1])]
        if not failed:
            edges.append((job, "produced", snapshots[i]))
            nodes += [job, snapshots[i]]
        for node, kind in [(job, "job")] + ([] if failed else [(snapshots[i], "snapshot")]):
            items.append(dict(NodeItem(node_key(LINEAGE_WS, node), "META", node_type=kind,
                                       attrs={"kind": "batch" if kind == "job" else "data"}, created_at=at,
                                       gsi1pk=f"PROV#{LINEAGE_WS}", gsi1sk=node).serialize()))
        for source, rel, target in edges:
            for here, sk, direction, other in _edge_rows(source, rel, target):
                items.append(dict(EdgeItem(node_key(LINEAGE_WS, here), sk, rel=rel, direction=direction, other=other,
                                           created_at=at, gsi1pk=f"PROV#{LINEAGE_WS}",
                                           gsi1sk=f"{here}#{sk}").serialize()))
    items.append(dict(NodeItem(node_key(LINEAGE_WS, snapshots[0]), "META", node_type="snapshot",
                               attrs={"kind": "data"}, created_at=at, gsi1pk=f"PROV#{LINEAGE_WS}",
                               gsi1sk=snapshots[0]).serialize()))
    _write(stack, items)
    return [*nodes, jobs[-1]]


@pytest.fixture(scope="module")
def ui_url(stack: Stack) -> Iterator[str]:
    """`kaos ui` as a user starts it; its first line is the URL with this start's token."""
    process = subprocess.Popen([sys.executable, "-m", "kaos.cli", "ui", "--port", "0", "--no-open"], env=stack.env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stderr is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and "?token=" in url, url + process.stderr.read()
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install chromium (as .ci/run does)"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser, tmp_path: Path) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    opened = context.new_page()
    opened.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield opened
    finally:
        context.close()
    assert not errors, errors  # a script error in the view fails the test that caused it


def screenshot(page: Page, name: str, tmp_path: Path, full_page: bool = False) -> None:
    target = shots() or tmp_path
    target.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(target / f"ui-{name}.png"), full_page=full_page)


def header_columns(page: Page) -> list[str]:
    return [c for c in page.locator("#runs thead th").evaluate_all("ths => ths.map(t => t.dataset.column || '')")
            if c]


def test_runs_table_of_500_sorts_keeps_columns_filters_compares_and_charts(
    page: Page, ui_url: str, runs: list[dict[str, Any]], tmp_path: Path
) -> None:
    """One visit, as a user would make it (and the runs are loaded twice, not once per step): the table, sorting,
    columns kept over a reload, filters, comparing 3 runs, then the param/metric charts of the same runs."""
    page.goto(ui_url)
    expect(page.locator("#workspaces")).to_contain_text(RUNS_WS)
    screenshot(page, "workspaces", tmp_path)
    page.goto(ui_url + f"#/ws/{RUNS_WS}")
    expect(page.locator("#runs tbody tr").first).to_be_visible()
    expect(page.locator("main")).to_have_attribute("data-loaded", "all")
    timing = page.locator("main").evaluate("m => ({...m.dataset})")
    print(f"\nruns table: first render after {timing['firstRenderMs']} ms (goal < 2000; "
          f"{timing['firstRenderFromNavigationMs']} ms from the navigation), of which the first page of runs "
          f"{timing['firstRequestMs']} ms ({timing['firstRequestBytes']} bytes); {SEEDED + 1} runs")
    expect(page.locator("#runs tbody tr")).to_have_count(SEEDED + 1)
    # Sort by lr, ascending then descending (runs without the value stay last).
    page.locator('#runs th[data-column="param:lr"]').click()
    expect(page.locator('#runs th[data-column="param:lr"]')).to_have_class("sorted-asc")
    column = header_columns(page).index("param:lr") + 2  # nth-child counts from 1, after the selection box
    expect(page.locator(f"#runs tbody tr:first-child td:nth-child({column})")).to_have_text("0.001")
    page.locator('#runs th[data-column="param:lr"]').click()
    expect(page.locator(f"#runs tbody tr:first-child td:nth-child({column})")).to_have_text("30")
    # Choose columns, reload: kept (localStorage), as is the sort.
    page.locator("details.columns summary").click()
    page.locator('input[data-column="created"]').uncheck()
    page.locator('input[data-column="series:loss.min"]').check()
    page.reload()
    expect(page.locator("main")).to_have_attribute("data-loaded", "all")
    chosen = header_columns(page)
    assert "created" not in chosen and "series:loss.min" in chosen and "param:lr" in chosen
    expect(page.locator('#runs th[data-column="param:lr"]')).to_have_class("sorted-desc")
    # Filter by param and metric, and by status.
    page.locator("#filter").fill("depth=3 accuracy>0.8")
    wanted = [r for r in runs if r["depth"] == 3 and r["accuracy"] is not None and r["accuracy"] > 0.8]
    expect(page.locator("#runs tbody tr")).to_have_count(len(wanted))
    page.locator("#filter").fill("")
    page.locator("#status").select_option("FAILED")
    expect(page.locator("#runs tbody tr")).to_have_count(sum(r["status"] == "FAILED" for r in runs))
    page.locator("#status").select_option("")
    screenshot(page, "runs", tmp_path)

    # Compare 3 runs that differ only in lr: only that param shows until asked for all.
    picked = [r for r in runs[:30] if r["depth"] == 2 and r["seed"] == 0 and r["status"] == "COMPLETED"][:3]
    for run in picked:
        page.locator(f'input[data-select="{run["id"]}"]').check()
    page.locator("#compare").click()
    expect(page.locator("#compare-table tr.param")).to_have_count(1)
    expect(page.locator("#compare-table tr.param td").first).to_have_text("param lr")
    expect(page.locator("#compare-table tr.metric td").first).to_have_text("metric accuracy")
    expect(page.locator("#charts svg path[data-series]")).to_have_count(3)
    page.locator("#log").check()
    expect(page.locator("#charts .title").first).to_have_text("loss (log)")
    screenshot(page, "compare", tmp_path)
    page.locator("#all-params").check()
    expect(page.locator("#compare-table tr.param")).to_have_count(4)  # depth, go, lr, seed

    # Param against metric, over the runs already loaded.
    page.locator("#crumbs a", has_text="charts").click()
    page.locator("#x").select_option("param:lr")
    page.locator("#y").select_option("metric:accuracy")
    completed = [r for r in runs if r["accuracy"] is not None]
    # The live job waits for its go file (test below) until then: it has no accuracy yet.
    expect(page.locator("#scatter circle")).to_have_count(len(completed))
    expect(page.locator("#parallel path")).to_have_count(len(completed))
    screenshot(page, "grid", tmp_path)


def test_lineage_graph_of_depth_20_marks_failures_and_clicks_through(page: Page, ui_url: str, chain: list[str],
                                                                      tmp_path: Path) -> None:
    middle = chain[CHAIN]  # the snapshot half-way: 20 hops to either end, the failed job beside it
    page.goto(ui_url + f"#/ws/{LINEAGE_WS}/lineage/{middle}")
    expect(page.locator("#graph .node")).to_have_count(len(chain))
    expect(page.locator("#graph .node.failed")).to_have_count(1)
    expect(page.locator(f'#graph .node.root[data-node="{middle}"]')).to_have_count(1)
    view = page.locator("#graph svg > g").first
    before = view.get_attribute("transform")
    page.locator("#graph").hover()
    page.mouse.wheel(0, -400)
    expect(view).not_to_have_attribute("transform", before or "")
    # Click through: the failed job beside the chain (centred with its neighbours), then the first job of the chain
    # (20 jobs upstream), then its job page.
    failed = chain[-1]
    page.locator(f'#graph .node[data-node="{failed}"]').dispatch_event("click")
    expect(page.locator(f'#graph .node.root.failed[data-node="{failed}"]')).to_have_count(1)
    expect(page.locator("#side")).to_contain_text(failed)
    screenshot(page, "lineage", tmp_path)
    first_job = chain[1]
    page.locator(f'#graph .node[data-node="{first_job}"]').dispatch_event("click")
    expect(page.locator(f'#graph .node.root[data-node="{first_job}"]')).to_have_count(1)
    page.locator("#open-job").click()
    expect(page.locator("h1")).to_contain_text(first_job.removeprefix("job:"))


def test_a_running_jobs_log_is_followed_to_its_end_with_its_metric_chart(page: Page, ui_url: str, stack: Stack,
                                                                          live_job: dict[str, Any],
                                                                          tmp_path: Path) -> None:
    page.goto(ui_url + f"#/ws/{RUNS_WS}/job/{live_job['id']}")
    # The first job of a session may wait for its image's environment to be built (kaos/local/environments.py).
    expect(page.locator("#log-text")).to_contain_text("waiting for the go file", timeout=300_000)
    expect(page.locator("#log-state")).to_contain_text("following")
    # Charted from the log while it runs: the 5 losses logged so far.
    expect(page.locator("#charts .title")).to_have_text("loss")
    expect(page.locator("#charts .legend")).to_contain_text("(running)")
    screenshot(page, "job-running", tmp_path, full_page=True)
    live_job["go"].write_text("go")
    expect(page.locator("#log-text")).to_contain_text("training done", timeout=120_000)
    expect(page.locator("#log-state")).to_have_text("log complete", timeout=120_000)
    expect(page.locator("main")).to_have_attribute("data-ended", "true")
    expect(page.locator("#job-status")).to_have_text("COMPLETED")
    # The loss it logged over 10 steps, stored by Record and charted.
    expect(page.locator('#charts path[data-series]')).to_have_count(1)
    expect(page.locator("#charts .legend")).not_to_contain_text("(running)")
    series = stack.client().request("GET", f"/workspaces/{RUNS_WS}/jobs/{live_job['id']}/metrics")
    assert [p["step"] for p in series["points"]] == list(range(10))
    assert series["summary"]["loss"]["last"] == 0.1
    expect(page.locator("#files")).to_contain_text("model.tar.gz")
    screenshot(page, "job", tmp_path, full_page=True)
    # Its model registered: the registry pages list the group and the version, linked to the job.
    stack.client().request("POST", f"/workspaces/{RUNS_WS}/models/ui-digits/versions", {"job_id": live_job["id"]})
    page.locator("#crumbs a", has_text="models").click()
    page.locator("#groups a", has_text="ui-digits").click()
    expect(page.locator("#versions tbody tr")).to_have_count(1)
    expect(page.locator("#versions")).to_contain_text(live_job["id"])
    screenshot(page, "models", tmp_path)
    page.locator("#crumbs a", has_text="endpoints").click()
    expect(page.locator("#endpoints")).to_contain_text("no endpoints yet")


def test_the_server_refuses_other_sites_and_anything_but_reading(ui_url: str) -> None:
    origin, token = ui_url.split("/?token=")
    assert requests.get(f"{origin}/api/workspaces", timeout=10).status_code == 403
    assert requests.get(f"{origin}/api/workspaces", headers={"X-Kaos-Token": "wrong"}, timeout=10).status_code == 403
    rebound = requests.get(f"{origin}/api/workspaces", headers={"X-Kaos-Token": token, "Host": "evil.example:80"},
                           timeout=10)
    assert rebound.status_code == 421 and rebound.json()["error"]["code"] == "WrongHost"
    assert requests.post(f"{origin}/api/workspaces", headers={"X-Kaos-Token": token}, timeout=10).status_code == 405
    ok = requests.get(f"{origin}/api/workspaces", headers={"X-Kaos-Token": token}, timeout=10)
    assert ok.status_code == 200 and "workspaces" in ok.json()
    outside = requests.get(f"{origin}/api/openapi.json", headers={"X-Kaos-Token": token}, timeout=10)
    assert outside.status_code == 404
