"""Durable before acknowledged: every API write that answered 2xx, and every upload the emulator's S3 answered
200, survives `kill -9` of the embedded stack (kaos/local/persistence.py).

The stack runs with the periodic thread effectively off (KAOS_LOCAL_EXPORT_SECONDS=3600), and is killed right
after the last answer: whatever survives was made durable on the write's own path."""
from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from chalicelib.tenancy import POLICY_NAME, ROLE_PATH, job_definition_name, role_name
from kaos.bundle import LocalFile
from kaos.client import ApiError, Client
from kaos.local.persistence import Journal, Report, Stored, StoredTable, _json_safe, classify, load_stored

from .test_persistence import Restartable


def _timed(latencies: list[float], call: Any, *args: Any) -> Any:
    started = time.perf_counter()
    result = call(*args)
    latencies.append(time.perf_counter() - started)
    return result


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def _names(client: Client) -> set[str]:
    return {w["name"] for w in client.workspaces()}


def _restore_line(local: Restartable) -> str:
    lines = [line for line in (local.state_dir / "stack.log").read_text().splitlines() if "restored state" in line]
    assert lines, "the restarted stack restored nothing"
    return lines[-1]


@pytest.fixture
def local(tmp_path: Path) -> Iterator[Restartable]:
    stack = Restartable(tmp_path / "kaos-home")
    stack.env["KAOS_LOCAL_EXPORT_SECONDS"] = "3600"  # no periodic flush or snapshot during the test
    try:
        yield stack
    finally:
        stack.close()


def test_acknowledged_writes_survive_kill_9(local: Restartable, tmp_path: Path) -> None:
    stack = local.up()
    dev, guest = stack.client("dev"), stack.client("guest")
    acknowledged = 0
    create_latency: list[float] = []
    member_latency: list[float] = []

    # 20 workspaces of dev's, 4 requests at a time (concurrent writes share flushes), and 5 of guest's.
    dev_names = [f"cd-{i:02d}" for i in range(20)]
    with ThreadPoolExecutor(4) as pool:
        clients = [stack.client("dev") for _ in range(4)]
        list(pool.map(lambda i: _timed(create_latency, clients[i % 4].create_workspace, dev_names[i]), range(20)))
    guest_names = [f"cg-{i}" for i in range(5)]
    for name in guest_names:
        _timed(create_latency, guest.create_workspace, name)
    acknowledged += 25

    # Shares and unshares: guest is a member of cd-05..09 in the end, not of cd-00..04.
    for name in dev_names[:10]:
        _timed(member_latency, dev.share, name, "guest")
    for name in dev_names[:5]:
        _timed(member_latency, dev.unshare, name, "guest")
    acknowledged += 15

    # A data snapshot: the commit (202 pending), one presigned PUT per blob straight to S3, the complete (201).
    source = tmp_path / "snapshot"
    source.mkdir()
    files = []
    for i in range(3):
        body = f"row {i}\n".encode() * (100 + i)
        (source / f"part-{i}.csv").write_bytes(body)
        files.append(LocalFile(f"part-{i}.csv", source / f"part-{i}.csv", hashlib.sha256(body).hexdigest(),
                               len(body)))
    snapshot = dev.upload_snapshot("cd-11", "data", files, lambda n: None)
    assert snapshot.get("status") != "pending", snapshot
    acknowledged += 2 + len(files)

    # Incoming files for auto-retrain: one API request, then presigned PUTs the emulator's S3 acknowledges.
    incoming = {"new-a.csv": b"a,b\n1,2\n", "new-b.csv": b"a,b\n3,4\n" * 50}
    for name, body in incoming.items():
        (tmp_path / name).write_bytes(body)
    pushed = dev.push_data("cd-12", [(name, tmp_path / name) for name in incoming], lambda n: None)
    acknowledged += 1 + len(incoming)

    dev.kill_workspace("cd-19")
    # The case: an unshare answered 200, then the stack is killed.
    dev.share("cd-10", "guest")
    dev.unshare("cd-10", "guest")
    acknowledged += 3
    local.crash()

    started = time.monotonic()
    stack = local.up()
    restart_seconds = time.monotonic() - started
    dev, guest = stack.client("dev"), stack.client("guest")

    assert _names(dev) >= set(dev_names[:19]) and "cd-19" not in _names(dev)
    assert _names(guest) == set(guest_names) | set(dev_names[5:10])
    for name in [*dev_names[:5], "cd-10"]:
        with pytest.raises(ApiError) as refused:
            guest.workspace(name)
        assert refused.value.status in (403, 404), name
        assert "guest" not in json.dumps(dev.members(name)), name
    for name in dev_names[5:10]:
        assert guest.workspace(name)["name"] == name
    # The snapshot commits again as the same, complete snapshot: its manifest and every blob came back.
    again = dev.request("POST", "/workspaces/cd-11/snapshots", {
        "kind": "data", "files": [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in files]})
    assert again["id"] == snapshot["id"] and again.get("status") != "pending", again
    s3 = stack.aws("s3")
    for entry in pushed["files"]:
        bucket, key = unquote(urlsplit(entry["url"]).path).lstrip("/").split("/", 1)
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == incoming[entry["path"]]

    # Each workspace's execution role and Batch job definition (made by the API with the workspace) came back.
    iam, batch = stack.aws("iam"), stack.aws("batch")
    for name in [*dev_names[:19], *guest_names]:
        incarnation = dev.workspace(name)["created_at"] if name in dev_names else guest.workspace(name)["created_at"]
        assert iam.get_role(RoleName=role_name(name, incarnation))["Role"]["Path"] == ROLE_PATH, name
        assert iam.get_role_policy(RoleName=role_name(name, incarnation), PolicyName=POLICY_NAME)["PolicyDocument"]
        assert batch.describe_job_definitions(jobDefinitionName=job_definition_name(name, incarnation),
                                              status="ACTIVE")["jobDefinitions"], name

    restored = _restore_line(local)
    print(f"\ncrash durability: N={acknowledged} acknowledged writes, kill -9 right after the last one; "
          f"all {acknowledged} present after restart ({restart_seconds:.1f} s to restart incl. `kaos local up`; "
          f"{restored.split(': ', 1)[0].split(' in ', 1)[-1]} restoring {restored.split(': ', 1)[1]}); "
          f"workspace create p50 {_percentile(create_latency, 0.5) * 1e3:.0f} ms "
          f"p95 {_percentile(create_latency, 0.95) * 1e3:.0f} ms, share/unshare p50 "
          f"{_percentile(member_latency, 0.5) * 1e3:.0f} ms p95 {_percentile(member_latency, 0.95) * 1e3:.0f} ms")

    # A second crash after writes made on top of the replayed journal: it continues where the valid part ended.
    for i in range(3):
        dev.create_workspace(f"after-{i}")
    dev.unshare("cd-05", "guest")
    local.crash()
    stack = local.up()
    dev, guest = stack.client("dev"), stack.client("guest")
    assert {f"after-{i}" for i in range(3)} | set(dev_names[:19]) <= _names(dev)
    assert _names(guest) == set(guest_names) | set(dev_names[6:10])

    # A clean stop (which writes no snapshot: the journal is as durable) leaves files that hold the same.
    local.down()
    stored = load_stored(local.state_dir / "data")
    members = {json.loads(key)["pk"]["S"] for items in stored.tables.values() for key, item in items.items()
               if "user/guest" in item.get("sk", {}).get("S", "")}
    assert members >= {f"WS#{name}" for name in [*dev_names[6:10], *guest_names]}
    assert not members & {f"WS#{name}" for name in [*dev_names[:6], "cd-10"]}


# --- the pieces, without a stack ------------------------------------------------------------------------------
def test_a_torn_journal_tail_is_ignored_and_cut_off(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.log")
    journal.open(0)
    journal.append([{"t": "s3", "seq": 1, "bucket": "b", "key": "k", "entry": None}])
    journal.append([{"t": "s3", "seq": 2, "bucket": "b", "key": "l", "entry": None}])
    journal.close()
    whole = (tmp_path / "journal.log").read_bytes()
    # A crash during the third append: part of a line, or a whole line with another checksum.
    for tail in (b"0badc0de {\"t\":", Journal.encode({"t": "s3", "seq": 3})[:-1], b"00000000 {}\n"):
        (tmp_path / "journal.log").write_bytes(whole + tail)
        records, length = Journal(tmp_path / "journal.log").read()
        assert [r["seq"] for r in records] == [1, 2] and length == len(whole)
    journal = Journal(tmp_path / "journal.log")
    journal.open(length)
    journal.append([{"t": "s3", "seq": 3, "bucket": "b", "key": "m", "entry": None}])
    assert [r["seq"] for r in journal.read()[0]] == [1, 2, 3]


def test_replay_applies_only_records_newer_than_each_snapshot(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "dynamodb").mkdir(parents=True)
    (data / "format.json").write_text('{"format": 2}')

    def item(pk: str, value: str) -> dict[str, Any]:
        return {"pk": {"S": pk}, "v": {"S": value}}

    lines = [{"kaos_snapshot": {"journal_seq": 2, "key": ["pk"]}}, item("a", "snap"), item("b", "snap")]
    (data / "dynamodb" / "T.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    journal = Journal(data / "journal.log")
    journal.open(0)
    journal.append([
        {"t": "ddb", "seq": 1, "table": "T", "key": {"pk": {"S": "a"}}, "item": item("a", "old")},  # covered
        {"t": "ddb", "seq": 3, "table": "T", "key": {"pk": {"S": "b"}}, "item": None},
        {"t": "ddb", "seq": 4, "table": "T", "key": {"pk": {"S": "c"}}, "item": item("c", "new")},
        {"t": "ddb_table", "seq": 5, "table": "U", "key": ["pk"], "items": [item("x", "1"), item("y", "1")]},
        {"t": "ddb", "seq": 6, "table": "U", "key": {"pk": {"S": "y"}}, "item": None},
    ])
    stored = load_stored(data)
    assert {k: v["v"]["S"] for k, v in stored.tables["T"].items()} == {'{"pk":{"S":"a"}}': "snap",
                                                                       '{"pk":{"S":"c"}}': "new"}
    assert list(stored.tables["U"]) == ['{"pk":{"S":"x"}}']
    assert stored.seq == 6 and stored.journal_records == 5


def _environ(method: str, path: str, body: bytes = b"", **headers: str) -> dict[str, Any]:
    import io

    environ = {"REQUEST_METHOD": method, "RAW_URI": path, "PATH_INFO": unquote(path.split("?")[0]),
               "QUERY_STRING": path.split("?", 1)[1] if "?" in path else "", "HTTP_HOST": "127.0.0.1:5000",
               "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body)}
    environ.update({f"HTTP_{k.upper()}": v for k, v in headers.items()})
    return environ


SIGNED = "AWS4-HMAC-SHA256 Credential=AKIA/20260101/us-east-1/{}/aws4_request, SignedHeaders=host, Signature=ab"


def test_writes_are_attributed_to_the_keys_they_touch() -> None:
    ddb = SIGNED.format("dynamodb")
    put = {"TableName": "T", "Item": {"pk": {"S": "a"}, "v": {"N": "1"}}}
    request = classify(_environ("POST", "/", json.dumps(put).encode(), authorization=ddb,
                                x_amz_target="DynamoDB_20120810.PutItem"))
    assert request is not None and request.early and request.changes.ddb_keys == {("T", "item", json.dumps(
        put["Item"], sort_keys=True, separators=(",", ":")))}
    transaction = {"TransactItems": [{"ConditionCheck": {"TableName": "T", "Key": {"pk": {"S": "c"}}}},
                                     {"Update": {"TableName": "T", "Key": {"pk": {"S": "u"}}}},
                                     {"Delete": {"TableName": "arn:aws:dynamodb:us-east-1:1:table/U",
                                                 "Key": {"pk": {"S": "d"}}}}]}
    request = classify(_environ("POST", "/", json.dumps(transaction).encode(), authorization=ddb,
                                x_amz_target="DynamoDB_20120810.TransactWriteItems"))
    assert request is not None
    assert {(t, k) for t, _, k in request.changes.ddb_keys} == {("T", '{"pk":{"S":"u"}}'), ("U", '{"pk":{"S":"d"}}')}
    assert classify(_environ("POST", "/", b"{}", authorization=ddb, x_amz_target="DynamoDB_20120810.Query")) is None
    unknown = classify(_environ("POST", "/", b"{}", authorization=ddb,
                                x_amz_target="DynamoDB_20120810.ExecuteStatement"))
    assert unknown is not None and unknown.changes.ddb_all

    s3 = SIGNED.format("s3")
    put_object = classify(_environ("PUT", "/bucket/ws/a%20b/%C3%A9.csv", authorization=s3))
    assert put_object is not None and put_object.changes.s3_keys == {"bucket": {"ws/a b/é.csv"}}
    assert not put_object.presigned
    for ignored in ("/bucket/k?tagging", "/bucket/k?uploadId=1&partNumber=2", "/bucket?versioning"):
        assert classify(_environ("PUT", ignored, authorization=s3)) is None, ignored
    complete = classify(_environ("POST", "/bucket/big?uploadId=1", authorization=s3))
    assert complete is not None and complete.changes.s3_keys == {"bucket": {"big"}}
    deletes = b"<Delete><Object><Key>x/1</Key></Object><Object><Key>x/&amp;2</Key><VersionId>v</VersionId></Object>"
    many = classify(_environ("POST", "/bucket?delete", deletes + b"</Delete>", authorization=s3))
    assert many is not None and many.changes.s3_keys == {"bucket": {"x/1", "x/&2"}}
    for query in ("AWSAccessKeyId=AKIA&Signature=x&Expires=1",
                  "X-Amz-Credential=AKIA%2F20260101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Signature=ab"):
        presigned = classify(_environ("PUT", f"/bucket/ws/w/blobs/abc?{query}"))
        assert presigned is not None and presigned.presigned and presigned.changes.s3_keys == {
            "bucket": {"ws/w/blobs/abc"}}

    start = classify(_environ("POST", "/", json.dumps({
        "stateMachineArn": "arn:aws:states:us-east-1:1:stateMachine:M", "name": "job-1"}).encode(),
        authorization=SIGNED.format("states"), x_amz_target="AWSStepFunctions.StartExecution"))
    assert start is not None and start.changes.executions == {"arn:aws:states:us-east-1:1:execution:M:job-1"}
    role = classify(_environ("POST", "/", b"Action=PutRolePolicy&RoleName=kaos-ws-a-1&PolicyName=p&Version=2010-05-08",
                             authorization=SIGNED.format("iam")))
    assert role is not None and role.changes.resources == {("iam_role", "kaos-ws-a-1")}
    assert classify(_environ("POST", "/", b"Action=GetRole&RoleName=kaos-ws-a-1",
                             authorization=SIGNED.format("iam"))) is None
    definition = classify(_environ("POST", "/v1/deregisterjobdefinition", json.dumps({
        "jobDefinition": "arn:aws:batch:us-east-1:1:job-definition/kaos-ws-a-1:3"}).encode(),
        authorization=SIGNED.format("batch")))
    assert definition is not None and definition.changes.resources == {("batch_job_definition", "kaos-ws-a-1")}
    unsigned = classify(_environ("POST", "/anything"))
    assert unsigned is not None and unsigned.changes.ddb_all and unsigned.changes.s3_all
    assert re.fullmatch(r"[0-9a-f]{8} \{.*\}\n", Journal.encode({"t": "x"}).decode())


def test_executions_and_log_streams_are_listed_in_process_as_the_api_lists_them(tmp_path: Path) -> None:
    """The flush lists executions (after a job step) and the log export lists log streams (each tick after a job
    logged) from moto's backends in this process: over HTTP that was a request per page of every state machine's
    executions and of every group's streams, in proportion to everything ever run. They list what the API lists."""
    from kaos.local.emulator import Emulator
    from kaos.local.persistence import StateStore

    with Emulator(tmp_path / "work") as emulator:
        store = StateStore(tmp_path / "data", emulator.client, "us-east-1", "123456789012")
        sfn, logs = emulator.client("stepfunctions"), emulator.client("logs")
        machine = sfn.create_state_machine(name="m", roleArn="arn:aws:iam::123456789012:role/r", definition=json.dumps(
            {"StartAt": "W", "States": {"W": {"Type": "Wait", "SecondsPath": "$.wait", "End": True}}}))
        for name, wait in (("quick", 0), ("slow", 60)):
            sfn.start_execution(stateMachineArn=machine["stateMachineArn"], name=name, input=json.dumps({"wait": wait}))
        quick = machine["stateMachineArn"].replace(":stateMachine:", ":execution:") + ":quick"
        while sfn.describe_execution(executionArn=quick)["status"] == "RUNNING":
            time.sleep(0.05)  # polling the execution's state, not waiting for an assumed duration
        logs.create_log_group(logGroupName="g")
        for stream in ("a", "b", "empty"):
            logs.create_log_stream(logGroupName="g", logStreamName=stream)
        for stream, count in (("a", 3), ("b", 1)):
            logs.put_log_events(logGroupName="g", logStreamName=stream, logEvents=[
                {"timestamp": 1_700_000_000_000 + i, "message": f"{stream}{i}"} for i in range(count)])

        listed, streams = sorted(store._listed_executions()), store._log_streams()
        assert [status for _, status in listed] == ["SUCCEEDED", "RUNNING"]

        def unreachable(*args: Any) -> Any:
            raise RuntimeError("moto's backends changed")

        # The same over HTTP, what the store falls back to when the backends are out of reach.
        store._executions_in_process = store._log_streams_in_process = unreachable  # type: ignore[method-assign]
        assert sorted(store._listed_executions()) == listed
        assert store._log_streams() == streams and [s["logStreamName"] for s in dict(streams)["g"]] == \
            ["a", "b", "empty"]
        sfn.stop_execution(executionArn=quick.replace(":quick", ":slow"))


def test_in_process_reads_describe_what_the_api_describes(tmp_path: Path) -> None:
    """The flush reads items, roles and job definitions from moto's backends in this process (each API call
    costs tens of ms there); they must say what the API says, which restore gives back to the API."""
    from kaos.local.emulator import Emulator
    from kaos.local.persistence import StateStore

    with Emulator(tmp_path / "work") as emulator:
        store = StateStore(tmp_path / "data", emulator.client, "us-east-1", "123456789012")
        ddb, iam, batch = emulator.client("dynamodb"), emulator.client("iam"), emulator.client("batch")
        ddb.create_table(TableName="T", BillingMode="PAY_PER_REQUEST",
                         KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                                    {"AttributeName": "sk", "KeyType": "RANGE"}],
                         AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                               {"AttributeName": "sk", "AttributeType": "S"}])
        item = {"pk": {"S": "a"}, "sk": {"S": "b"}, "n": {"N": "1.5"}, "ss": {"SS": ["p", "q"]},
                "m": {"M": {"l": {"L": [{"S": "x"}, {"BOOL": True}]}}}, "bin": {"B": b"\x00\x01"},
                "nul": {"NULL": True}}
        ddb.put_item(TableName="T", Item=item)
        keys = {'{"pk":{"S":"a"},"sk":{"S":"b"}}': {"pk": {"S": "a"}, "sk": {"S": "b"}},
                '{"pk":{"S":"a"},"sk":{"S":"none"}}': {"pk": {"S": "a"}, "sk": {"S": "none"}},
                '{"pk":{"S":"absent"},"sk":{"S":"b"}}': {"pk": {"S": "absent"}, "sk": {"S": "b"}}}
        in_process = store._items_in_process("T", keys)
        assert in_process is not None and list(in_process) == ['{"pk":{"S":"a"},"sk":{"S":"b"}}']
        got = ddb.get_item(TableName="T", Key=keys['{"pk":{"S":"a"},"sk":{"S":"b"}}'])["Item"]
        assert in_process['{"pk":{"S":"a"},"sk":{"S":"b"}}'] == _json_safe(got)
        # Restored from its stored (JSON) form straight into moto's table, it reads back as it was written.
        ddb.delete_item(TableName="T", Key=keys['{"pk":{"S":"a"},"sk":{"S":"b"}}'])
        store._import_dynamodb(Stored(tables={"T": StoredTable({"k": _json_safe(got)})}), Report())
        assert ddb.get_item(TableName="T", Key=keys['{"pk":{"S":"a"},"sk":{"S":"b"}}'])["Item"] == got
        assert [json.loads(line) for line in store._scan("T")] == [_json_safe(got)]
        assert len(emulator_table_partitions(store)) == 1  # looking up an absent key created no partition

        # An object restored from its stored body file reads back whole, in ranges, with its headers.
        s3 = emulator.client("s3")
        s3.create_bucket(Bucket="restored")
        body = bytes(range(256)) * 40
        s3.put_object(Bucket="restored", Key="k/model.bin", Body=body, ContentType="application/x-test",
                      Metadata={"m": "1"}, ChecksumAlgorithm="SHA256")
        before = s3.head_object(Bucket="restored", Key="k/model.bin", ChecksumMode="ENABLED")
        _, _, entry = store._object("restored", "k/model.bin")
        assert isinstance(entry, dict)
        s3.delete_object(Bucket="restored", Key="k/model.bin")
        store._import_s3(Stored(buckets={"restored": {"k/model.bin": entry}}), Report())
        after = s3.get_object(Bucket="restored", Key="k/model.bin", ChecksumMode="ENABLED")
        assert after["Body"].read() == body
        kept = ("ETag", "ContentType", "Metadata", "ContentLength", "ChecksumSHA256")
        assert {k: after[k] for k in kept} == {k: before[k] for k in kept}
        ranged = s3.get_object(Bucket="restored", Key="k/model.bin", Range="bytes=256-511")
        assert ranged["Body"].read() == body[256:512]
        assert [o["Key"] for o in s3.list_objects_v2(Bucket="restored")["Contents"]] == ["k/model.bin"]
        # Each changed object's entry is read from moto's object in process; it says what GetObject says.
        s3.put_object(Bucket="restored", Key="plain", Body=b"x" * 10)
        s3.put_object(Bucket="restored", Key="empty", Body=b"")
        s3.put_object(Bucket="restored", Key="typed", Body=b"{}", ContentType="application/json",
                      Metadata={"Sha256": "abc", "x": "y"}, ContentEncoding="gzip", CacheControl="no-cache",
                      ContentDisposition="attachment")
        s3.put_object(Bucket="restored", Key="signed", Body=b"hello",
                      ChecksumSHA256=base64.b64encode(hashlib.sha256(b"hello").digest()).decode())
        upload = s3.create_multipart_upload(Bucket="restored", Key="parts", ChecksumAlgorithm="SHA256")
        part = s3.upload_part(Bucket="restored", Key="parts", UploadId=upload["UploadId"], PartNumber=1,
                              Body=b"p" * (5 << 20), ChecksumAlgorithm="SHA256")
        s3.complete_multipart_upload(Bucket="restored", Key="parts", UploadId=upload["UploadId"], MultipartUpload={
            "Parts": [{"ETag": part["ETag"], "PartNumber": 1, "ChecksumSHA256": part["ChecksumSHA256"]}]})
        s3.put_object(Bucket="restored", Key="gone", Body=b"g")
        s3.delete_object(Bucket="restored", Key="gone")
        for key in ("k/model.bin", "plain", "empty", "typed", "signed", "parts", "gone", "never"):
            assert store._object("restored", key) == store._object_over_http("restored", key, None, tmp_path), key
        assert store._object("restored", "signed")[2]["checksums"] == {  # type: ignore[index]
            "ChecksumSHA256": base64.b64encode(hashlib.sha256(b"hello").digest()).decode()}
        assert store._object("no-such-bucket", "k") == ("no-such-bucket", "k", False)

        policy = iam.create_policy(PolicyName="boundary", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        iam.create_role(RoleName="kaos-ws-a-1", Path="/kaos/workspaces/", MaxSessionDuration=43200, Description="d",
                        PermissionsBoundary=policy["Policy"]["Arn"], Tags=[{"Key": "k", "Value": "v"}],
                        AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [{
                            "Effect": "Allow", "Action": "sts:AssumeRole",
                            "Principal": {"Service": ["sagemaker.amazonaws.com"]}}]}))
        iam.put_role_policy(RoleName="kaos-ws-a-1", PolicyName="workspace", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}]}))
        iam.attach_role_policy(RoleName="kaos-ws-a-1", PolicyArn=policy["Policy"]["Arn"])
        batch.register_job_definition(jobDefinitionName="kaos-ws-a-1", type="container", containerProperties={
            "image": "img", "vcpus": 1, "memory": 128, "command": ["run"],
            "jobRoleArn": "arn:aws:iam::123456789012:role/kaos/workspaces/kaos-ws-a-1"})
        described = (store._role("kaos-ws-a-1"), store._job_definition("kaos-ws-a-1"))
        assert described[0] is not None and described[0]["policies"]["workspace"]["Statement"][0]["Resource"] == "*"
        assert described[1] is not None and described[1]["containerProperties"]["image"] == "img"
        assert store._role("absent") is None and store._job_definition("absent") is None

        def unreachable(name: str) -> Any:
            raise RuntimeError("moto's backends changed")

        # The same over HTTP, what the store falls back to when the backends are out of reach.
        store._role_in_process = store._job_definitions_in_process = unreachable  # type: ignore[method-assign]
        assert (store._role("kaos-ws-a-1"), store._job_definition("kaos-ws-a-1")) == described
        assert store._role("absent") is None and store._job_definition("absent") is None


def emulator_table_partitions(store: Any) -> list[Any]:
    from moto.dynamodb.models import dynamodb_backends

    return list(dynamodb_backends[store.account][store.region].get_table("T").items)


def test_an_execution_that_ends_after_the_last_flush_is_stored_ended_by_the_stop(tmp_path: Path) -> None:
    """An execution ends inside the emulator, after its last task's writes, with no request that marks it changed:
    a stop right after it ended (before the periodic thread looked again) must store it ended, or the next start
    fails it as interrupted."""
    from kaos.local.emulator import Emulator
    from kaos.local.persistence import Persistence

    with Emulator(tmp_path / "work") as emulator:
        persistence = Persistence(tmp_path / "state", emulator.client, "us-east-1", "123456789012", interval=3600)
        assert persistence.track(emulator.wsgi_server)
        persistence.restore()
        persistence.start()
        sfn = emulator.client("stepfunctions")
        machine = sfn.create_state_machine(
            name="m", roleArn="arn:aws:iam::123456789012:role/r",
            definition=json.dumps({"StartAt": "W", "States": {"W": {"Type": "Wait", "Seconds": 1, "End": True}}}),
        )["stateMachineArn"]
        arn = sfn.start_execution(stateMachineArn=machine, name="e")["executionArn"]
        persistence.flush()
        assert persistence.store.executions[arn]["status"] == "RUNNING"
        deadline = time.monotonic() + 60
        while sfn.describe_execution(executionArn=arn)["status"] == "RUNNING":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        persistence.stop()
    assert load_stored(tmp_path / "state" / "data").executions[arn]["status"] == "SUCCEEDED"


def test_a_key_is_named_by_its_compact_json_with_sorted_names() -> None:
    """Stored items and journal records are matched by this string: it must stay json.dumps' canonical form."""
    from kaos.local.persistence import _key_json

    keys = [{"pk": {"S": "ws#a"}, "sk": {"S": "JOB#é\"\\\n\u2028😀"}}, {"sk": {"N": "-1.5e3"}, "pk": {"B": "AP8="}},
            {"only": {"S": ""}}, {"pk": {"S": "x"}, "odd": {"L": [{"S": "y"}]}}]
    for key in keys:
        assert _key_json(key) == json.dumps(key, sort_keys=True, separators=(",", ":"))
    item = {**keys[0], "other": {"M": {"a": {"N": "1"}}}}
    assert _key_json(item, ["sk", "pk"]) == json.dumps(keys[0], sort_keys=True, separators=(",", ":"))


def test_a_snapshot_line_is_read_by_its_key_alone_when_its_key_is_plain() -> None:
    """A snapshot writes each item key first (item_line), so a start reads the key from the line's start and
    leaves the rest unparsed. Whatever the key's values, the line reads back as the item under its _key_json; a
    key that needs escaping, or a line laid out otherwise (an older snapshot's), is parsed."""
    from kaos.local.patches_dynamodb import StoredText
    from kaos.local.persistence import StoredTable, _key_json, item_line

    names = ["sk", "pk"]
    plain = [("S", "WS#a"), ("S", ""), ("N", "-1.5e3"), ("B", "AP8="), ("S", "a b!#$%&'()*+,-./:;<=>?@[]^_`{|}~")]
    escaped = [("S", 'q"uote'), ("S", "back\\slash"), ("S", "é"), ("S", "tab\t"), ("S", "\u2028😀")]
    rest = {"a": {"S": "x"}, "m": {"M": {"sk": {"S": "inner"}}}, "b": {"B": "AAE="}, "l": {"L": [{"NULL": True}]}}
    cases = [({"pk": {pk[0]: pk[1]}, "sk": {sk[0]: sk[1]}, **rest}, pk in plain and sk in plain)
             for pk in plain + escaped for sk in plain[:2] + escaped[:2]]
    cases.append(({"pk": {"S": "k"}, "sk": {"S": "only the key"}}, True))
    for item, unparsed in cases:
        line = item_line(item, names)
        assert json.loads(line) == item
        table = StoredTable()
        table.read([line + "\n"], names)
        key = _key_json(item, names)
        assert list(table) == [key] and table[key] == item
        entry = table.entries[key]
        assert isinstance(entry, StoredText) == unparsed, line
        if isinstance(entry, StoredText):
            assert entry.text == line
            assert entry.key == {name: next(iter(item[name].items())) for name in names}
    # Lines laid out otherwise are parsed, under the same key.
    item = cases[0][0]
    for line in (json.dumps(item, sort_keys=True, separators=(",", ":")), json.dumps(item)):
        table = StoredTable()
        table.read([line], names)
        assert table.entries == {_key_json(item, names): item}


def test_a_snapshot_is_left_unparsed_only_when_its_lines_match_its_crc(tmp_path: Path) -> None:
    """A start leaves a snapshot's item lines unparsed only when they are what the snapshot wrote (the CRC-32 in
    its header): a damaged line in a snapshot then fails the start, as it did when every line was parsed, instead of
    the first request that reads the item; a snapshot without a CRC (written before) is parsed whole."""
    from kaos.local.patches_dynamodb import StoredText
    from kaos.local.persistence import item_line, lines_crc32

    data = tmp_path / "data"
    (data / "dynamodb").mkdir(parents=True)
    (data / "format.json").write_text('{"format": 2}')
    items = [{"pk": {"S": f"p{i}"}, "sk": {"S": "s"}, "v": {"N": str(i)}} for i in range(3)]
    lines = [item_line(item, ["pk", "sk"]) for item in items]

    def snapshot(body: list[str], **header: Any) -> None:
        first = json.dumps({"kaos_snapshot": {"journal_seq": 0, "key": ["pk", "sk"], **header}})
        (data / "dynamodb" / "T.jsonl").write_text("".join(line + "\n" for line in [first, *body]))

    snapshot(lines, crc32=lines_crc32(lines))
    stored = load_stored(data)
    table = stored.tables["T"]
    assert all(isinstance(entry, StoredText) for entry in table.entries.values()) and list(table.values()) == items
    assert not stored.unverified
    snapshot(lines)  # no CRC: parsed, the same items, and the start's first tick writes the snapshot again
    stored = load_stored(data)
    table = stored.tables["T"]
    assert not any(isinstance(entry, StoredText) for entry in table.entries.values()) and list(table.values()) == items
    assert stored.unverified
    damaged = [*lines[:2], lines[2][:-5]]  # the key intact, the rest cut
    snapshot(damaged, crc32=lines_crc32(lines))
    with pytest.raises(json.JSONDecodeError):
        load_stored(data)
