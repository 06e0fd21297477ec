"""Job logs (chalicelib/logs.py, contract C7) on moto's in-process CloudWatch Logs and S3 (no embedded stack)."""
from __future__ import annotations

import time
from typing import Any

import pytest

from chalicelib.adapters import AwsClients, LogReader, ObjectStore
from chalicelib.errors import ValidationFailed
from chalicelib.logs import JobLogs
from tests.aws_fixtures import aws_env_fixture, moto_fixture  # noqa: F401  (fixtures)

GROUP, STREAM, BUCKET, ARCHIVE = "/aws/sagemaker/TrainingJobs", "job-1/algo-1", "kaos-data", "ws/w/jobs/j/log.txt"


@pytest.fixture
def aws(moto: AwsClients) -> AwsClients:
    moto.logs.create_log_group(logGroupName=GROUP)
    moto.logs.create_log_stream(logGroupName=GROUP, logStreamName=STREAM)
    moto.s3.create_bucket(Bucket=BUCKET)
    return moto


def write(clients: AwsClients, messages: list[str], at: int | None = None) -> None:
    stamp = at if at is not None else int(time.time() * 1000)
    for start in range(0, len(messages), 10_000):  # PutLogEvents takes at most 10,000 events
        clients.logs.put_log_events(logGroupName=GROUP, logStreamName=STREAM, logEvents=[
            {"timestamp": stamp, "message": m} for m in messages[start:start + 10_000]])


def job_logs(clients: AwsClients) -> JobLogs:
    return JobLogs(store=ObjectStore(clients.s3, BUCKET), reader=LogReader(clients.logs, GROUP))


def page(logs: JobLogs, cursor: str | None, limit: int, ended: bool = False) -> dict[str, Any]:
    return logs.page(job_id="j", status="COMPLETED" if ended else "TRAINING", ended=ended,
                     stream_prefix="job-1/", archive_key=ARCHIVE, cursor=cursor, limit=limit)


def messages(answer: dict[str, Any]) -> list[str]:
    return [e["message"] for e in answer["events"]]


def test_following_never_returns_an_event_twice_and_ends_when_the_job_has(aws: AwsClients) -> None:
    """Bug 3: when CloudWatch gave no new token the server handed back the old one, so `-f` reprinted forever."""
    logs = job_logs(aws)
    now = int(time.time() * 1000)
    write(aws, ["a", "b", "c"], at=now)
    first = page(logs, None, 2)
    second = page(logs, first["next"], 2)
    idle = page(logs, second["next"], 2)
    assert (messages(first), messages(second), messages(idle)) == (["a", "b"], ["c"], [])
    assert not idle["complete"]
    write(aws, ["d"], at=now)  # the same millisecond as "c": only the new event comes
    write(aws, ["e"], at=now + 1)
    more = page(logs, idle["next"], 10)
    assert messages(more) == ["d", "e"]
    done = page(logs, more["next"], 10, ended=True)
    assert messages(done) == [] and done["complete"]


def test_paging_returns_every_line_past_a_thousand(aws: AwsClients) -> None:
    """Bug 3: `train logs` stopped at 1,000 lines; every page's `next` goes on until `complete`."""
    logs = job_logs(aws)
    lines = [f"line {i}" for i in range(2_500)]
    write(aws, lines)
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        answer = page(logs, cursor, 1_000, ended=True)
        seen += messages(answer)
        cursor = answer["next"]
        if answer["complete"]:
            break
    assert seen == lines


def test_the_archive_is_streamed_in_pages_and_read_back_in_byte_ranges(aws: AwsClients) -> None:
    logs = job_logs(aws)
    lines = [f"{i:06d} " + "x" * 100 for i in range(25_000)]  # three FilterLogEvents pages, 2.7 MB
    write(aws, lines)
    assert logs.archive("job-1/", ARCHIVE, tail=2) == lines[-2:]
    assert aws.s3.get_object(Bucket=BUCKET, Key=ARCHIVE)["Body"].read().decode().splitlines() == lines
    seen: list[str] = []
    cursor, pages = None, 0
    while True:
        answer = page(logs, cursor, 10_000, ended=True)
        pages += 1
        assert all(e["timestamp"] is None for e in answer["events"])  # read from the archive
        seen += messages(answer)
        cursor = answer["next"]
        if answer["complete"]:
            break
    assert seen == lines and pages >= 3  # 1 MB per page


def test_a_job_that_logged_nothing_archives_nothing(aws: AwsClients) -> None:
    logs = job_logs(aws)
    assert logs.archive("job-1/", ARCHIVE) == []
    assert ObjectStore(aws.s3, BUCKET).size(ARCHIVE) is None
    answer = page(logs, None, 10, ended=True)
    assert answer["events"] == [] and answer["complete"]


@pytest.mark.parametrize("cursor", ["garbage", "eyJ4IjoxfQ==", "eyJvIjotMX0="])  # not base64 JSON, {"x":1}, {"o":-1}
def test_a_forged_cursor_is_a_400(aws: AwsClients, cursor: str) -> None:
    with pytest.raises(ValidationFailed, match="next"):
        page(job_logs(aws), cursor, 10)


@pytest.mark.parametrize("limit", [0, 10_001])
def test_limit_is_bounded(aws: AwsClients, limit: int) -> None:
    with pytest.raises(ValidationFailed, match="limit"):
        page(job_logs(aws), None, limit)


def test_no_streams_yet_is_an_empty_page_that_keeps_its_place(aws: AwsClients) -> None:
    logs = job_logs(aws)
    answer = logs.page(job_id="j", status="SUBMITTED", ended=False, stream_prefix=None, archive_key=ARCHIVE,
                       cursor=None, limit=10)
    assert answer["events"] == [] and not answer["complete"]


def test_a_page_longer_than_asked_never_skips_its_tail(aws_env: None) -> None:
    """When fewer repeated events come first than the cursor expects (they expired), the page CloudWatch answers is
    longer than `limit`: its token would skip what was cut, so the next page starts after the last event returned."""
    from botocore.stub import Stubber

    client = AwsClients()._make("logs")
    logs = JobLogs(store=ObjectStore(None, BUCKET), reader=LogReader(client, GROUP))
    pages: list[tuple[dict[str, Any], dict[str, Any]]] = [
        ({"events": [{"timestamp": 10, "message": "a"}, {"timestamp": 10, "message": "b"}]}, {"limit": 2}),
        ({"events": [{"timestamp": t, "message": m} for t, m in ((11, "c"), (12, "d"), (13, "e"))],
          "nextToken": "past-e"}, {"limit": 4, "startTime": 10}),
        ({"events": [{"timestamp": 12, "message": "d"}, {"timestamp": 13, "message": "e"}]},
         {"limit": 3, "startTime": 12}),
    ]
    answers = []
    with Stubber(client) as stub:
        for answer, asked in pages:
            stub.add_response("filter_log_events", answer,
                              {"logGroupName": GROUP, "logStreamNamePrefix": "job-1/", **asked})
        cursor = None
        for _ in pages:
            answers.append(page(logs, cursor, 2))
            cursor = answers[-1]["next"]
    assert [messages(a) for a in answers] == [["a", "b"], ["c", "d"], ["e"]]
    assert [a["complete"] for a in answers] == [False, False, False]  # the job has not ended
