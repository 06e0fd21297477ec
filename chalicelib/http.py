"""Request helpers shared by the API routes: the caller's identity and strict JSON bodies (no chalice import)."""
from __future__ import annotations

import json
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


def json_body(raw: bytes | None) -> dict[str, Any]:
    if raw is None or raw == b"":
        raise ValidationFailed("body: a JSON object is required")
    if len(raw) > limits.MAX_REQUEST_BYTES:
        raise ValidationFailed(f"body: at most {limits.MAX_REQUEST_BYTES} bytes")
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ValidationFailed("body: is not valid JSON") from None
    if not isinstance(value, dict):
        raise ValidationFailed("body: must be a JSON object")
    return value


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}
