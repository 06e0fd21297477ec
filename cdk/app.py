"""Entry point of the CDK app (`cdk.json`: `.venv/bin/python -m cdk.app`).

Context keys: `stage` (dev|prod, default dev), `region` (default us-east-1), `account` (optional),
`trainingImage` (default: the SageMaker scikit-learn framework image of the region), `apiGatewayAccount`
(default true: the stack sets the region's API Gateway CloudWatch role; `false` where the account manages it).
"""
from __future__ import annotations

from pathlib import Path

import aws_cdk
from aws_cdk import App, Environment, Validations
from cdk_nag import AwsSolutionsChecks

from cdk.constants import DEFAULT_REGION, DEFAULT_STAGE, STACK_ID, default_training_image
from cdk.nag import acknowledge_all
from cdk.stack import KaosStack, StageSettings


def _context(app: App, key: str) -> str | None:
    value = app.node.try_get_context(key)
    return None if value is None else str(value)


def build_app(outdir: str | None = None, context: dict[str, str] | None = None) -> aws_cdk.App:
    """Build (not synthesize) the app; `app.synth()` writes `<outdir>/Kaos.template.json` and runs cdk-nag."""
    # Asset metadata (`Metadata["aws:asset:path"]` on each function) is on, as under the cdk CLI, so the offline
    # loader finds a function's code directory in the cloud assembly without parsing the asset manifest.
    app = App(outdir=outdir, context={"aws:cdk:enable-asset-metadata": True, **(context or {})})
    region = _context(app, "region") or DEFAULT_REGION
    stage = _context(app, "stage") or DEFAULT_STAGE
    stack = KaosStack(
        app,
        STACK_ID,
        env=Environment(account=_context(app, "account"), region=region),
        stage=StageSettings.for_stage(stage),
        training_image=_context(app, "trainingImage") or default_training_image(region),
        # chalice's packaging output lives inside the cloud assembly directory, never in the repo.
        work_dir=Path(app.outdir).resolve() / ".chalice-build",
        manage_api_gateway_account=(_context(app, "apiGatewayAccount") or "true").lower() != "false",
    )
    acknowledge_all(stack)
    # cdk-nag 3 runs as a policy-validation plugin at synth; an unacknowledged finding fails synth.
    Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return app


def main() -> None:
    build_app().synth()


if __name__ == "__main__":
    main()
