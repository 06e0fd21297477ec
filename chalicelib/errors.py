"""Named exceptions: the API maps them to 4xx bodies, and their class names are the Step Functions error contract."""
from __future__ import annotations


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
