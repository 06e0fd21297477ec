"""The AWS adapters (chalicelib/adapters.py) against botocore's Stubber: clients made once, from one Config whose pool
fits our thread pools, and ClientError codes turned into answers or named errors (nothing else is caught)."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from botocore.stub import Stubber

from chalicelib import adapters, batch, provenance
from chalicelib.adapters import AwsClients, Executions, LogReader, ObjectStore, TrainingJobs
from chalicelib.errors import AwsCallFailed, Conflict, InputInvalid, NotFound
from tests.aws_fixtures import aws_env_fixture, moto_fixture  # noqa: F401  (fixtures)


def stubbed(service: str) -> tuple[Any, Stubber]:
    client = AwsClients()._make(service)
    return client, Stubber(client)


@pytest.fixture
def s3(aws_env: None) -> Iterator[tuple[Any, Stubber]]:
    client, stub = stubbed("s3")
    with stub:
        yield client, stub
    stub.assert_no_pending_responses()


def test_the_pool_fits_every_thread_pool_that_shares_a_client(aws_env: None) -> None:
    """Bug 8: 16 HEAD threads shared botocore's default pool of 10 connections."""
    widest = max(adapters.HEAD_CONCURRENCY, batch.DATUM_CONCURRENCY, provenance.QUERY_CONCURRENCY)
    for client in (AwsClients().s3, AwsClients().logs):
        assert client.meta.config.max_pool_connections >= widest
        assert client.meta.config.retries["mode"] == "standard"
    assert AwsClients().s3.meta.config.signature_version == "s3v4"


def test_a_holder_makes_each_client_once(aws_env: None) -> None:
    held = AwsClients()
    assert held.s3 is held.s3 and held.stepfunctions is held.stepfunctions
    assert "sagemaker" not in vars(held)  # made on first use only


def test_absent_objects_are_answers_not_errors(s3: tuple[Any, Stubber]) -> None:
    client, stub = s3
    store = ObjectStore(client, "b")
    stub.add_client_error("head_object", http_status_code=404, service_error_code="404")
    stub.add_client_error("head_object", http_status_code=404, service_error_code="404")
    stub.add_client_error("get_object", service_error_code="NoSuchKey", http_status_code=404)
    assert store.size("k") is None
    assert store.facts("k") is None
    with pytest.raises(NotFound):
        store.get_bytes("k")


def test_other_client_errors_propagate(s3: tuple[Any, Stubber]) -> None:
    client, stub = s3
    stub.add_client_error("head_object", service_error_code="SlowDown", http_status_code=503)
    with pytest.raises(Exception, match="SlowDown"):
        ObjectStore(client, "b").size("k")


def test_a_conditional_put_on_an_existing_key_answers_false(s3: tuple[Any, Stubber]) -> None:
    client, stub = s3
    stub.add_client_error("put_object", service_error_code="PreconditionFailed", http_status_code=412)
    assert ObjectStore(client, "b").put_bytes("k", b"x", if_absent=True) is False


def test_a_changed_pinned_object_is_input_invalid(s3: tuple[Any, Stubber]) -> None:
    client, stub = s3
    stub.add_client_error("copy_object", service_error_code="PreconditionFailed", http_status_code=412)
    with pytest.raises(InputInvalid, match="changed since the snapshot pinned it"):
        ObjectStore(client, "b").copy_pinned("other", "k", "etag:abc", "dest")


def test_a_started_execution_of_that_name_is_reused_only_with_the_same_input(aws_env: None) -> None:
    client, stub = stubbed("stepfunctions")
    machine = "arn:aws:states:us-east-1:123456789012:stateMachine:m"
    arn = "arn:aws:states:us-east-1:123456789012:execution:m:job"
    with stub:
        for payload in ('{"a": 1}', '{"a": 2}'):
            stub.add_client_error("start_execution", service_error_code="ExecutionAlreadyExists")
            stub.add_response("describe_execution", {"executionArn": arn, "stateMachineArn": machine,
                                                     "status": "RUNNING", "startDate": 0, "input": payload})
        assert Executions(client).start(machine, "job", {"a": 1}) == arn
        with pytest.raises(Conflict):
            Executions(client).start(machine, "job", {"a": 1})


def test_stopping_an_ended_training_job_is_a_no_op(aws_env: None) -> None:
    client, stub = stubbed("sagemaker")
    with stub:
        stub.add_client_error("stop_training_job", service_error_code="ValidationException")
        stub.add_client_error("describe_training_job", service_error_code="ValidationException")
        TrainingJobs(client).stop("job")
        assert TrainingJobs(client).status("job") is None


def test_log_reads_go_on_past_empty_pages_that_carry_a_token(aws_env: None) -> None:
    """Bug 3: FilterLogEvents may answer an empty page with a nextToken; the archive stopped there."""
    client, stub = stubbed("logs")
    pages: list[tuple[dict[str, Any], str | None]] = [
        ({"events": [{"timestamp": 1, "message": "one"}], "nextToken": "t1"}, None),
        ({"events": [], "nextToken": "t2"}, "t1"),
        ({"events": [{"timestamp": 2, "message": "two"}]}, "t2")]
    with stub:
        for answer, token in pages:
            expected = {"logGroupName": "g", "logStreamNamePrefix": "job/", "limit": 10_000,
                        **({"nextToken": token} if token else {})}
            stub.add_response("filter_log_events", answer, expected)
        assert list(LogReader(client, "g").messages("job/")) == ["one", "two"]


def test_a_missing_log_group_is_an_empty_log(aws_env: None) -> None:
    client, stub = stubbed("logs")
    with stub:
        stub.add_client_error("filter_log_events", service_error_code="ResourceNotFoundException")
        assert list(LogReader(client, "g").messages("job/")) == []


def test_a_refused_log_read_is_a_named_error(aws_env: None) -> None:
    client, stub = stubbed("logs")
    with stub:
        stub.add_client_error("filter_log_events", service_error_code="AccessDeniedException", http_status_code=400)
        with pytest.raises(AwsCallFailed, match="AccessDeniedException"):
            LogReader(client, "g").page("job/", 10)


def test_a_refused_streamed_upload_is_a_named_error(moto: AwsClients) -> None:
    import io

    with pytest.raises(AwsCallFailed, match="upload failed"):
        ObjectStore(moto.s3, "no-such-bucket").put_stream("k", io.BytesIO(b"log line\n"))
