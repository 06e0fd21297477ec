"""Shared fixtures. The embedded stack runs as a separate process started by the real CLI (`kaos local up
--detach`), exactly as a user starts it, so tests in this process may start their own emulator too."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterator

import boto3
import pytest

from kaos.client import Client
from kaos.local.emulator import Emulator
from kaos.settings import ClientConfig

from . import cli_process

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "kaos" / "templates" / "sklearn-digits"


def until(condition: Callable[[], Any], what: str, timeout: float = 120, every: float = 0.3) -> Any:
    """Polls `condition` until it returns something truthy; fails naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


class Stack:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.state_dir = home / "local"
        self.runtime: dict[str, Any] = json.loads((self.state_dir / "runtime.json").read_text())
        self._clients: dict[str, Any] = {}
        self.env = {**os.environ, "KAOS_HOME": str(home), "COLUMNS": "200"}
        for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
            self.env.pop(key, None)

    @property
    def api_url(self) -> str:
        return str(self.runtime["api_url"])

    def kaos(self, *args: str, check: bool = True, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        result = cli_process.run(args, self.env, timeout)
        if check and result.returncode != 0:
            raise AssertionError(
                f"kaos {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
            )
        return result

    def kaos_json(self, *args: str) -> Any:
        return json.loads(self.kaos(*args, "--json").stdout)

    def client(self, user: str = "dev") -> Client:
        config = ClientConfig(api_url=self.api_url, profile=f"kaos-local-{user}",
                              credentials_file=str(self.state_dir / "credentials"))
        return Client(config)

    def executions(self, name: str, timeout: float = 60) -> list[str]:
        """The statuses of the executions named `name` (any state machine) once none is RUNNING. A job reads
        COMPLETED as soon as its execution's last task wrote it; the execution ends a moment later, on AWS too."""
        sfn = self.aws("stepfunctions")
        deadline = time.monotonic() + timeout
        while True:
            statuses = [e["status"] for machine in sfn.list_state_machines()["stateMachines"]
                        for e in sfn.list_executions(stateMachineArn=machine["stateMachineArn"])["executions"]
                        if e["name"] == name]
            if "RUNNING" not in statuses or time.monotonic() > deadline:
                return statuses
            time.sleep(0.1)

    def aws(self, service: str) -> Any:
        """A client onto the stack's emulated AWS, for assertions on what the product wrote there: one per service
        (clients are thread-safe; tests poll through them, and each new client costs tens of ms of CPU)."""
        if service not in self._clients:
            admin = json.loads((self.state_dir / "aws-admin.json").read_text())
            self._clients[service] = boto3.client(service, endpoint_url=self.runtime["endpoint_url"],
                                                  region_name="us-east-1", **admin)
        return self._clients[service]


# The synth context of every stack the tests start (the shared one, the restarted ones, the lineage one) and of
# the template the template tests read: one cached synth for all (kaos.local.stack.local_template), where each
# distinct context costs 40-90 s on a clean clone. tests/test_remote_data.py and test_provenance.py reference
# emulator buckets of their own in manifests.
STACK_CONTEXT = {"KAOS_LOCAL_REMOTE_DATA_BUCKETS": "external-data,impact-data"}


def stack_environment(home: Path) -> dict[str, str]:
    """The environment `kaos local up` gets in tests: this KAOS_HOME, the shared synth context, and this test
    process as the stack's parent: a run killed by its timeout (no teardown) leaves no stack running."""
    from kaos.local.stack import PARENT_PID_ENV

    return {**os.environ, "KAOS_HOME": str(home), **STACK_CONTEXT, PARENT_PID_ENV: str(os.getpid())}


def stack_template() -> dict[str, Any]:
    """The template the test stacks run (from the synth cache they share)."""
    from kaos.local.stack import local_template

    return local_template(STACK_CONTEXT)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("kaos-home")
    # The stack trusts one local test CA, so https:// remote data can be served from 127.0.0.1 in tests.
    # Test hooks: the fault-injection route and the local admin user who alone may call it (see inject()).
    env = {**stack_environment(home), "SSL_CERT_FILE": str(local_tls(home)[0]), "KAOS_LOCAL_TEST_HOOKS": "1"}
    started = subprocess.run([sys.executable, "-m", "kaos.cli", "local", "up", "--detach",
                              "--state-dir", str(home / "local")], env=env, capture_output=True, text=True,
                             timeout=600)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        yield Stack(home)
    finally:
        subprocess.run([sys.executable, "-m", "kaos.cli", "local", "down", "--state-dir", str(home / "local")],
                       env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[Emulator]:
    """The offline AWS alone, in this process (the contract tests of its patches)."""
    emu = Emulator(tmp_path / "emu", stop_grace_seconds=1)
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    # One cache of image environments (kaos.local.environments) for every stack and runner of the test session, kept
    # across sessions of this checkout like the synth cache: a cold build downloads the image's packages (minutes).
    os.environ.setdefault("KAOS_ENVIRONMENTS_CACHE", str(Path(__file__).resolve().parent.parent / ".cache"
                                                         / "environments"))
    # The client's caches of committed snapshots and file hashes (kaos/bundle.py): a temporary folder per worker,
    # never the real home's.
    os.environ.setdefault("KAOS_CACHE_DIR", tempfile.mkdtemp(prefix="kaos-test-cache-"))


def inject(stack: Stack, fault: dict[str, Any]) -> None:
    """Test-only fault injection into the running embedded stack (see kaos/local/gateway.py CONTROL_PATH): only
    the admin user, which exists because the fixture starts the stack with test hooks, may call it."""
    stack.client("admin").request("POST", "/_local/faults", fault)


def tiny_code(tmp: Path, body: str = "") -> Path:
    """A fast training entry point: writes a model and metrics, after `body` (Python) runs."""
    code = tmp / "tiny-code"
    code.mkdir(exist_ok=True)
    (code / "train.py").write_text(
        "import json, os, sys, time\n"
        f"{body}\n"
        "model = os.environ['SM_MODEL_DIR']\n"
        "open(os.path.join(model, 'model.txt'), 'w').write(' '.join(sys.argv[1:]))\n"
        "json.dump({'accuracy': 1.0}, open(os.path.join(model, 'metrics.json'), 'w'))\n"
    )
    return code


def local_tls(home: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (cert, key), made once per test session home."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    cert_path, key_path = home / "tls-cert.pem", home / "tls-key.pem"
    if cert_path.exists():
        return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path
