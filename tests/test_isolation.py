"""Workspaces are walls, on the embedded stack with IAM enforced: as `guest`, training code and direct emulator
calls try to read and write `dev`'s code, data, models, caches and incoming prefix. Every attempt must be refused
and dev's objects byte-identical afterwards; the same operations on guest's own workspace succeed (so the suite
can fail). The job's process must see its role's keys and the SageMaker variables, nothing of the stack's."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from . import cli_process
from .conftest import TEMPLATE, Stack, tiny_code

DEV, GUEST = "walls-dev", "walls-guest"

# Runs inside guest's training job: every attempt, with the job's own credentials, recorded as allowed/denied.
ATTACK = r'''
import boto3, json, os
from botocore.exceptions import ClientError
hp = json.loads(os.environ["SM_HPS"])
bucket, victim, own, table = hp["bucket"], hp["victim"], hp["own"], hp["table"]
s3, ddb = boto3.client("s3"), boto3.client("dynamodb")
def attempt(name, call):
    try:
        call()
        result = "allowed"
    except ClientError as exc:
        result = "denied" if exc.response["Error"]["Code"] in ("AccessDenied", "403", "AccessDeniedException") \
            else "error:" + exc.response["Error"]["Code"]
    attempts[name] = result
attempts = {}
def first(prefix):
    return s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"][0]["Key"]
attempt("list victim", lambda: s3.list_objects_v2(Bucket=bucket, Prefix=f"ws/{victim}/"))
attempt("read victim sourcedir", lambda: s3.get_object(Bucket=bucket, Key=hp["victim_sourcedir"]))
attempt("read victim model", lambda: s3.get_object(Bucket=bucket, Key=hp["victim_model"]))
attempt("read victim blob", lambda: s3.get_object(Bucket=bucket, Key=hp["victim_blob"]))
attempt("read victim pack", lambda: s3.get_object(Bucket=bucket, Key=hp["victim_pack"]))
attempt("overwrite victim pack", lambda: s3.put_object(Bucket=bucket, Key=hp["victim_pack"], Body=b"evil"))
attempt("forge victim proposal", lambda: s3.put_object(Bucket=bucket, Key=hp["victim_proposal"],
                                                       Body=b'{"loose": [], "packs": []}'))
attempt("overwrite victim sourcedir", lambda: s3.put_object(Bucket=bucket, Key=hp["victim_sourcedir"], Body=b"evil"))
attempt("write victim incoming", lambda: s3.put_object(Bucket=bucket, Key=f"ws/{victim}/incoming/evil.csv", Body=b"1"))
attempt("write victim job output", lambda: s3.put_object(Bucket=bucket, Key=hp["victim_model"], Body=b"evil"))
attempt("add self to victim (DynamoDB)", lambda: ddb.put_item(TableName=table, Item={
    "pk": {"S": f"WS#{victim}"}, "sk": {"S": "MEMBER#guest"}}))
attempt("read table", lambda: ddb.get_item(TableName=table, Key={"pk": {"S": f"WS#{victim}"}, "sk": {"S": "META"}}))
attempt("list own", lambda: s3.list_objects_v2(Bucket=bucket, Prefix=f"ws/{own}/"))
attempt("read own sourcedir", lambda: s3.get_object(Bucket=bucket, Key=first(f"ws/{own}/sourcedirs/")))
attempt("write own job output", lambda: s3.put_object(Bucket=bucket, Key=f"ws/{own}/jobs/probe/output/x", Body=b"1"))
attempt("overwrite own code bundle", lambda: s3.put_object(Bucket=bucket, Key=first(f"ws/{own}/sourcedirs/"),
                                                            Body=b"evil"))
attempt("write own incoming", lambda: s3.put_object(Bucket=bucket, Key=f"ws/{own}/incoming/x.csv", Body=b"1"))
# A proposal says which blobs `complete` still has to check: one forged in the own workspace would commit unchecked.
attempt("forge own proposal", lambda: s3.put_object(Bucket=bucket, Key=f"ws/{own}/proposals/{'0' * 64}.json",
                                                    Body=b'{"loose": [], "packs": []}'))
environment = sorted(k for k in os.environ if k.startswith(("KAOS", "AWS_")))
json.dump({"attempts": attempts, "environment": environment, "home": os.environ.get("HOME")},
          open(os.path.join(os.environ["SM_MODEL_DIR"], "attempts.json"), "w"))
'''


# Runs as guest's Batch job: the same attempts with the job role's credentials, reported in its output snapshot.
BATCH_ATTACK = r'''
import boto3, json, os
from botocore.exceptions import ClientError
t = json.load(open(os.path.join(os.environ["KAOS_INPUT_DIR"], "targets.json")))
s3 = boto3.client("s3")
attempts = {}
def attempt(name, call):
    try:
        call()
        attempts[name] = "allowed"
    except ClientError as exc:
        attempts[name] = "denied" if exc.response["ResponseMetadata"]["HTTPStatusCode"] == 403 else "error"
attempt("read victim sourcedir", lambda: s3.get_object(Bucket=t["bucket"], Key=t["victim_sourcedir"]))
attempt("read victim model", lambda: s3.get_object(Bucket=t["bucket"], Key=t["victim_model"]))
attempt("overwrite victim model", lambda: s3.put_object(Bucket=t["bucket"], Key=t["victim_model"], Body=b"evil"))
attempt("write victim incoming", lambda: s3.put_object(Bucket=t["bucket"], Key=f"ws/{t['victim']}/incoming/b.csv",
                                                       Body=b"1"))
attempt("list victim", lambda: s3.list_objects_v2(Bucket=t["bucket"], Prefix=f"ws/{t['victim']}/"))
attempt("list own", lambda: s3.list_objects_v2(Bucket=t["bucket"], Prefix=f"ws/{t['own']}/"))
json.dump(attempts, open(os.path.join(os.environ["KAOS_OUTPUT_DIR"], "attempts.json"), "w"))
'''


def as_user(stack: Stack, user: str, *args: str, json_out: bool = True) -> Any:
    """The CLI as `user`, with a client home of its own (its current workspace is its own, as on two laptops)."""
    home = stack.home.parent / f"{stack.home.name}-{user}"
    home.mkdir(exist_ok=True)
    config = json.loads((stack.home / "config.json").read_text())
    (home / "config.json").write_text(json.dumps({**config, "profile": f"kaos-local-{user}", "workspace": ""}))
    env = {**stack.env, "KAOS_HOME": str(home)}
    result = cli_process.run([*args, *(["--json"] if json_out else [])], env, 300)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout) if json_out else None


def objects(stack: Stack, bucket: str, prefix: str) -> dict[str, str]:
    s3 = stack.aws("s3")
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for o in page.get("Contents", [])]
    return {k: hashlib.sha256(s3.get_object(Bucket=bucket, Key=k)["Body"].read()).hexdigest() for k in keys}


@pytest.fixture(scope="module")
def walls(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("walls")
    bucket = next(b["Name"] for b in stack.aws("s3").list_buckets()["Buckets"] if "storagedata" in b["Name"])
    table = stack.aws("dynamodb").list_tables()["TableNames"][0]
    as_user(stack, "dev", "workspace", "create", DEV, json_out=False)
    as_user(stack, "guest", "workspace", "create", GUEST, json_out=False)
    victim_code = tiny_code(tmp)
    for i in range(10):  # small files enough to travel, and be kept, as a pack
        (victim_code / f"lib{i}.py").write_text(f"VALUE = {i}\n")
    victim_job = as_user(stack, "dev", "train", "deploy", "-w", DEV, "-s", str(victim_code), "-d",
                         str(TEMPLATE / "data"), "-h", str(TEMPLATE / "params.json"), "--wait")
    assert victim_job["status"] == "COMPLETED", victim_job
    before = objects(stack, bucket, f"ws/{DEV}/")
    params = tmp / "attack.json"
    params.write_text(json.dumps({
        "bucket": bucket, "table": table, "victim": DEV, "own": GUEST,
        "victim_sourcedir": next(k for k in before if "/sourcedirs/" in k),
        "victim_model": next(k for k in before if k.endswith("model.tar.gz")),
        "victim_blob": next(k for k in before if "/blobs/" in k),
        "victim_pack": next(k for k in before if "/packs/" in k),
        "victim_proposal": next(k for k in before if "/proposals/" in k)}))
    attack_dir = tmp / "attack"
    attack_dir.mkdir()
    (attack_dir / "train.py").write_text(ATTACK)
    job = as_user(stack, "guest", "train", "deploy", "-w", GUEST, "-s", str(attack_dir), "-d",
                  str(TEMPLATE / "data"), "-h", str(params), "--wait")
    assert job["status"] == "COMPLETED", job
    model_key = f"ws/{GUEST}/jobs/{job['id']}/output/{job['id']}/output/model.tar.gz"
    archive = stack.aws("s3").get_object(Bucket=bucket, Key=model_key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        member = tar.extractfile("attempts.json")
        assert member is not None
        report: dict[str, Any] = json.loads(member.read())
    # The same from a Batch job of guest's (its job definition's role is guest's workspace role).
    batch_code, batch_data = tmp / "batch-attack", tmp / "batch-data"
    batch_code.mkdir()
    batch_data.mkdir()
    (batch_code / "process.py").write_text(BATCH_ATTACK)
    (batch_data / "targets.json").write_text(params.read_text())
    batch = as_user(stack, "guest", "batch", "deploy", "-w", GUEST, "-s", str(batch_code), "-d", str(batch_data),
                    "--wait")
    assert batch["status"] == "COMPLETED", batch
    output = batch["model"].removeprefix("snapshot:")
    s3 = stack.aws("s3")
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=f"ws/{GUEST}/manifests/{output}.json")["Body"].read())
    sha = next(f["sha256"] for f in manifest["files"] if f["path"] == "attempts.json")
    batch_report = json.loads(s3.get_object(Bucket=bucket, Key=f"ws/{GUEST}/blobs/{sha}")["Body"].read())
    return {"report": report, "batch": batch_report, "before": before,
            "after": objects(stack, bucket, f"ws/{DEV}/"), "bucket": bucket, "table": table}


CROSS_TENANT = ["list victim", "read victim sourcedir", "read victim model", "read victim blob", "read victim pack",
                "overwrite victim pack", "forge victim proposal", "overwrite victim sourcedir", "write victim incoming",
                "write victim job output", "add self to victim (DynamoDB)", "read table"]


def test_training_code_cannot_reach_another_workspace(walls: dict[str, Any]) -> None:
    attempts = walls["report"]["attempts"]
    assert {name: attempts[name] for name in CROSS_TENANT} == dict.fromkeys(CROSS_TENANT, "denied")


def test_training_code_reaches_its_own_workspace_read_only_except_job_outputs(walls: dict[str, Any]) -> None:
    attempts = walls["report"]["attempts"]
    assert attempts["list own"] == attempts["read own sourcedir"] == attempts["write own job output"] == "allowed"
    # Code bundles and the auto-retrain prefix are written by kaos only, even within the workspace.
    assert attempts["overwrite own code bundle"] == attempts["write own incoming"] == "denied"
    assert attempts["forge own proposal"] == "denied"


def test_batch_code_cannot_reach_another_workspace(walls: dict[str, Any]) -> None:
    attempts = walls["batch"]
    assert attempts == {"read victim sourcedir": "denied", "read victim model": "denied",
                        "overwrite victim model": "denied", "write victim incoming": "denied",
                        "list victim": "denied", "list own": "allowed"}


def test_victim_objects_are_byte_identical(walls: dict[str, Any]) -> None:
    assert walls["after"] == walls["before"]


def test_job_sees_only_its_role_keys(walls: dict[str, Any], stack: Stack) -> None:
    report = walls["report"]
    assert not [k for k in report["environment"] if k.startswith("KAOS")]
    assert set(report["environment"]) <= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                                          "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_ENDPOINT_URL"}
    assert "AWS_SESSION_TOKEN" in report["environment"]  # a role session, not a user's long-term key
    # HOME is the job's own folder, not the client's (where the local users' keys live).
    assert "/jobs/" in str(report["home"]) and Path(report["home"]).parent.parent.name == "jobs"


def _guest_client(stack: Stack, service: str, secret: str | None = None) -> Any:
    users = json.loads((stack.state_dir / "users.json").read_text())
    return boto3.client(service, endpoint_url=stack.runtime["endpoint_url"], region_name="us-east-1",
                        aws_access_key_id=users["guest"]["access_key"],
                        aws_secret_access_key=secret or users["guest"]["secret_key"])


def test_direct_emulator_calls_by_a_user_are_refused(walls: dict[str, Any], stack: Stack) -> None:
    victim_key = next(iter(walls["before"]))
    for key in (victim_key, next(k for k in walls["before"] if "/packs/" in k)):
        with pytest.raises(ClientError) as read:
            _guest_client(stack, "s3").get_object(Bucket=walls["bucket"], Key=key)
        assert read.value.response["Error"]["Code"] == "AccessDenied"
    with pytest.raises(ClientError) as proposal:
        _guest_client(stack, "s3").put_object(Bucket=walls["bucket"], Body=b'{"loose": [], "packs": []}',
                                              Key=next(k for k in walls["before"] if "/proposals/" in k))
    assert proposal.value.response["Error"]["Code"] == "AccessDenied"
    with pytest.raises(ClientError) as write:
        _guest_client(stack, "dynamodb").put_item(TableName=walls["table"], Item={
            "pk": {"S": f"WS#{DEV}"}, "sk": {"S": "MEMBER#guest"}})
    assert write.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert "not authorized to perform: dynamodb:PutItem" in str(write.value)
    with pytest.raises(ClientError) as forged:
        _guest_client(stack, "s3", secret="not-the-secret").get_object(Bucket=walls["bucket"], Key=victim_key)
    assert forged.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    unknown = boto3.client("s3", endpoint_url=stack.runtime["endpoint_url"], region_name="us-east-1",
                           aws_access_key_id="AKIAUNKNOWNKEY000000", aws_secret_access_key="x")
    with pytest.raises(ClientError) as refused:
        unknown.get_object(Bucket=walls["bucket"], Key=victim_key)
    assert refused.value.response["Error"]["Code"] == "InvalidAccessKeyId"
    # Positive control: the same read with the emulator's admin identity works, so the refusals mean something.
    assert stack.aws("s3").get_object(Bucket=walls["bucket"], Key=victim_key)["Body"].read()


def test_api_keeps_guest_out_of_dev_workspace(walls: dict[str, Any], stack: Stack) -> None:
    env = {**stack.env, "KAOS_PROFILE": "kaos-local-guest"}  # the override, for one command
    result = cli_process.run(["train", "list", "-w", DEV, "--json"], env, 120)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "does not exist (or you are not a member)" in result.stderr + result.stdout
    assert objects(stack, walls["bucket"], f"ws/{DEV}/") == walls["before"]
