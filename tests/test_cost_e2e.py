"""Cost end to end on the embedded stack, through the CLI and the API: a batch job makes data, a training job uses
it; the finished training shows its cost from the billable seconds the emulator reported (as SageMaker reports
them), and its model's rolled-up cost is the sum of the two jobs' costs along its lineage."""
from __future__ import annotations

from pathlib import Path

import pytest

from kaos.client import Client

from .conftest import Stack
from .test_batch import upload, wait

WS = "costs"
TRAIN = """\
import json, os, pathlib
rows = (pathlib.Path(os.environ["SM_CHANNEL_TRAINING"]) / "rows.csv").read_text().splitlines()
model = pathlib.Path(os.environ["SM_MODEL_DIR"])
(model / "model.txt").write_text(str(len(rows)))
(model / "metrics.json").write_text(json.dumps({"rows": len(rows)}))
"""


def snapshot_of(client: Client, workspace: str, root: Path, kind: str, files: dict[str, str]) -> str:
    """A `kind` snapshot of `files` (name -> text), written under root/kind first."""
    folder = root / kind
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    return upload(client, workspace, kind, folder)


def test_a_finished_job_shows_its_cost_and_a_model_rolls_up_its_lineage(stack: Stack, tmp_path: Path) -> None:
    client = stack.client()
    client.create_workspace(WS)
    code_id = snapshot_of(client, WS, tmp_path, "code", {"train.py": TRAIN})
    data_id = snapshot_of(client, WS, tmp_path, "data", {"rows.csv": "a\n1\n2\n"})
    submitted_batch = client.submit_batch(WS, code_id, data_id, "cp $KAOS_INPUT_DIR/rows.csv $KAOS_OUTPUT_DIR/")
    batch = wait(client, WS, submitted_batch["id"])
    assert batch["status"] == "COMPLETED", batch
    submitted = client.submit(WS, code_id, {"training": batch["model"].removeprefix("snapshot:")}, {})
    # Before it ends, the job answer is an estimate: the instance price times the max runtime.
    assert submitted["cost"]["basis"] == "estimate" and submitted["cost"]["usd"] > 0
    trained = wait(client, WS, submitted["id"])
    assert trained["status"] == "COMPLETED", trained

    cost = trained["cost"]
    assert cost["basis"] == "measured"
    (training,) = [line for line in cost["lines"] if line["item"].startswith("SageMaker training ml.")]
    # At least one billed second, and no more than the run took (the emulator times the local run).
    assert 1 / 3600 <= training["quantity"] <= 300 / 3600 and training["usd"] > 0
    assert cost["usd"] < submitted["cost"]["usd"]
    batch_cost = client.job(WS, batch["id"])["cost"]
    assert batch_cost["basis"] == "elapsed" and any(line["item"] == "Fargate vCPU" for line in batch_cost["lines"])

    summed = client.cost(WS)
    (model,) = summed["models"]
    assert model["id"] == f"model:{trained['id']}" and model["usd"] == cost["usd"]
    assert {entry["job"] for entry in model["lineage"]} == {trained["id"], batch["id"]}
    assert model["rolled_up_usd"] == pytest.approx(cost["usd"] + batch_cost["usd"], abs=1e-9)
    assert summed["total_usd"] == pytest.approx(cost["usd"] + batch_cost["usd"], abs=1e-9)
    # The lineage walk carries the same numbers on its nodes.
    walk = client.lineage(WS, f"model:{trained['id']}", "up")
    assert walk["cost_usd"] == pytest.approx(model["rolled_up_usd"], abs=1e-9)
    assert {n["id"]: n["cost"]["usd"] for n in walk["nodes"] if n["type"] == "job"} == {
        f"job:{trained['id']}": cost["usd"], f"job:{batch['id']}": batch_cost["usd"]}

    # People read it offline as what AWS would bill: kaos cost, train info, train list --cost.
    for command in (("cost", WS), ("train", "info", "-w", WS, trained["id"]), ("train", "list", "-w", WS, "--cost")):
        assert "estimated at AWS prices" in stack.kaos(*command).stdout
