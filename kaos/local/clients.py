"""boto3 clients made in the embedded stack's own process, one at a time.

boto3's default session is not thread-safe, and the stack makes clients from many threads: the emulator's own, the
Step Functions integrations' (one per state machine session), the SageMaker, Batch and serving runners' (one per job
session) and EventBridge's deliveries. Made at the same moment, two clients of one service each parsed the service
model and each kept its own copy (SageMaker's: ~14 MB a copy in the stack at rest); made one at a time, every client
after the first takes the session loader's cached model.
"""
from __future__ import annotations

import threading
from typing import Any

import boto3
from botocore.config import Config

_LOCK = threading.Lock()


def new_client(service: str, region: str, access_key: str, secret_key: str, token: str | None = None,
               endpoint_url: str | None = None, config: Config | None = None) -> Any:
    with _LOCK:
        # boto3-stubs types client() per literal service name; ours arrive as plain strings.
        return boto3.client(  # type: ignore[call-overload]
            service, region_name=region, aws_access_key_id=access_key, aws_secret_access_key=secret_key,
            aws_session_token=token, config=config, **({"endpoint_url": endpoint_url} if endpoint_url else {}))
