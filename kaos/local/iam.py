"""IAM for the embedded AWS: every request authenticated and decided by the caller's policies, as AWS does.

moto can check identity policies (``INITIAL_NO_AUTH_ACTION_COUNT``), but what it evaluates is too little to show
a wrong policy (see ``../shared/design/isolation-facts.md`` and ``moto/iam/access_control.py``):

* it passes ``*`` as the resource for every service but S3, so a grant on the wrong table, log group or state
  machine is never noticed (and a correctly scoped grant is refused);
* a statement with a ``Condition`` is evaluated as a trust policy and *denies* when its keys are absent;
* permissions boundaries, ``iam:PassRole`` and session expiry are not evaluated;
* a presigned URL (no ``Authorization`` header) fails with a server error instead of being verified.

:func:`enable` replaces moto's ``_authenticate_and_authorize_action`` with :func:`_authorize`, which keeps
moto's own key lookup and header-signature check (its error shapes too) and decides itself:

* the resource ARN of the request, per service kaos uses (:func:`resources_of`), as the Service
  Authorization Reference defines it (log groups as ``log-group:NAME:*``, tables and their indexes, …);
* conditions on the keys kaos' policies use (:data:`_OPERATORS`); an unknown key never satisfies an Allow;
* explicit Deny wins; an assumed role's permissions boundary must also allow; ``CreateTrainingJob``
  and ``SubmitJob`` also need ``iam:PassRole`` on the role they pass, as on AWS;
* presigned URLs: the SigV4 query signature recomputed with the caller's secret, and ``X-Amz-Expires``.

Service principals (Lambda, Step Functions, SageMaker, Batch) get their role's credentials from
:func:`service_credentials`, which checks the role's trust policy names that service, then asks moto's STS
backend directly: the emulator plays the service, which on AWS needs no caller credentials to assume a
role that trusts it.
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import json
import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qsl, quote, unquote, urlparse

from botocore.config import Config

from kaos.local.clients import new_client

ACCOUNT_ID = "123456789012"
PARTITION = "aws"
ADMIN_USER = "kaos-local-admin"
# Service sessions outlive any test or job run; AWS caps a role session at 12 h.
SESSION_SECONDS = 12 * 3600
# The credential scope's service name is the signing name; IAM's action prefix differs for a few.
_IAM_PREFIX = {"monitoring": "cloudwatch", "email": "ses"}
# REST operations whose IAM action name differs from the operation name.
_ACTION_NAMES = {("lambda", "Invoke"): "InvokeFunction", ("lambda", "InvokeAsync"): "InvokeFunction"}

_state = threading.local()
_enabled = False
_lock = threading.Lock()
_original: Any = None


@dataclass(frozen=True)
class Keys:
    access_key: str
    secret_key: str
    session_token: str | None = None

    def environment(self) -> dict[str, str]:
        env = {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}
        if self.session_token:
            env["AWS_SESSION_TOKEN"] = self.session_token
        return env


def _iam() -> Any:
    from moto.iam.models import iam_backends

    return iam_backends[ACCOUNT_ID][PARTITION]


def _sts() -> Any:
    from moto.sts.models import sts_backends

    return sts_backends[ACCOUNT_ID][PARTITION]


# -- identities ---------------------------------------------------------------------------------------


def create_admin() -> Keys:
    """The stack's own identity (loader, persistence, tests' assertions): an IAM user allowed everything.

    Created in moto's backend directly, before enforcement starts, as an account's root would be."""
    backend = _iam()
    try:
        backend.get_user(ADMIN_USER)
    except Exception:  # moto raises NoSuchEntity
        backend.create_user(region_name="us-east-1", user_name=ADMIN_USER, path="/", tags=[])
        backend.put_user_policy(ADMIN_USER, "everything", json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    key = backend.create_access_key(ADMIN_USER, prefix="AKIA")
    return Keys(key.access_key_id, key.secret_access_key)


def create_user(name: str, access_key: str, secret_key: str, policy: dict[str, Any]) -> None:
    """A local IAM user with the given keys (kept across restarts) and one inline policy."""
    from moto.iam.models import AccessKey

    backend = _iam()
    try:
        user = backend.get_user(name)
    except Exception:
        user = backend.create_user(region_name="us-east-1", user_name=name, path="/", tags=[])
    backend.put_user_policy(name, "kaos-local", json.dumps(policy))
    if not any(k.access_key_id == access_key for k in user.access_keys):
        key = AccessKey(name, prefix="AKIA", account_id=ACCOUNT_ID)  # type: ignore[abstract]  # moto makes it so
        key.access_key_id, key.secret_access_key = access_key, secret_key
        user.access_keys.append(key)


def template_role(name: str, path: str, trust: str, boundary: str | None = None) -> str:
    """A role of the stack's template in moto's IAM in this process (created unless it exists): its ARN. The
    template's IAM went in over HTTP, ~40 requests each signed and decided here: ~0.6 CPU-s of every start."""
    from moto.iam.exceptions import NotFoundException

    backend = _iam()
    try:
        return str(backend.get_role(name).arn)
    except NotFoundException:
        # The arguments CreateRole's handler passes (moto.iam.responses: MaxSessionDuration defaults to 3600).
        role = backend.create_role(name, trust, path, boundary, None, [], 3600)
        return str(role.arn)


def template_role_policy(role: str, name: str, document: str) -> None:
    _iam().put_role_policy(role, name, document)


def template_managed_policy(name: str, path: str, document: str) -> None:
    """A managed policy of the template (kept as it is if it exists)."""
    backend = _iam()
    if not any(policy.name == name and policy.path == path for policy in list(backend.managed_policies.values())):
        backend.create_policy(None, path, document, name, [])


def attach_template_policy(role: str, policy_arn: str) -> None:
    _iam().attach_role_policy(policy_arn, role)


def _role_by_arn(role_arn: str) -> Any:
    """moto's get_role_by_arn iterates its live roles dict, which a concurrent CreateRole (workspace creates) may
    change mid-iteration; the lookup is by name, which is a dict access."""
    return _iam().get_role(role_arn.rsplit("/", 1)[-1])


def trusts(role_arn: str, service: str) -> bool:
    """Whether the role's trust policy lets ``service`` (e.g. ``lambda.amazonaws.com``) assume it."""
    role = _role_by_arn(role_arn)
    document = role.assume_role_policy_document
    statements = (json.loads(document) if isinstance(document, str) else document)["Statement"]
    for statement in statements if isinstance(statements, list) else [statements]:
        principals = (statement.get("Principal") or {}).get("Service", [])
        principals = [principals] if isinstance(principals, str) else principals
        actions = statement.get("Action", [])
        actions = [actions] if isinstance(actions, str) else actions
        if statement.get("Effect") == "Allow" and service in principals and "sts:AssumeRole" in actions:
            return True
    return False


class UntrustedService(Exception):
    pass


def service_credentials(role_arn: str, service: str, session_name: str) -> Keys:
    """Temporary credentials of ``role_arn`` as ``service`` gets them on AWS (trust policy checked)."""
    if not trusts(role_arn, service):
        raise UntrustedService(f"{role_arn} does not trust {service}")
    assumed = _sts().assume_role(region_name="us-east-1", role_session_name=session_name[:64],
                                 role_arn=role_arn, policy="", duration=SESSION_SECONDS, external_id="")
    return Keys(assumed.access_key_id, assumed.secret_access_key, assumed.session_token)


_role_cache: dict[tuple[str, str], Keys] = {}


def cached_service_credentials(role_arn: str, service: str) -> Keys:
    """One session per (role, service) for the emulator's own service calls (Step Functions' integrations)."""
    with _lock:
        keys = _role_cache.get((role_arn, service))
        if keys is None:
            keys = service_credentials(role_arn, service, service.split(".")[0])
            _role_cache[(role_arn, service)] = keys
        return keys


# -- policy evaluation --------------------------------------------------------------------------------


def _glob(pattern: str, value: str, ignore_case: bool = False) -> bool:
    return _compiled(pattern, ignore_case).match(value) is not None


@functools.lru_cache(maxsize=4096)
def _compiled(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    """A policy's wildcard pattern as a regex, compiled once (every request evaluates every statement)."""
    regex = "^" + re.escape(pattern).replace(r"\*", ".*").replace(r"\?", ".") + "$"
    return re.compile(regex, re.IGNORECASE if ignore_case else 0)


def _listed(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value or [])


def _string_equals(patterns: list[str], values: list[str]) -> bool:
    return any(v == p for v in values for p in patterns)


def _string_like(patterns: list[str], values: list[str]) -> bool:
    return any(_glob(p, v) for v in values for p in patterns)


_OPERATORS: dict[str, Callable[[list[str], list[str]], bool]] = {
    "StringEquals": _string_equals,
    "StringLike": _string_like,
    "ArnEquals": _string_equals,
    "ArnLike": _string_like,
    "Bool": lambda patterns, values: any(v.lower() == p.lower() for v in values for p in patterns),
}
_NEGATED = {"StringNotEquals": "StringEquals", "StringNotLike": "StringLike", "ArnNotEquals": "ArnEquals",
            "ArnNotLike": "ArnLike"}


def _conditions_hold(conditions: dict[str, Any], context: dict[str, list[str]]) -> bool:
    for operator, entries in conditions.items():
        if_exists = operator.endswith("IfExists")
        base = operator.removesuffix("IfExists").split(":")[-1]  # ForAnyValue:StringLike -> StringLike
        negated = base in _NEGATED
        test = _OPERATORS.get(_NEGATED.get(base, base))
        if test is None:
            return False  # an operator this emulator does not evaluate never grants
        for key, expected in entries.items():
            values = context.get(key.lower())
            if values is None:
                if if_exists or negated:
                    continue
                return False
            held = test([str(e) for e in _listed(expected)], values)
            if held == negated:
                return False
    return True


def decide(documents: list[dict[str, Any]], action: str, resource: str, context: dict[str, list[str]]) -> str:
    """``allow``, ``deny`` (explicit) or ``implicit`` for one action on one resource."""
    allowed = False
    for document in documents:
        statements = document.get("Statement", [])
        for statement in statements if isinstance(statements, list) else [statements]:
            if "NotAction" in statement:
                concerned = not any(_glob(a, action, True) for a in _listed(statement["NotAction"]))
            else:
                concerned = any(_glob(a, action, True) for a in _listed(statement.get("Action")))
            if not concerned:
                continue
            if "NotResource" in statement:
                on_resource = not any(_glob(r, resource) for r in _listed(statement["NotResource"]))
            else:
                on_resource = any(_glob(r, resource) for r in _listed(statement.get("Resource")))
            if not on_resource or not _conditions_hold(statement.get("Condition") or {}, context):
                continue
            if statement.get("Effect") == "Deny":
                return "deny"
            allowed = True
    return "allow" if allowed else "implicit"


def _document(policy: Any) -> dict[str, Any]:
    from moto.iam.models import Policy

    if isinstance(policy, Policy):
        text = next(v.document for v in policy.versions if v.is_default)
    elif isinstance(policy, str):
        text = policy
    else:
        text = policy["policy_document"]
    return _parsed(text) if isinstance(text, str) else dict(text)


@functools.lru_cache(maxsize=1024)
def _parsed(text: str) -> dict[str, Any]:
    """A policy document parsed once per text (read only: decide() never changes it)."""
    parsed: dict[str, Any] = json.loads(text)
    return parsed


def _boundary(access_key: Any) -> dict[str, Any] | None:
    role_name = getattr(access_key, "_owner_role_name", None)
    if role_name is None:
        return None
    try:
        role = _iam().get_role(role_name)
    except Exception:
        return None
    if not role.permissions_boundary_arn:
        return None
    return _document(_iam().get_policy(role.permissions_boundary_arn))


def _session_expired(access_key: Any) -> bool:
    key_id = getattr(access_key, "_access_key_id", None)
    if getattr(access_key, "_owner_role_name", None) is None:
        return False
    for assumed in _sts().assumed_roles:
        if assumed.access_key_id == key_id:
            expiration = assumed.expiration
            now = datetime.now(UTC) if expiration.tzinfo else datetime.now(UTC).replace(tzinfo=None)
            return bool(expiration < now)
    return True


def permitted(access_key: Any, action: str, resource: str, context: dict[str, list[str]]) -> bool:
    try:
        policies = access_key.collect_policies()
    except Exception:  # a session of a role deleted since (a killed workspace's): it has no policies left
        return False
    documents = [_document(p) for p in policies]
    if decide(documents, action, resource, context) != "allow":
        return False
    boundary = _boundary(access_key)
    return boundary is None or decide([boundary], action, resource, context) == "allow"


# -- what a request acts on ---------------------------------------------------------------------------


def _arn(service: str, region: str, rest: str) -> str:
    return f"arn:{PARTITION}:{service}:{region}:{ACCOUNT_ID}:{rest}"


def _json_body(response: Any) -> dict[str, Any]:
    body = response.body
    if isinstance(body, dict):  # moto has parsed it already for some protocols
        return body
    try:
        body = json.loads(response.raw_body or "{}")
    except (ValueError, TypeError):
        return {}
    return body if isinstance(body, dict) else {}


def _query_param(response: Any, name: str) -> str | None:
    values = response.querystring.get(name) if isinstance(response.querystring, dict) else None
    return values[0] if values else None


# IAM prefixes of the services whose requests kaos' decisions read from a JSON body (resources_of, _context).
_JSON_BODY_SERVICES = frozenset({"dynamodb", "states", "logs", "sagemaker", "batch", "events", "cloudwatch"})


def resources_of(service: str, action: str, region: str, response: Any, body: dict[str, Any]) -> list[tuple[str, str]]:
    """The (IAM action, resource ARN) pairs a request needs, per the Service Authorization Reference; `body` is
    the request's JSON body ({} if it has none).

    Only the services and operations kaos uses are mapped; any other request is decided on ``*`` (a grant
    must then name ``*``), which is moto's own behaviour."""
    iam_action = f"{service}:{action}"
    if service == "dynamodb":
        tables: list[str] = []
        if "TableName" in body:
            tables = [str(body["TableName"]) + (f"/index/{body['IndexName']}" if body.get("IndexName") else "")]
        elif "RequestItems" in body:
            tables = sorted(body["RequestItems"])
        elif "TransactItems" in body:
            # DynamoDB authorizes each item of a transaction by its own operation on its own table.
            pairs = []
            for item in body["TransactItems"]:
                (kind, spec), = item.items()
                op = {"Put": "PutItem", "Update": "UpdateItem", "Delete": "DeleteItem", "ConditionCheck":
                      "ConditionCheckItem", "Get": "GetItem"}.get(kind, kind)
                pairs.append((f"dynamodb:{op}", _arn("dynamodb", region, f"table/{spec['TableName']}")))
            return pairs
        return [(iam_action, _arn("dynamodb", region, f"table/{t}")) for t in tables] or [(iam_action, "*")]
    if service == "states":
        arn = body.get("stateMachineArn") or body.get("executionArn") or body.get("mapRunArn")
        return [(iam_action, str(arn) if arn else "*")]
    if service == "logs":
        group = body.get("logGroupName")
        if not group:
            return [(iam_action, "*")]
        if action in ("PutLogEvents", "CreateLogStream", "GetLogEvents") and body.get("logStreamName"):
            stream_arn = _arn("logs", region, f"log-group:{group}:log-stream:{body['logStreamName']}")
            if action != "GetLogEvents":
                return [(iam_action, stream_arn)]
        return [(iam_action, _arn("logs", region, f"log-group:{group}:*"))]
    if service == "sagemaker":
        return _sagemaker_resources(iam_action, action, region, response, body)
    if service == "batch":
        if action == "SubmitJob":
            queue, definition = str(body.get("jobQueue", "")), str(body.get("jobDefinition", ""))
            if not queue.startswith("arn:"):
                queue = _arn("batch", region, f"job-queue/{queue}")
            if not definition.startswith("arn:"):
                definition = _arn("batch", region, f"job-definition/{definition}")
            return [(iam_action, queue), (iam_action, definition if ":" in definition.rsplit("/", 1)[-1]
                                          else definition + ":*")]
        if action == "RegisterJobDefinition":
            name = body.get("jobDefinitionName", "")
            container = body.get("containerProperties") or {}
            passed = [r for r in (container.get("jobRoleArn"), container.get("executionRoleArn")) if r]
            return [(iam_action, _arn("batch", region, f"job-definition/{name}"))] + [
                ("iam:PassRole", str(r)) for r in passed]
        if action == "DeregisterJobDefinition":
            definition = str(body.get("jobDefinition", ""))
            return [(iam_action, definition if definition.startswith("arn:")
                     else _arn("batch", region, f"job-definition/{definition}"))]
        if action == "TerminateJob" and body.get("jobId"):
            return [(iam_action, _arn("batch", region, f"job/{body['jobId']}"))]
        return [(iam_action, "*")]
    if service == "lambda":
        match = re.search(r"/functions/([^/]+)/", unquote(response.path or ""))
        if match:
            name = match.group(1)
            arn = name if name.startswith("arn:") else _arn("lambda", region, f"function:{name}")
            return [(iam_action, arn)]
        return [(iam_action, "*")]
    if service == "events":
        if action in ("PutRule", "PutTargets", "DescribeRule", "RemoveTargets", "DeleteRule"):
            name = body.get("Name") or body.get("Rule")
            return [(iam_action, _arn("events", region, f"rule/{name}") if name else "*")]
        return [(iam_action, _arn("events", region, "event-bus/default") if action == "PutEvents" else "*")]
    if service == "cloudwatch" and "Alarm" in action:
        names = [body["AlarmName"]] if body.get("AlarmName") else list(body.get("AlarmNames") or [])
        query = response.querystring if isinstance(response.querystring, dict) else {}  # the query protocol
        names += [value for key, values in query.items() if key == "AlarmName" or key.startswith("AlarmNames.")
                  for value in values]
        return [(iam_action, _arn("cloudwatch", region, f"alarm:{name}")) for name in names] or [(iam_action, "*")]
    if service == "sts" and action == "AssumeRole":
        return [(iam_action, _query_param(response, "RoleArn") or "*")]
    if service == "iam":
        name = _query_param(response, "RoleName")
        if name:
            path = _query_param(response, "Path") or "/"
            if action != "CreateRole":
                try:
                    return [(iam_action, str(_iam().get_role(name).arn))]
                except Exception:
                    pass
            return [(iam_action, f"arn:{PARTITION}:iam::{ACCOUNT_ID}:role{path}{name}")]
        return [(iam_action, "*")]
    return [(iam_action, "*")]


# SageMaker request member -> the resource type its name is, per the Service Authorization Reference (SageMaker
# lower-cases names in ARNs). A request is evaluated on every resource it names (CreateEndpoint and UpdateEndpoint:
# the endpoint and the endpoint config); one naming none is evaluated on "*" (List*).
_SAGEMAKER_NAMES: Final = (("TrainingJobName", "training-job"), ("ModelName", "model"),
                           ("EndpointConfigName", "endpoint-config"), ("EndpointName", "endpoint"),
                           ("ModelPackageGroupName", "model-package-group"), ("ModelPackageName", "model-package"),
                           ("ModelPackageArn", "model-package"))


def _sagemaker_resources(iam_action: str, action: str, region: str, response: Any,
                         body: dict[str, Any]) -> list[tuple[str, str]]:
    if action == "InvokeEndpoint":  # sagemaker-runtime: the endpoint is in the path, the body is the payload
        match = re.match(r"/endpoints/([^/]+)/invocations", unquote(urlparse(response.path or "").path))
        return [(iam_action, _arn("sagemaker", region, f"endpoint/{match.group(1).lower()}") if match else "*")]
    pairs = []
    for member, kind in _SAGEMAKER_NAMES:
        name = body.get(member)
        if not isinstance(name, str) or (kind == "model-package-group" and action == "CreateModelPackage"):
            continue
        arn = name if name.startswith("arn:") else _arn("sagemaker", region, f"{kind}/{name.lower()}")
        pairs.append((iam_action, arn))
    if action == "CreateModelPackage" and body.get("ModelPackageGroupName"):
        # A version of a group: the package created is model-package/<group>/<version>.
        group = str(body["ModelPackageGroupName"]).lower()
        pairs.append((iam_action, _arn("sagemaker", region, f"model-package/{group}/*")))
    role = body.get("RoleArn") if action == "CreateTrainingJob" else body.get("ExecutionRoleArn") \
        if action == "CreateModel" else None
    if role:
        pairs.append(("iam:PassRole", str(role)))  # SageMaker checks that the caller may pass the role it names
    return pairs or [(iam_action, "*")]


def _multi_delete(bucket_arn: str, body: bytes) -> list[tuple[str, str]]:
    """S3 DeleteObjects is a bucket-level request that S3 authorizes per key, as s3:DeleteObject (or
    s3:DeleteObjectVersion when a version is named) on each object."""
    import xml.etree.ElementTree as ElementTree

    pairs = []
    for element in ElementTree.fromstring(body or b"<Delete/>").iter():
        if element.tag.rsplit("}", 1)[-1] != "Object":
            continue
        fields = {child.tag.rsplit("}", 1)[-1]: child.text or "" for child in element}
        action = "s3:DeleteObjectVersion" if fields.get("VersionId") else "s3:DeleteObject"
        pairs.append((action, f"{bucket_arn}/{fields.get('Key', '')}"))
    return pairs


def _context(service: str, action: str, response: Any, body: dict[str, Any]) -> dict[str, list[str]]:
    """Condition keys this emulator can fill, by lower-case name."""
    context: dict[str, list[str]] = {"aws:securetransport": ["false"]}
    if service == "s3":
        prefix = _query_param(response, "prefix")
        if prefix is not None:
            context["s3:prefix"] = [prefix]
    if service == "iam" and action in ("CreateRole", "PutRolePolicy", "DeleteRolePolicy"):
        # The boundary the role gets (CreateRole) or has (the others): how a role-creating identity is capped.
        boundary = _query_param(response, "PermissionsBoundary")
        if boundary is None and action != "CreateRole":
            try:
                boundary = _iam().get_role(_query_param(response, "RoleName")).permissions_boundary_arn
            except Exception:
                boundary = None
        if boundary:
            context["iam:permissionsboundary"] = [boundary]
    if service == "monitoring":
        namespace = _query_param(response, "Namespace")
        if namespace is None:
            namespace = body.get("Namespace")
        if namespace is not None:
            context["cloudwatch:namespace"] = [str(namespace)]
    return context


# -- the replacement for moto's check -----------------------------------------------------------------


_BOTOCORE_NAMES = {"states": "stepfunctions", "monitoring": "cloudwatch", "execute-api": "apigateway"}
_operations: dict[str, dict[str, str]] = {}


def _canonical_operation(service: str, name: str) -> str:
    """moto names some REST operations by their lower-cased path (Batch: ``submitjob``); IAM's action names are
    the API's operation names (``SubmitJob``), taken from botocore's model of the service."""
    if not name.islower():
        return name
    names = _operations.get(service)
    if names is None:
        from kaos.local.patches import service_model

        try:
            model = service_model(_BOTOCORE_NAMES.get(service, service))
            names = {op.lower(): op for op in model.operation_names}
        except Exception:
            names = {}
        _operations[service] = names
    return names.get(name.lower(), name)


def _sigv4_query_signature(secret: str, method: str, raw_path: str, query: list[tuple[str, str]],
                           headers: dict[str, str]) -> str:
    """SigV4 query-string signature (a presigned URL), recomputed from the request as received."""
    params = dict(query)
    scope = params["X-Amz-Credential"].split("/", 1)[1]
    date, region, service, _ = scope.split("/")
    signed = params["X-Amz-SignedHeaders"].split(";")
    lower = {k.lower(): v for k, v in headers.items()}
    canonical_query = "&".join(
        f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}"
        for k, v in sorted(q for q in query if q[0] != "X-Amz-Signature"))
    canonical_headers = "".join(f"{h}:{' '.join(lower.get(h, '').split())}\n" for h in signed)
    canonical = "\n".join([method, raw_path or "/", canonical_query, canonical_headers, ";".join(signed),
                           "UNSIGNED-PAYLOAD"])
    to_sign = "\n".join(["AWS4-HMAC-SHA256", params["X-Amz-Date"], scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + secret).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def _presigned_headers(self: Any, query: list[tuple[str, str]]) -> dict[str, str] | None:
    params = dict(query)
    if "X-Amz-Credential" not in params or "X-Amz-Signature" not in params:
        return None
    headers = dict(self.headers)
    # moto's key lookup reads the scope from an Authorization header: give it the URL's.
    headers["Authorization"] = f"AWS4-HMAC-SHA256 Credential={params['X-Amz-Credential']}, SignedHeaders=host,"
    if "X-Amz-Security-Token" in params:
        headers["X-Amz-Security-Token"] = params["X-Amz-Security-Token"]
    return headers


def _authorize(self: Any, iam_request_cls: type, resource: str = "*") -> None:
    from moto.core.exceptions import AccessDeniedError

    if not _enabled:
        _original(self, iam_request_cls, resource)
        return None
    parsed = urlparse(self.uri)
    query = parse_qsl(parsed.query, keep_blank_values=True)
    path = self.raw_path + (f"?{parsed.query}" if parsed.query else "")
    headers = self.headers
    presigned = None
    if not headers.get("Authorization"):
        presigned = _presigned_headers(self, query)
        if presigned is None:
            if iam_request_cls.__name__ == "S3IAMRequest":
                from moto.s3.exceptions import S3AccessDeniedError

                raise S3AccessDeniedError()
            raise AccessDeniedError(user_arn="anonymous", action=str(self._get_action()))
        headers = presigned
    request = iam_request_cls(account_id=self.current_account, method=self.method, path=path, data=self.data,
                              body=self.raw_body, headers=headers, action=self._get_action())
    if presigned is None:
        if not self.raw_body and "x-www-form-urlencoded" not in str(headers.get("Content-Type", "")):
            # moto signs "body or parsed parameters": with no body (a Lambda Invoke without payload, a GET) the
            # client signed the empty payload, and so must the check (a form POST's body is moto's parsed form).
            data, request._data = request._data, {}
            request.check_signature()
            request._data = data  # moto's error responses read the bucket name from it
        else:
            request.check_signature()
    else:
        params = dict(query)
        signed_at = datetime.strptime(params["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        expected = _sigv4_query_signature(request._access_key._secret_access_key, self.method,
                                          urlparse(self.uri).path, query, dict(self.headers))
        if not hmac.compare_digest(expected, params["X-Amz-Signature"]):
            request._raise_signature_does_not_match()
        if datetime.now(UTC) > signed_at + timedelta(seconds=int(params.get("X-Amz-Expires", "0"))):
            from moto.s3.exceptions import S3AccessDeniedError

            raise S3AccessDeniedError()  # S3 answers 403 "Request has expired"
    if _session_expired(request._access_key):
        request._raise_invalid_access_key("InvalidToken")
    service = request._service
    prefix = _IAM_PREFIX.get(service, service)
    operation = _canonical_operation(service, str(request._action).split(":", 1)[1])
    operation = _ACTION_NAMES.get((service, operation), operation)
    if request._action == "sts:GetCallerIdentity":
        return None
    region = request._region
    body = _json_body(self) if prefix in _JSON_BODY_SERVICES else {}  # parsed once, for the pairs and context
    if prefix == "s3" and self.method == "POST" and "delete" in dict(query):
        pairs = _multi_delete(resource, self.raw_body)
    elif resource != "*" and prefix != "iam":
        pairs = [(f"{prefix}:{operation}", resource)]  # S3: moto computed the object or bucket ARN
    else:
        pairs = resources_of(prefix, operation, region, self, body)
    context = _context(service, operation, self, body)
    for action, arn in pairs:
        extra = dict(context)
        if action == "iam:PassRole":
            # The service the role is handed to: Batch hands job and execution roles to ECS tasks.
            extra["iam:passedtoservice"] = ["ecs-tasks.amazonaws.com" if prefix == "batch"
                                            else f"{prefix}.amazonaws.com"]
        if not permitted(request._access_key, action, arn, extra):
            request._action = action
            request._raise_access_denied()
    return None


# -- Step Functions' own calls ------------------------------------------------------------------------


def state_machine_keys(state_credentials: Any) -> tuple[str, str, str | None]:
    """The keys an integration call of an execution is signed with: its state machine's role, as on AWS."""
    role_arn = getattr(state_credentials, "role_arn", None)
    if not _enabled or not role_arn:
        return "ak", "sk", None
    keys = cached_service_credentials(role_arn, "states.amazonaws.com")
    return keys.access_key, keys.secret_key, keys.session_token


if TYPE_CHECKING:  # the names _boto_client_for's body resolves in moto's boto_client module at run time
    from moto.core.models import botocore_stubber
    from moto.settings import moto_server_port


def _boto_client_for(region: str, service: str, state_credentials: Any = None) -> Any:
    """Body for moto's ``boto_client_for`` (Step Functions' client for every integration), which signs with
    fixed dummy keys. Installed as that function's code object, so every module that imported the function
    by name runs it; the names below resolve in moto's ``boto_client`` module."""
    from kaos.local.iam import integration_client

    endpoint = None if botocore_stubber.enabled else f"http://localhost:{moto_server_port()}"
    return integration_client(region, service, state_credentials, endpoint)


def integration_client(region: str, service: str, state_credentials: Any, endpoint: str | None) -> Any:
    """The client an execution's integration calls go through, signed with its state machine's role."""
    return _client(region, service, *state_machine_keys(state_credentials), endpoint)


@functools.lru_cache(maxsize=256)
def _client(region: str, service: str, access_key: str, secret_key: str, token: str | None,
            endpoint: str | None) -> Any:
    """One client per role session and service (moto makes one per task: ~4 ms and a new connection each);
    clients are thread-safe, and a renewed session has other keys, so a new client."""
    from moto.stepfunctions.parser.asl.component.common.timeouts.timeout import TimeoutSeconds

    return new_client(service, region, access_key, secret_key, token, endpoint, Config(
        parameter_validation=False, retries={"max_attempts": 0, "total_max_attempts": 1},
        connect_timeout=TimeoutSeconds.DEFAULT_TIMEOUT_SECONDS, read_timeout=TimeoutSeconds.DEFAULT_TIMEOUT_SECONDS))


_original_client_code: Any = None


def enable() -> None:
    """Turn enforcement on for the in-process moto server (idempotent)."""
    global _enabled, _original, _original_client_code
    from moto.core.authorization import ActionAuthenticatorMixin
    from moto.stepfunctions.parser.asl.utils import boto_client

    with _lock:
        if _original is None:
            _original = ActionAuthenticatorMixin._authenticate_and_authorize_action
            ActionAuthenticatorMixin._authenticate_and_authorize_action = _authorize  # type: ignore[method-assign]
            _original_client_code = boto_client.boto_client_for.__code__
            boto_client.boto_client_for.__code__ = _boto_client_for.__code__
        _enabled = True


def disable() -> None:
    global _enabled, _original, _original_client_code
    from moto.core.authorization import ActionAuthenticatorMixin
    from moto.stepfunctions.parser.asl.utils import boto_client

    with _lock:
        if _original is not None:
            ActionAuthenticatorMixin._authenticate_and_authorize_action = _original  # type: ignore[method-assign]
            boto_client.boto_client_for.__code__ = _original_client_code
            _original = _original_client_code = None
        _enabled = False
        _role_cache.clear()
        _client.cache_clear()


def enabled() -> bool:
    return _enabled
