"""From a checkout to a running platform in an AWS account: the `cdk` commands that deploy and destroy the stack,
reading its outputs into the client config, and asking CloudFormation how the stack is.

The cdk CLI is the repository's own (node_modules/.bin/cdk, from `npm ci`); KAOS_CDK names another executable
(tests point it at a stand-in that writes a real outputs file)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import botocore.exceptions

from kaos.client import ApiError, botocore_session

REPO_ROOT = Path(__file__).resolve().parents[1]
STACK_NAME = "Kaos"
CDK_ENV = "KAOS_CDK"
STAGES = ("dev", "prod")
# DeletionPolicy values under which CloudFormation leaves the resource in the account when the stack goes.
KEPT_POLICIES = ("Retain", "RetainExceptOnCreate", "Snapshot")


@dataclass(frozen=True)
class Target:
    """Where a deployed stack is: the account is whatever the profile's credentials belong to."""

    region: str
    profile: str
    stage: str = "dev"

    def context(self) -> list[str]:
        return ["-c", f"region={self.region}", "-c", f"stage={self.stage}",
                *(["--profile", self.profile] if self.profile else [])]


def cdk_binary() -> str:
    chosen = os.environ.get(CDK_ENV) or str(REPO_ROOT / "node_modules" / ".bin" / "cdk")
    if not Path(chosen).is_file():
        raise ApiError(0, "NoCdk", f"{chosen} is missing: `kaos cloud deploy` runs the repository's cdk CLI; "
                                   f"install it with `npm ci` in {REPO_ROOT}")
    if not (REPO_ROOT / "cdk.json").is_file():
        raise ApiError(0, "NoCdk", f"{REPO_ROOT} has no cdk.json: deploy from a kaos checkout")
    return chosen


def deploy_command(target: Target, outputs_file: Path) -> list[str]:
    return [cdk_binary(), "deploy", STACK_NAME, "--require-approval", "never", "--outputs-file",
            str(outputs_file), *target.context()]


def destroy_command(target: Target) -> list[str]:
    return [cdk_binary(), "destroy", STACK_NAME, "--force", *target.context()]


def read_outputs(path: Path) -> dict[str, str]:
    """The stack's outputs from `cdk deploy --outputs-file` ({"Kaos": {"ApiUrl": ..., ...}})."""
    try:
        outputs = json.loads(path.read_text()).get(STACK_NAME) or {}
    except (OSError, ValueError) as exc:
        raise ApiError(0, "NoOutputs", f"cdk wrote no readable outputs to {path} ({exc})") from None
    if not outputs.get("ApiUrl"):
        raise ApiError(0, "NoOutputs", f"the {STACK_NAME} stack's outputs in {path} have no ApiUrl")
    return {str(k): str(v) for k, v in outputs.items()}


def client_target(outputs: dict[str, str], target: Target) -> dict[str, str]:
    """The client config of a deployed stack: its API, signed for its region with the deploying profile."""
    return {"api_url": outputs["ApiUrl"], "region": target.region, "profile": target.profile,
            "credentials_file": ""}


def kept_resources(template: dict[str, Any]) -> list[str]:
    """What `cdk destroy` leaves in the account: resources whose DeletionPolicy keeps them (prod's table and
    buckets), as "Type LogicalId"."""
    return sorted(f"{resource['Type']} {name}" for name, resource in template.get("Resources", {}).items()
                  if resource.get("DeletionPolicy") in KEPT_POLICIES)


def _cloudformation(target: Target) -> Any:
    session = botocore_session(target.profile)
    try:
        return session.create_client("cloudformation", region_name=target.region)
    except botocore.exceptions.ProfileNotFound:
        raise ApiError(0, "ProfileNotFound", f"profile {target.profile!r} does not exist; profiles: "
                                             f"{', '.join(sorted(session.available_profiles)) or 'none'}") from None


def _stack_call(target: Target, operation: str, **kwargs: Any) -> Any:
    """One CloudFormation call about the stack; a stack that does not exist or missing credentials are messages."""
    try:
        return getattr(_cloudformation(target), operation)(StackName=STACK_NAME, **kwargs)
    except botocore.exceptions.ClientError as exc:
        message = exc.response.get("Error", {}).get("Message", "")
        if "does not exist" in message:
            raise ApiError(0, "NoStack", f"no {STACK_NAME} stack in {target.region}: `kaos cloud deploy "
                                           f"--region {target.region}` creates it") from None
        raise ApiError(0, "CloudFormation", f"CloudFormation {operation}: {message}") from None
    except botocore.exceptions.NoCredentialsError:
        raise ApiError(0, "NoCredentials", f"no AWS credentials for profile {target.profile!r}") from None


def stack_status(target: Target) -> dict[str, Any]:
    """The stack's status, last update and outputs, as CloudFormation reports them."""
    stack = _stack_call(target, "describe_stacks")["Stacks"][0]
    return {"stack": STACK_NAME, "region": target.region, "status": stack["StackStatus"],
            "updated": str(stack.get("LastUpdatedTime") or stack.get("CreationTime") or ""),
            "outputs": {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}}


def deployed_template(target: Target) -> dict[str, Any]:
    body = _stack_call(target, "get_template", TemplateStage="Original")["TemplateBody"]
    return body if isinstance(body, dict) else dict(json.loads(body))


def synthesized_template(target: Target) -> dict[str, Any]:
    """The template this checkout would deploy for the target (cached synthesis, no account needed)."""
    from cdk.synth import synthesize

    outdir = REPO_ROOT / ".cache" / f"cloud-{target.stage}-{target.region}"
    path = synthesize(outdir, {"stage": target.stage, "region": target.region})
    return dict(json.loads(path.read_text()))
