"""Task Lambdas: the shared functions asset, a role and a retained log group each, and an environment that is exactly
what the handler's code reads (chalicelib.config.COMPONENTS), so no function ships without a variable it needs.

A construct names the component; the stack, once every resource exists, hands `set_environments` one mapping of every
variable's value and each function takes its own subset (the values include ARNs of state machines that are built
after some of the functions, e.g. the retrain state machine OnUpload starts).
"""
from __future__ import annotations

import weakref
from collections.abc import Mapping

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from chalicelib.config import COMPONENTS
from cdk.bundling import LAMBDA_PYTHON_VERSION, functions_code

LOG_RETENTION = logs.RetentionDays.ONE_MONTH
LAMBDA_RUNTIME = lambda_.Runtime(f"python{LAMBDA_PYTHON_VERSION}", lambda_.RuntimeFamily.PYTHON)
# One code asset per stack, shared by its task Lambdas: each asset would be bundled (pip install) on its own.
_CODE: weakref.WeakKeyDictionary[Stack, lambda_.Code] = weakref.WeakKeyDictionary()


def handler_of(component: str) -> str:
    """The Lambda handler of a component: `prepare_training` -> `functions.prepare_training.handler` (one handler per
    module, so each module can load its component's settings at import)."""
    return f"functions.{component}.handler"


def component_of(handler: str) -> str:
    """The inverse of `handler_of`; the API's handler (`app.app`) is the component `api`."""
    if handler == "app.app":
        return "api"
    module = handler.removeprefix("functions.")
    return module.removesuffix(".handler")


def environment_of(component: str, values: Mapping[str, str]) -> dict[str, str]:
    """Exactly the variables `component` reads, from `values`; a value missing there fails synth, naming it."""
    names = COMPONENTS[component]
    missing = sorted(names - set(values))
    if missing:
        raise ValueError(f"no value for {', '.join(missing)}, which {component} reads (chalicelib.config.COMPONENTS)")
    return {name: values[name] for name in sorted(names)}


class TaskFunction(Construct):
    """The Lambda of one component, with its own role (writing only to its own log group) and a retained log group."""

    def __init__(
        self, scope: Construct, id_: str, *, component: str, timeout: Duration, memory_size: int = 512
    ) -> None:
        super().__init__(scope, id_)
        self.component = component
        stack = Stack.of(self)
        if stack not in _CODE:
            _CODE[stack] = functions_code()
        self.log_group = logs.LogGroup(self, "Logs", retention=LOG_RETENTION, removal_policy=RemovalPolicy.DESTROY)
        # An explicit role instead of the default one: the default attaches AWSLambdaBasicExecutionRole
        # (logs on every group); this one may write to its own log group only.
        self.role = iam.Role(self, "Role", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"))
        self.log_group.grant_write(self.role)
        self.function = lambda_.Function(
            self,
            "Function",
            runtime=LAMBDA_RUNTIME,
            handler=handler_of(component),
            code=_CODE[stack],
            timeout=timeout,
            memory_size=memory_size,
            role=self.role,
            log_group=self.log_group,
        )


def set_environments(scope: Construct, values: Mapping[str, str]) -> None:
    """Give every TaskFunction under `scope` the environment of its component."""
    for construct in scope.node.find_all():
        if isinstance(construct, TaskFunction):
            for name, value in environment_of(construct.component, values).items():
                construct.function.add_environment(name, value)
