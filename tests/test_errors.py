"""Task handlers turn an AWS refusal for rate into `Throttled`, the name the state machines retry (cdk/states.py)."""
from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError
from pynamodb.exceptions import PutError

from chalicelib.errors import THROTTLING_CODES, Throttled, names, Transient, throttling_is_transient


def _client_error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "slow down"}}, "PutItem")


def _raising(exc: Exception) -> Any:
    @throttling_is_transient
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        raise exc

    return handler


@pytest.mark.parametrize("error", [_client_error("ProvisionedThroughputExceededException"),
                                   PutError("put failed", cause=_client_error("ThrottlingException"))])
def test_a_throttled_aws_call_leaves_the_task_as_throttled(error: Exception) -> None:
    with pytest.raises(Throttled) as raised:
        _raising(error)({}, None)
    assert raised.value.__cause__ is error
    assert "Throttled" in names(Transient)  # the state machines retry it by this name


@pytest.mark.parametrize("error", [_client_error("AccessDenied"), PutError("conditional", cause=_client_error(
    "ConditionalCheckFailedException")), KeyError("workspace")])
def test_other_errors_leave_unchanged(error: Exception) -> None:
    with pytest.raises(type(error)) as raised:
        _raising(error)({}, None)
    assert raised.value is error


def test_the_handler_answer_passes_through() -> None:
    @throttling_is_transient
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        return {"echo": event}

    assert handler({"a": 1}, None) == {"echo": {"a": 1}}
    assert "SlowDown" in THROTTLING_CODES
