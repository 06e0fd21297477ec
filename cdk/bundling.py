"""The one code asset of the task Lambdas: `chalicelib/` + `functions/` + the pip-installed requirements.

Bundling runs locally (this machine has no Docker): `pip install -r requirements.txt -t <out>` for the Lambda's
platform, then a copy of the two packages. The asset hash is computed here from the inputs, so CDK skips bundling
when `asset.<hash>` already exists in the output directory.
"""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsii
from aws_cdk import AssetHashType, BundlingOptions, DockerImage, ILocalBundling
from aws_cdk import aws_lambda as lambda_

from cdk.constants import REPO_ROOT
from cdk.digest import tree_digest

PACKAGES = ("chalicelib", "functions")
REQUIREMENTS = "requirements.txt"
LAMBDA_PYTHON_VERSION = "3.12"
_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".mypy_cache", ".pytest_cache")
# Lambda runs Amazon Linux on x86_64; only wheels for it are accepted so the zip never holds host binaries.
_PIP_PLATFORM_ARGS = (
    "--platform",
    "manylinux2014_x86_64",
    "--implementation",
    "cp",
    "--python-version",
    LAMBDA_PYTHON_VERSION,
    "--only-binary=:all:",
)


@jsii.implements(ILocalBundling)
class _PipLocalBundling:
    """Builds the asset directory in-process; always succeeds or raises, so Docker is never tried."""

    def __init__(self, root: Path) -> None:
        self._root = root

    def try_bundle(self, output_dir: str, *_args: Any, **_options: Any) -> bool:
        out = Path(output_dir)
        subprocess.run(
            [
                sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                "--no-compile", *_PIP_PLATFORM_ARGS,
                "-r", str(self._root / REQUIREMENTS), "-t", str(out),
            ],
            check=True,
        )
        shutil.rmtree(out / "bin", ignore_errors=True)  # console scripts of the requirements: not needed
        for package in PACKAGES:
            shutil.copytree(self._root / package, out / package, ignore=_IGNORED, dirs_exist_ok=True)
        return True


def functions_code(root: Path = REPO_ROOT) -> lambda_.Code:
    """`lambda_.Code` for every task Lambda; handlers are `functions.<module>.handler`."""
    inputs = [root / p for p in PACKAGES] + [root / REQUIREMENTS]
    asset_hash = hashlib.sha256(
        (tree_digest(inputs, root=root) + " ".join(_PIP_PLATFORM_ARGS)).encode()
    ).hexdigest()
    return lambda_.Code.from_asset(
        # The source path is only a label here: the local bundler reads the repo itself, and the CUSTOM hash
        # keeps CDK from fingerprinting a directory.
        str(root / "functions"),
        asset_hash_type=AssetHashType.CUSTOM,
        asset_hash=asset_hash,
        bundling=BundlingOptions(
            # Never pulled: local bundling always succeeds (there is no Docker here or in CI).
            image=DockerImage.from_registry("local-bundling-only"),
            local=_PipLocalBundling(root),
        ),
    )
