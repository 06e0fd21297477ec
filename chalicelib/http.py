"""Request helpers shared by the API routes: the caller's identity and strict JSON bodies (no chalice import)."""
from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any
from collections.abc import Mapping

from chalicelib import limits
from chalicelib.errors import KaosError, ValidationFailed


class Unauthenticated(KaosError):
    status = 401
    code = "Unauthenticated"


def caller(context: Mapping[str, Any]) -> str:
    """The IAM principal API Gateway verified (AWS_IAM authorization fills requestContext.identity)."""
    identity = context.get("identity") or {}
    user = identity.get("userArn") or identity.get("caller")
    if not user:
        raise Unauthenticated("request is not signed with AWS credentials (SigV4)")
    return str(user)


# A JSON string, escapes included. Possessive, and an unterminated string runs to the end of the text: every
# match is found in one pass without backtracking, so hostile text costs linear time.
_JSON_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+(?:"|\\?\Z)', re.DOTALL)
# What each byte adds to the nesting depth once strings are removed.
_DEPTH_DELTA = [0] * 256
_DEPTH_DELTA[ord("[")] = _DEPTH_DELTA[ord("{")] = 1
_DEPTH_DELTA[ord("]")] = _DEPTH_DELTA[ord("}")] = -1
_NOT_BRACKETS = bytes(b for b in range(256) if not _DEPTH_DELTA[b])


def json_depth(raw: bytes) -> int:
    """How deeply objects and arrays nest in a JSON text, counted without parsing it (no recursion, and the
    counting runs in C: 6 MB of brackets take a fraction of a second)."""
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_DEPTH_DELTA.__getitem__, brackets), initial=0))


def json_body(raw: bytes | None) -> dict[str, Any]:
    if raw is None or raw == b"":
        raise ValidationFailed("body: a JSON object is required")
    if len(raw) > limits.MAX_REQUEST_BYTES:
        raise ValidationFailed(f"body: at most {limits.MAX_REQUEST_BYTES} bytes")
    if json_depth(raw) > limits.MAX_JSON_DEPTH:
        raise ValidationFailed(f"body: JSON nested deeper than {limits.MAX_JSON_DEPTH} levels (objects and arrays)")
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ValidationFailed("body: is not valid JSON") from None
    if not isinstance(value, dict):
        raise ValidationFailed("body: must be a JSON object")
    return value


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}
