"""Validate the synthesized app: synth (cdk-nag inside), cfn-lint on the template, asl-validator on every state machine,
and the static IAM check (every action granted on a resource type the Service Authorization Reference allows for it).

Run `.venv/bin/python -m cdk.check [OUTDIR] [--no-cache]`; exits non-zero on any failure and prints a summary.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdk.constants import REPO_ROOT
from cdk.synth import KEY_FILE, synthesize

# Values substituted for intrinsics when a template value is rendered for asl-validator and the IAM check: they only
# need to be valid, and plausible for the resource they stand for.
PSEUDO = {
    "AWS::Partition": "aws",
    "AWS::Region": "us-east-1",
    "AWS::AccountId": "123456789012",
    "AWS::URLSuffix": "amazonaws.com",
    "AWS::StackName": "Kaos",
}
# cfn-lint findings accepted on purpose, with the reason: none today.
CFN_LINT_IGNORES: dict[str, str] = {}

# What `Ref` and `Fn::GetAtt` return for a resource type (CloudFormation's documented return values), as templates
# over the resource's physical name: `{name}` (its name property when the template sets one, else its logical id),
# `{region}`, `{account}`. A type or attribute missing here fails resolution: a placeholder of the wrong kind (a
# Lambda ARN standing for a bucket) would let the IAM check pass or fail for the wrong reason.
_ARN = "arn:aws:{service}:{{region}}:{{account}}:{resource}"
PLACEHOLDERS: dict[str, tuple[str | None, dict[str, str]]] = {
    # type: (name property, {"Ref" or attribute: template})
    "AWS::S3::Bucket": ("BucketName", {"Ref": "{name}", "Arn": "arn:aws:s3:::{name}"}),
    "AWS::DynamoDB::Table": ("TableName", {
        "Ref": "{name}",
        "Arn": _ARN.format(service="dynamodb", resource="table/{name}"),
        "StreamArn": _ARN.format(service="dynamodb", resource="table/{name}/stream/2026-01-01T00:00:00.000"),
    }),
    "AWS::Lambda::Function": ("FunctionName", {
        "Ref": "{name}", "Arn": _ARN.format(service="lambda", resource="function:{name}"),
    }),
    "AWS::Serverless::Function": ("FunctionName", {
        "Ref": "{name}", "Arn": _ARN.format(service="lambda", resource="function:{name}"),
    }),
    "AWS::IAM::Role": ("RoleName", {"Ref": "{name}", "Arn": "arn:aws:iam::{account}:role/{name}"}),
    "AWS::IAM::ManagedPolicy": ("ManagedPolicyName", {
        "Ref": "arn:aws:iam::{account}:policy/{name}", "PolicyArn": "arn:aws:iam::{account}:policy/{name}",
    }),
    # A log group's `Arn` attribute is the `:*` form, the one IAM evaluates log-group actions against.
    "AWS::Logs::LogGroup": ("LogGroupName", {
        "Ref": "{name}", "Arn": _ARN.format(service="logs", resource="log-group:{name}:*"),
    }),
    "AWS::StepFunctions::StateMachine": ("StateMachineName", {
        "Ref": _ARN.format(service="states", resource="stateMachine:{name}"),
        "Arn": _ARN.format(service="states", resource="stateMachine:{name}"),
        "Name": "{name}",
    }),
    "AWS::Batch::JobQueue": ("JobQueueName", {
        "Ref": _ARN.format(service="batch", resource="job-queue/{name}"),
        "JobQueueArn": _ARN.format(service="batch", resource="job-queue/{name}"),
    }),
    "AWS::Batch::JobDefinition": ("JobDefinitionName", {
        "Ref": _ARN.format(service="batch", resource="job-definition/{name}:1"),
    }),
    "AWS::Batch::ComputeEnvironment": ("ComputeEnvironmentName", {
        "Ref": _ARN.format(service="batch", resource="compute-environment/{name}"),
        "ComputeEnvironmentArn": _ARN.format(service="batch", resource="compute-environment/{name}"),
    }),
    "AWS::Events::Rule": ("Name", {"Ref": "{name}", "Arn": _ARN.format(service="events", resource="rule/{name}")}),
    "AWS::SNS::Topic": ("TopicName", {
        "Ref": _ARN.format(service="sns", resource="{name}"),
        "TopicArn": _ARN.format(service="sns", resource="{name}"),
        "TopicName": "{name}",
    }),
    "AWS::SQS::Queue": ("QueueName", {
        "Ref": "https://sqs.{region}.amazonaws.com/{account}/{name}",
        "Arn": _ARN.format(service="sqs", resource="{name}"),
        "QueueName": "{name}",
    }),
    # REST API ids are 10 lower-case alphanumerics.
    "AWS::Serverless::Api": (None, {"Ref": "{id}"}),
    "AWS::ApiGateway::RestApi": (None, {"Ref": "{id}", "RootResourceId": "{id}"}),
}


def placeholder(logical_id: str, attribute: str, resources: dict[str, Any]) -> str:
    """A plausible value for `Ref` (attribute "Ref") or `Fn::GetAtt` of a resource of the template."""
    if logical_id not in resources:
        raise ValueError(f"Ref/GetAtt of {logical_id!r}, which is not a resource of the template")
    type_ = resources[logical_id]["Type"]
    name_property, values = PLACEHOLDERS.get(type_, (None, {}))
    if attribute not in values:
        raise ValueError(f"no placeholder for {'Ref' if attribute == 'Ref' else 'Fn::GetAtt'} {attribute} of "
                         f"{type_} ({logical_id}); add it to cdk.check.PLACEHOLDERS")
    name = logical_id
    explicit = resources[logical_id].get("Properties", {}).get(name_property) if name_property else None
    if explicit is not None:
        name = str(resolve(explicit, resources))
    elif type_ == "AWS::S3::Bucket":
        name = logical_id.lower()  # bucket names are lower case
    api_id = "".join(c for c in logical_id.lower() if c.isalnum())[:10].ljust(10, "0")
    return values[attribute].format(
        name=name, id=api_id, region=PSEUDO["AWS::Region"], account=PSEUDO["AWS::AccountId"]
    )


def resolve(value: Any, resources: dict[str, Any]) -> Any:
    """Resolve the intrinsics CDK puts in a template value (a DefinitionString, a policy document) into plain values:
    pseudo parameters and placeholders for resources (`PLACEHOLDERS`). Plain objects are resolved member by member."""
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, list):
        return [resolve(v, resources) for v in value]
    if isinstance(value, dict) and len(value) == 1:
        (fn, arg), = value.items()
        if fn == "Ref":
            if arg in PSEUDO:
                return PSEUDO[arg]
            return placeholder(arg, "Ref", resources)
        if fn == "Fn::GetAtt":
            logical_id, attribute = arg if isinstance(arg, list) else arg.split(".", 1)
            return placeholder(logical_id, attribute, resources)
        if fn == "Fn::Join":
            sep, parts = arg
            return sep.join(str(resolve(p, resources)) for p in parts)
        if fn == "Fn::Select":
            return resolve(arg[1], resources)[int(arg[0])]
        if fn == "Fn::Split":
            return str(resolve(arg[1], resources)).split(arg[0])
        if fn.startswith("Fn::"):
            raise ValueError(f"unsupported intrinsic: {value!r}")
    if isinstance(value, dict):
        return {k: resolve(v, resources) for k, v in value.items()}
    raise ValueError(f"unsupported value in template: {value!r}")


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, check=False)


def lint_template(template: Path) -> tuple[list[str], list[str]]:
    """cfn-lint findings split into (errors, warnings+informational)."""
    cmd = [sys.executable, "-m", "cfnlint", "--format", "json", str(template)]
    if CFN_LINT_IGNORES:
        cmd += ["--ignore-checks", *CFN_LINT_IGNORES]
    proc = _run(cmd)
    try:
        findings = json.loads(proc.stdout or "[]")
    except json.JSONDecodeError:
        return [f"cfn-lint did not run: {proc.stderr.strip() or proc.stdout.strip()}"], []
    errors: list[str] = []
    others: list[str] = []
    for f in findings:
        rule = f["Rule"]["Id"]
        line = f"{rule} {f['Message']} ({'/'.join(str(p) for p in f['Location'].get('Path') or [])})"
        (errors if rule.startswith("E") else others).append(line)
    return errors, others


def validate_state_machines(template: Path, out: Path) -> tuple[list[str], list[str]]:
    """Render each state machine's DefinitionString to `out/<logical id>.asl.json` and run asl-validator on it."""
    resources = json.loads(template.read_text())["Resources"]
    out.mkdir(parents=True, exist_ok=True)
    checked: list[str] = []
    failures: list[str] = []
    npx = shutil.which("npx") or "npx"
    for logical_id, res in resources.items():
        if res["Type"] != "AWS::StepFunctions::StateMachine":
            continue
        definition = json.loads(resolve(res["Properties"]["DefinitionString"], resources))
        path = out / f"{logical_id}.asl.json"
        path.write_text(json.dumps(definition, indent=2))
        proc = _run([npx, "--no-install", "asl-validator", "--json-path", str(path)])
        checked.append(logical_id)
        if proc.returncode != 0:
            failures.append(f"{logical_id}: {(proc.stdout + proc.stderr).strip()}")
    if not checked:
        failures.append("no AWS::StepFunctions::StateMachine in the template")
    return checked, failures


# --- Static IAM check (docs/security.md, "Static IAM check") -------------------------------------------------------
# Every statement of every identity policy in the template (AWS::IAM::Policy, AWS::IAM::ManagedPolicy, inline policies
# of roles, users and groups) is checked against the AWS Service Authorization Reference (SAR) as parliament (duo-labs,
# PyPI) carries it: each action must exist, and each resource it is granted on must be of a resource type the SAR
# lists for that action (an action that takes none must be granted on "*"). Parliament is used for its SAR database,
# its action expansion and its policy linting (malformed statements, unknown actions, invalid ARNs, conditions that do
# not apply); its own resource matching is not strict enough (a variable such as ${LogGroupName} matches anything, so
# `logs:FilterLogEvents` on `...:log-group:G:log-stream:*` passes), so the resource-type test is done here, on its data.

# Parliament finding types that do not fail the check, each with the reason. Every other type it reports must be 0.
IAM_IGNORED_FINDINGS: dict[str, str] = {
    "RESOURCE_STAR": (
        "Resource '*' is least-privilege advice, not a type mismatch (the actions it lists also take resource ARNs). "
        "Every action granted on '*' is reviewed by cdk-nag AwsSolutions-IAM5 (acknowledged one by one with a reason "
        "in cdk/nag.py) and allow-listed in tests/test_cdk.py STAR_RESOURCE_ALLOWED."
    ),
    "RESOURCE_MISMATCH": (
        "Superseded by REQUIRED_RESOURCE_MISSING below, the same test done strictly: parliament's version matches a "
        "SAR variable against anything (a log-stream ARN passes for a log group), takes the required resource types "
        "of an action all at once where some are alternatives (ALTERNATIVE_REQUIRED_TYPES), and, its SAR copy "
        "predating Batch's job-definition-revision type, wants a job definition ARN without its :revision."
    ),
}
# Required resource types the SAR lists for an action that are alternatives (each request names one of them), with
# the reason; every other required type of an action must be covered by the resources a policy grants it on.
ALTERNATIVE_REQUIRED_TYPES: dict[str, tuple[frozenset[str], str]] = {
    "states:DescribeExecution": (
        frozenset({"execution", "express"}),
        "a request describes one execution, either a Standard one (execution) or an Express one (express)",
    ),
}
# Which characters a SAR variable such as ${TableName} can stand for. The SAR writes ARN formats with variables but
# does not say what they may hold; here a variable is one or more characters other than ":" (the ARN's separator),
# except the variables below (the characters each one never holds).
VARIABLE_EXCLUDES_DEFAULT = ":"
VARIABLE_EXCLUDES: dict[str, str] = {
    "ObjectName": "",  # S3 object keys may hold any character
    "FunctionName": "/",  # a qualified ARN (function:NAME:VERSION-or-ALIAS) is of Lambda's function type
    "JobDefinitionName": "/",  # Batch job definition ARNs carry the revision: job-definition/NAME:REVISION
    "BucketName": ":/",  # `bucket/key` is an object, never a bucket
    "TableName": ":/",  # `table/T/index/I` is an index and `table/T/stream/S` a stream, never the table
    "IndexName": ":/",
}
# ARN formats used instead of the SAR's, with the reason.
ARN_FORMAT_OVERRIDES: dict[tuple[str, str], tuple[str, ...]] = {
    # CloudWatch Logs authorizes log-group actions (FilterLogEvents, DescribeLogStreams, CreateLogGroup, ...) against
    # `arn:...:log-group:NAME:*` (the form of CDK's logGroupArn and of AWS::Logs::LogGroup's Arn), while the SAR
    # writes `...:log-group:NAME`: a grant on the bare group ARN or on `...:log-stream:*` does not cover them. The
    # trailing "*" is a literal character of the ARN IAM sees; a policy's `*` (or `:*`) matches it.
    ("logs", "log-group"): ("arn:${Partition}:logs:${Region}:${Account}:log-group:${LogGroupName}:*",),
}
IAM_INLINE_POLICY_TYPES = ("AWS::IAM::Role", "AWS::IAM::User", "AWS::IAM::Group")
IAM_POLICY_TYPES = ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy")


@dataclass(frozen=True)
class IamFinding:
    policy: str  # logical id, or `<logical id>/<PolicyName>` for an inline policy
    statement: int | None  # index in the policy's Statement list; None for a finding about the whole policy
    kind: str  # RESOURCE_TYPE_MISMATCH, REQUIRED_RESOURCE_MISSING, MALFORMED, ..., or parliament:<its issue>
    detail: str

    @property
    def ignored(self) -> bool:
        return self.kind.removeprefix("parliament:") in IAM_IGNORED_FINDINGS and self.kind.startswith("parliament:")

    def __str__(self) -> str:
        where = self.policy if self.statement is None else f"{self.policy} statement {self.statement}"
        return f"{self.kind} {where}: {self.detail}"


@dataclass
class IamReport:
    policies: int = 0
    statements: int = 0
    findings: list[IamFinding] = field(default_factory=list)
    ignored: Counter[str] = field(default_factory=Counter)

    def summary(self) -> str:
        line = f"iam-check: {self.policies} policies, {self.statements} statements, {len(self.findings)} findings"
        if self.ignored:
            counts = ", ".join(f"{kind} x{n}" for kind, n in sorted(self.ignored.items()))
            line += f" (not counted: {counts}; reasons in cdk.check.IAM_IGNORED_FINDINGS)"
        return line


@dataclass(frozen=True)
class _Chars:
    """One step of a pattern: a literal character, or any character not in `excludes`; `repeat`: zero or more."""

    literal: str | None
    excludes: str = ""
    repeat: bool = False


def _meet(a: _Chars, b: _Chars) -> bool:
    """Whether one character can be matched by both steps."""
    if a.literal is not None and b.literal is not None:
        return a.literal == b.literal
    if a.literal is not None:
        return a.literal not in b.excludes
    if b.literal is not None:
        return b.literal not in a.excludes
    return True  # two classes that each leave out a few characters share the others


@functools.cache
def _policy_pattern(resource: str) -> tuple[_Chars, ...]:
    """A policy's Resource: `*` is any run of characters, `?` any one, `${...}` a policy variable (any run)."""
    steps: list[_Chars] = []
    for part in re.split(r"(\$\{[^}]*\})", resource):
        if part in ("${*}", "${?}", "${$}"):
            steps.append(_Chars(part[2]))
        elif part.startswith("${") and part.endswith("}"):
            steps.append(_Chars(None, repeat=True))
        else:
            steps += [_Chars(None, repeat=c == "*") if c in "*?" else _Chars(c) for c in part]
    return tuple(steps)


@functools.cache
def _format_pattern(arn_format: str) -> tuple[_Chars, ...]:
    """A SAR ARN format: `${Name}` is one or more of the characters the variable may hold (VARIABLE_EXCLUDES)."""
    steps: list[_Chars] = []
    for part in re.split(r"(\$\{[^}]*\})", arn_format):
        if part.startswith("${") and part.endswith("}"):
            excludes = VARIABLE_EXCLUDES.get(part[2:-1], VARIABLE_EXCLUDES_DEFAULT)
            steps += [_Chars(None, excludes), _Chars(None, excludes, repeat=True)]
        else:
            steps += [_Chars(c) for c in part]
    return tuple(steps)


@functools.cache
def arn_matches_format(resource: str, arn_format: str) -> bool:
    """Whether some ARN of the format `arn_format` (SAR syntax) matches the policy Resource `resource` (a glob)."""
    p, q = _policy_pattern(resource), _format_pattern(arn_format)
    todo, seen = [(0, 0)], set()
    while todo:  # reachability in the product of the two patterns' automata
        i, j = todo.pop()
        if (i, j) in seen:
            continue
        seen.add((i, j))
        if i == len(p) and j == len(q):
            return True
        if i < len(p) and p[i].repeat:
            todo.append((i + 1, j))
        if j < len(q) and q[j].repeat:
            todo.append((i, j + 1))
        if i < len(p) and j < len(q) and _meet(p[i], q[j]):
            todo.append((i if p[i].repeat else i + 1, j if q[j].repeat else j + 1))
    return False


def _parliament() -> Any:
    """parliament, imported on first use (it loads its 10 MB SAR database at import)."""
    with warnings.catch_warnings():
        # parliament imports pkg_resources (deprecated by setuptools) and leaves its data files open at import.
        warnings.filterwarnings("ignore", message=".*pkg_resources.*")
        warnings.simplefilter("ignore", ResourceWarning)
        import parliament  # type: ignore[import-untyped]
    return parliament


@dataclass(frozen=True)
class SarAction:
    """One action of the Service Authorization Reference."""

    name: str  # prefix:Action, spelled as the SAR does
    types: dict[str, tuple[str, ...]]  # resource type -> ARN formats ({} when it takes none: Resource "*" only)
    required: tuple[str, ...]  # the types marked required (*)


@functools.cache
def _sar_actions() -> dict[str, SarAction]:
    """lower-case `prefix:action` -> SarAction, from parliament's copy of the SAR (ARN_FORMAT_OVERRIDES applied).

    A prefix can appear under several services in the SAR; the first that defines the action wins, as in parliament.
    """
    index: dict[str, SarAction] = {}
    for service in _parliament().iam_definition:
        prefix = service["prefix"]
        formats = {r["resource"]: r["arn"] for r in service["resources"]}
        for privilege in service["privileges"]:
            names = [t["resource_type"] for t in privilege["resource_types"] if t["resource_type"].rstrip("*")]
            types = {t.rstrip("*"): ARN_FORMAT_OVERRIDES.get((prefix, t.rstrip("*")), (formats[t.rstrip("*")],))
                     for t in names}
            required = tuple(t.rstrip("*") for t in names if t.endswith("*"))
            name = f"{prefix}:{privilege['privilege']}"
            index.setdefault(name.lower(), SarAction(name, types, required))
    return index


def sar_action(action: str) -> SarAction | None:
    """The SAR's entry for `prefix:Action` (case-insensitive); None when the SAR has no such action."""
    return _sar_actions().get(action.lower())


def _covers(resources: list[str], formats: tuple[str, ...]) -> bool:
    return any(r == "*" or arn_matches_format(r, f) for r in resources for f in formats)


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _describe_types(action: SarAction) -> str:
    if not action.types:
        return f'{action.name} takes no resource type (Resource "*" only)'
    return f"{action.name} takes " + "; ".join(f"{t} ({' or '.join(fs)})" for t, fs in action.types.items())


def _statement_findings(statement: Any, policy: str, index: int) -> list[IamFinding]:
    """The resource-type test of one statement: every resource (but "*") must be of a type each action takes."""
    def finding(kind: str, detail: str) -> IamFinding:
        return IamFinding(policy, index, kind, detail)

    if not isinstance(statement, dict):
        return [finding("MALFORMED", f"statement is not an object: {statement!r}")]
    if "NotAction" in statement or "NotResource" in statement:
        if statement.get("Effect") == "Allow":
            return [finding("ALLOW_WITH_NOT_ELEMENT", "Allow with NotAction/NotResource grants everything not "
                            "listed; it cannot be checked against resource types (and is never least privilege)")]
        return []  # a Deny with NotAction/NotResource (a guard rail): nothing to match against resource types
    resources = _as_list(statement.get("Resource", []))
    out = [finding("MALFORMED", f"Resource is not a string: {r!r}") for r in resources if not isinstance(r, str)]
    arns = [r for r in resources if isinstance(r, str) and r != "*"]
    for action in _as_list(statement.get("Action", [])):
        if not isinstance(action, str):
            out.append(finding("MALFORMED", f"Action is not a string: {action!r}"))
            continue
        if action in ("*", "*:*") or ":" not in action:
            continue  # parliament reports a malformed action; "*" takes every resource type
        # A wildcard action (s3:Get*) covers a resource when one of the actions it stands for takes it.
        takes = _expand(action)
        if not takes:
            continue  # unknown action or prefix: parliament reports it
        bad = [arn for arn in arns if not any(_covers([arn], fs) for a in takes for fs in a.types.values())]
        if bad:
            what = _describe_types(takes[0]) if len(takes) == 1 else (
                f"none of the {len(takes)} actions of {action} takes these")
            out.append(finding("RESOURCE_TYPE_MISMATCH", f"{what}; granted on {', '.join(bad)}"))
    return out


def _expand(action: str) -> list[SarAction]:
    expanded = _parliament().expand_action(action, raise_exceptions=False)
    found = (sar_action(f"{e['service']}:{e['action']}") for e in expanded)
    return [a for a in found if a is not None]


def _required_findings(statements: list[Any], policy: str) -> list[IamFinding]:
    """Each action the policy allows (by name, not wildcard) must be granted on every resource type the SAR marks
    required for it, in one statement or several (a request is authorized on each of those resources)."""
    granted: dict[str, tuple[int, SarAction, list[str]]] = {}  # action -> (first statement, SAR entry, resources)
    for index, statement in enumerate(statements):
        if not isinstance(statement, dict) or statement.get("Effect") != "Allow" or "Action" not in statement:
            continue
        resources = [r for r in _as_list(statement.get("Resource", [])) if isinstance(r, str)]
        for action in _as_list(statement["Action"]):
            if not isinstance(action, str) or "*" in action or "?" in action:
                continue  # a wildcard action is granted on purpose on whatever it is granted on
            entry = sar_action(action)
            if entry is not None:
                granted.setdefault(entry.name, (index, entry, []))[2].extend(resources)
    out: list[IamFinding] = []
    for name, (index, entry, resources) in granted.items():
        alternatives = ALTERNATIVE_REQUIRED_TYPES.get(name, (frozenset(), ""))[0]
        groups = [tuple(alternatives)] if alternatives & set(entry.required) else []
        groups += [(t,) for t in entry.required if t not in alternatives]
        for group in groups:
            if not any(_covers(resources, entry.types[t]) for t in group):
                formats = " or ".join(f for t in group for f in entry.types[t])
                out.append(IamFinding(policy, index, "REQUIRED_RESOURCE_MISSING",
                                      f"{name} requires {' or '.join(group)} ({formats}); granted only on "
                                      f"{', '.join(resources)}"))
    return out


def check_policy(document: Any, name: str = "policy") -> list[IamFinding]:
    """All findings for one policy document whose values are plain strings (intrinsics resolved), ignored kinds
    (`IamFinding.ignored`) included."""
    findings: list[IamFinding] = []
    if not isinstance(document, dict) or not isinstance(document.get("Statement"), list | dict):
        return [IamFinding(name, None, "MALFORMED", "policy document without a Statement list")]
    statements = _as_list(document["Statement"])
    analysed = _parliament().analyze_policy_string(json.dumps(document), ignore_private_auditors=True)
    # Statement findings come per parsed statement, in document order; the rest are about the whole policy.
    findings += [IamFinding(name, None, f"parliament:{f.issue}", _parliament_detail(f)) for f in analysed._findings]
    for index, parsed in enumerate(analysed.statements):
        findings += [IamFinding(name, index, f"parliament:{f.issue}", _parliament_detail(f)) for f in parsed.findings]
    for index, statement in enumerate(statements):
        findings += _statement_findings(statement, name, index)
    return findings + _required_findings(statements, name)


def _parliament_detail(finding: Any) -> str:
    location = {k: v for k, v in (finding.location or {}).items() if k not in ("filepath", "line", "column", "lineno")}
    detail = finding.detail if isinstance(finding.detail, str) else json.dumps(finding.detail)
    return f"{detail} {json.dumps(location)}" if location else str(detail)


def iam_policies(resources: dict[str, Any]) -> list[tuple[str, Any]]:
    """(name, policy document as in the template) of every identity policy of the template."""
    policies: list[tuple[str, Any]] = []
    for logical_id, res in resources.items():
        props = res.get("Properties", {})
        if res["Type"] in IAM_POLICY_TYPES:
            policies.append((logical_id, props.get("PolicyDocument")))
        elif res["Type"] in IAM_INLINE_POLICY_TYPES:
            for inline in props.get("Policies", []):
                policies.append((f"{logical_id}/{inline.get('PolicyName')}", inline.get("PolicyDocument")))
    return policies


def check_iam(template: Path) -> IamReport:
    """The static IAM check of a synthesized template (see IAM_IGNORED_FINDINGS for what does not count)."""
    resources = json.loads(template.read_text())["Resources"]
    report = IamReport()
    for name, raw in iam_policies(resources):
        report.policies += 1
        try:
            document = resolve(raw, resources)
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            report.findings.append(IamFinding(name, None, "UNRESOLVED", f"cannot resolve the document: {exc}"))
            continue
        if isinstance(document, dict):
            report.statements += len(_as_list(document.get("Statement", [])))
        for finding in check_policy(document, name):
            if finding.ignored:
                report.ignored[finding.kind.removeprefix("parliament:")] += 1
            else:
                report.findings.append(finding)
    if not report.policies:
        report.findings.append(IamFinding(str(template), None, "EMPTY", "no IAM policy in the template"))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("outdir", nargs="?", default=str(REPO_ROOT / "cdk.out"))
    parser.add_argument("--no-cache", action="store_true", help="synthesize even if the cached template matches")
    parser.add_argument("-c", "--context", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")
    outdir = Path(args.outdir).resolve()
    context = dict(item.split("=", 1) for item in args.context)
    if args.no_cache:
        (outdir / KEY_FILE).unlink(missing_ok=True)

    failed = False
    started = time.perf_counter()
    try:
        template = synthesize(outdir, context)
    except Exception as exc:
        print(f"FAIL synth: {exc}")
        report = outdir / "validation-report.json"
        if report.exists():
            print(f"     cdk-nag report: {report}")
        return 1
    print(f"ok   synth ({time.perf_counter() - started:.1f} s, cdk-nag clean): {template}")

    started = time.perf_counter()
    errors, warnings = lint_template(template)
    print(f"{'FAIL' if errors else 'ok  '} cfn-lint ({time.perf_counter() - started:.1f} s): "
          f"{len(errors)} errors, {len(warnings)} warnings")
    for line in errors + warnings:
        print(f"     {line}")
    failed |= bool(errors)

    started = time.perf_counter()
    checked, failures = validate_state_machines(template, outdir / "asl")
    print(f"{'FAIL' if failures else 'ok  '} asl-validator ({time.perf_counter() - started:.1f} s): "
          f"{', '.join(checked) or 'nothing checked'}")
    for line in failures:
        print(f"     {line}")
    failed |= bool(failures)

    started = time.perf_counter()
    iam = check_iam(template)
    print(f"{'FAIL' if iam.findings else 'ok  '} {iam.summary()} ({time.perf_counter() - started:.1f} s)")
    for finding in iam.findings:
        print(f"     {finding}")
    failed |= bool(iam.findings)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
