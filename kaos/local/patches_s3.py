"""S3 integrity behaviours that moto 5.2.5 lacks, patched in for the embedded stack.

Registered by :mod:`kaos.local.patches` (its ``apply`` and ``remove`` call this module's), installed and restored
the same way (``_set`` keeps each original), and listed in ``PATCH_POINTS`` below. Each has a contract test in
``tests/test_s3_integrity_contract.py`` that fails without it.

- **Checksums sent with a PUT are verified and kept.** S3 computes the body's checksum and refuses the request
  (400 ``BadDigest``) when an ``x-amz-checksum-<algorithm>`` value sent with it (a header, or the trailer of an
  aws-chunked body) differs, and keeps the value as the object's checksum (HeadObject/GetObject with
  ``ChecksumMode=ENABLED`` return it). moto (``S3Response._get_checksum``) reads the value only when
  ``x-amz-sdk-checksum-algorithm`` names the algorithm, which an SDK upload sends but a presigned PUT (signed with
  ``ChecksumSHA256``) does not, so such a checksum is not even kept; and it never compares a value with the body
  (a ``TODO`` in moto), so any bytes are stored under any checksum. kaos relies on both: a blob's presigned PUT
  carries its SHA-256, and derived caches are checked against the SHA-256 S3 keeps.
- **Conditional writes are atomic.** S3 decides ``If-None-Match: *`` (and ``If-Match``) together with the write:
  of two PUTs of an absent key with ``If-None-Match: *`` one succeeds and the other gets 412. moto checks the
  condition and then stores the object as two steps on the server's request threads, so both can succeed. The
  patch runs each PUT of a key (conditional or not) under that key's lock.

moto already refuses ``If-None-Match: *`` on an existing key (412 ``PreconditionFailed``); that behaviour is covered
by a contract test too, without a patch.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import threading
import zlib
from typing import Any, Final

from kaos.local.patching import Patches

PATCH_POINTS: Final[tuple[str, ...]] = (
    "moto.s3.responses.S3Response._get_checksum",
    "moto.s3.responses.S3Response.put_object (serialized per key)",
)

# Algorithms whose checksum can be computed exactly here; S3's others (CRC32C, CRC64NVME) need optional libraries
# that moto replaces by CRC32 when absent, so their values are kept unverified, as moto does.
_ALGORITHMS: Final[dict[str, Any]] = {
    "SHA256": lambda body: hashlib.sha256(body).digest(),
    "SHA1": lambda body: hashlib.sha1(body, usedforsecurity=False).digest(),
    "CRC32": lambda body: zlib.crc32(body).to_bytes(4, "big"),
}
# `x-amz-checksum-<algorithm>` headers that are not a checksum value.
_NOT_VALUES: Final = {"x-amz-checksum-mode", "x-amz-checksum-type", "x-amz-checksum-algorithm"}
_TRAILER = re.compile(rb"x-amz-checksum-(\w+):\s*([A-Za-z0-9+/=]+)")

PATCHES = Patches()
_LOCK = threading.Lock()
_KEY_LOCKS: Final = [threading.Lock() for _ in range(64)]


def _bad_digest(algorithm: str) -> Exception:
    from moto.s3.exceptions import S3ClientError

    return S3ClientError("BadDigest", f"The {algorithm} you specified did not match the calculated checksum.")


def _sent_algorithm(headers: Any) -> str:
    """The algorithm of a checksum value header, when the SDK's algorithm header is absent (a presigned PUT)."""
    for name in headers.keys():
        lower = str(name).lower()
        if lower.startswith("x-amz-checksum-") and lower not in _NOT_VALUES:
            return lower[len("x-amz-checksum-"):].upper()
    return ""


def _get_checksum(self: Any, response_headers: dict[str, Any]) -> tuple[str, str | None]:
    """moto's ``S3Response._get_checksum``, with the algorithm also taken from the value header, and the value
    compared with the body's (the decoded one of an aws-chunked upload) for the algorithms computed here."""
    from moto.s3.utils import compute_checksum

    algorithm = str(self.headers.get("x-amz-sdk-checksum-algorithm", "") or _sent_algorithm(self.headers)).upper()
    if not algorithm:
        return "", None
    header = f"x-amz-checksum-{algorithm.lower()}"
    value: Any = self.headers.get(header)
    if not value and self.headers.get("x-amz-trailer"):
        # An aws-chunked body ends with its trailers; only they are read, never the data before them.
        raw = bytes(self.raw_body or b"")
        trailer = {name.decode().upper(): found for name, found in _TRAILER.findall(raw[-1024:])}
        value = trailer.get(algorithm)
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    body = self.body if isinstance(self.body, bytes) else bytes(self.body or b"")
    if value:
        compute = _ALGORITHMS.get(algorithm)
        if compute is not None:
            try:
                sent = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise _bad_digest(algorithm) from None
            if sent != compute(body):
                raise _bad_digest(algorithm)
    else:
        value = compute_checksum(body, algorithm=algorithm).decode("utf-8")
    response_headers.update({header: value})
    return algorithm, str(value)


def _serialized_put(original: Any) -> Any:
    def put_object(self: Any) -> Any:
        lock = _KEY_LOCKS[hash((self.bucket_name, self.parse_key_name())) % len(_KEY_LOCKS)]
        with lock:
            return original(self)

    return put_object


def apply() -> None:
    """Install the S3 patches (idempotent)."""
    from moto.s3.responses import S3Response

    with _LOCK:
        if PATCHES:
            return
        PATCHES.replace(S3Response, "_get_checksum", _get_checksum)
        PATCHES.replace(S3Response, "put_object", _serialized_put(S3Response.put_object))


def remove() -> None:
    """Restore moto's originals."""
    with _LOCK:
        PATCHES.remove()
