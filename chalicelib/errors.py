"""Named exceptions: the API maps them to 4xx bodies, and their class names are the Step Functions error contract.

A task Lambda that raises one fails with the class's `__name__` as its error name (Lambda reports only the concrete
class, never a base), and the state machines in cdk/ match those names: `names(Transient)` lists every retryable one.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

Handler = TypeVar("Handler", bound=Callable[..., Any])


class KaosError(Exception):
    """Base of every error kaos raises on purpose; `code` is the stable machine-readable name."""

    status = 400
    code = "BadRequest"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ValidationFailed(KaosError):
    status = 400
    code = "ValidationFailed"


class NotFound(KaosError):
    status = 404
    code = "NotFound"


class Forbidden(KaosError):
    """A member asked for something only the owner may do (members already know the workspace exists)."""

    status = 403
    code = "Forbidden"


class Conflict(KaosError):
    status = 409
    code = "Conflict"


class Transient(KaosError):
    """A failure worth repeating as it was: the state machines retry every subclass (by name) before any Catch, so a
    throttled write in Record does not fail a finished training."""

    status = 503
    code = "Transient"


class Throttled(Transient):
    """An AWS service refused a call for its rate (a code in THROTTLING_CODES) after the SDK's own retries."""

    code = "Throttled"


class ConcurrentUpdate(Conflict, Transient):
    """A conditional write lost a race with another writer (DynamoDB ConditionalCheckFailed on a version or status
    check): the API answers 409 (Conflict), a task Lambda is retried on the row as it now is (Transient)."""

    code = "ConcurrentUpdate"


# Error codes AWS services use for "slow down" (botocore's standard retry mode treats the same as throttling).
THROTTLING_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException", "TooManyRequestsException",
    "ProvisionedThroughputExceededException", "TransactionInProgressException", "RequestLimitExceeded",
    "BandwidthLimitExceeded", "LimitExceededException", "RequestThrottled", "SlowDown", "PriorRequestNotComplete",
    "EC2ThrottledException",
})


def _aws_error_code(exc: Exception) -> str | None:
    """The AWS error code behind a botocore ClientError, or a pynamodb error whose cause is one; else None."""
    response = getattr(exc, "response", None) or getattr(getattr(exc, "cause", None), "response", None)
    return response.get("Error", {}).get("Code") if isinstance(response, dict) else None


def throttling_is_transient(handler: Handler) -> Handler:
    """Wraps a Step Functions task handler: an AWS refusal for rate that outlasted botocore's own retries leaves as
    `Throttled`, which the state machines retry by name with their longer back-off (Lambda reports only the concrete
    class name, so a raw ClientError would be one opaque "ClientError" that no Retry can single out)."""

    @functools.wraps(handler)
    def task(*args: Any, **kwargs: Any) -> Any:
        try:
            return handler(*args, **kwargs)
        except Exception as exc:  # the outermost handler: only throttling is translated, everything else re-raised
            code = _aws_error_code(exc)
            if code in THROTTLING_CODES:
                raise Throttled(f"{code}: {exc}") from exc
            raise

    return task  # type: ignore[return-value]


def names(base: type[Exception]) -> list[str]:
    """`base` and all its subclasses by name: a Step Functions `ErrorEquals` matches the concrete class only."""
    found, todo = [], [base]
    while todo:
        cls = todo.pop()
        if cls.__name__ not in found:
            found.append(cls.__name__)
        todo.extend(cls.__subclasses__())
    return sorted(found)


class ConfigError(Exception):
    """A deployment fault, not a request's: a variable `component` reads is missing, malformed or undeclared
    (chalicelib/config.py). Raised at cold start, so the function fails before it does any work."""

    def __init__(self, message: str, *, variable: str, component: str) -> None:
        super().__init__(message)
        self.variable, self.component = variable, component


class AwsCallFailed(KaosError):
    """An AWS call an adapter makes failed after botocore's retries (its error code and message say why): a 502, as
    from any gateway whose upstream failed."""

    status = 502
    code = "AwsCallFailed"


class InputInvalid(KaosError):
    """A task Lambda found the job's recorded inputs unusable; Step Functions does not retry it."""

    code = "InputInvalid"


class PlatformBucketReference(ValidationFailed):
    """A remote data entry names one of the platform's own buckets: data kaos holds is referenced by its snapshot
    (or model), never by URL, so a manifest cannot reach keys outside the caller's workspace."""

    code = "PlatformBucketReference"


class ChecksumMismatch(ValidationFailed):
    """Bytes stored under a blob's name do not hash to that name: the snapshot is not committed."""

    code = "ChecksumMismatch"


class IntegrityError(InputInvalid):
    """A stored object kaos built or recorded (a snapshot manifest, a code snapshot's sourcedir.tar.gz, a batch
    datum cache entry or plan) no longer matches the sha256 recorded when it was written. The job fails with this
    reason and nothing runs on the object; Step Functions does not retry it (its error name is this class name)."""

    status = 409
    code = "IntegrityError"
