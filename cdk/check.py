"""Validate the synthesized app: synth (cdk-nag inside), cfn-lint on the template, asl-validator on every state machine.

Run `.venv/bin/python -m cdk.check [OUTDIR] [--no-cache]`; exits non-zero on any failure and prints a summary.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cdk.constants import REPO_ROOT
from cdk.synth import KEY_FILE, synthesize

# Values substituted for intrinsics when a definition is rendered for asl-validator (it only needs valid ARNs).
PSEUDO = {
    "AWS::Partition": "aws",
    "AWS::Region": "us-east-1",
    "AWS::AccountId": "123456789012",
    "AWS::URLSuffix": "amazonaws.com",
    "AWS::StackName": "Kaos",
}
# cfn-lint findings accepted on purpose, with the reason: none today.
CFN_LINT_IGNORES: dict[str, str] = {}


def placeholder(logical_id: str) -> str:
    """A syntactically valid ARN standing for `Ref`/`Fn::GetAtt` of a resource (Lambda ARNs for functions)."""
    return f"arn:aws:lambda:us-east-1:123456789012:function:{logical_id}"


def resolve(value: Any, resources: dict[str, Any]) -> Any:
    """Resolve the intrinsics CDK puts in a DefinitionString into plain strings (placeholders for resources)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return [resolve(v, resources) for v in value]
    if isinstance(value, dict) and len(value) == 1:
        (fn, arg), = value.items()
        if fn == "Ref":
            return PSEUDO.get(arg) or placeholder(arg)
        if fn == "Fn::GetAtt":
            return placeholder(arg[0])
        if fn == "Fn::Join":
            sep, parts = arg
            return sep.join(str(resolve(p, resources)) for p in parts)
        if fn == "Fn::Select":
            return resolve(arg[1], resources)[int(arg[0])]
        if fn == "Fn::Split":
            return str(resolve(arg[1], resources)).split(arg[0])
    raise ValueError(f"unsupported intrinsic in definition: {value!r}")


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
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
