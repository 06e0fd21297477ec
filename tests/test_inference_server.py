"""The offline model server (kaos/local/inference_server.py) as a process, the way the serving runner starts it:
the SageMaker scikit-learn serving contract, each behaviour against what the image's toolkit does."""
from __future__ import annotations

import http.client
import io
import json
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from kaos.local import inference_server

SERVER = Path(inference_server.__file__)
# A numpy model with scikit-learn's predict contract (2-D input only), so the server imports no scikit-learn.
DEFAULTS = """
import os
import numpy as np

class Threshold:
    def __init__(self, weights):
        self.weights = weights

    def predict(self, rows):
        if rows.ndim != 2:
            raise ValueError(f"Expected 2D array, got {rows.ndim}D array instead")
        return (rows @ self.weights > 0.5).astype(np.int64)

def model_fn(model_dir):
    return Threshold(np.load(os.path.join(model_dir, "weights.npy")))
"""
TRANSFORM = DEFAULTS + """
import json
def transform_fn(model, body, content_type, accept):
    rows = json.loads(body)
    return json.dumps({"labels": model.predict(np.array(rows)).tolist(), "accept": accept}), "application/vnd.kaos+json"

def execution_parameters_fn():
    return json.dumps({"MaxConcurrentTransforms": 2, "BatchStrategy": "MULTI_RECORD"}), "application/json"
"""


def start(model_dir: Path, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen([sys.executable, "-I", str(SERVER), "--model-dir", str(model_dir), *args],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env or {})
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith(inference_server.LISTENING):
            return process, f"http://127.0.0.1:{line[len(inference_server.LISTENING):].strip()}"
    process.wait()
    raise RuntimeError("".join(lines))


def model_dir(tmp: Path, inference: str | None) -> Path:
    directory = tmp / "model"
    (directory / "code").mkdir(parents=True)
    np.save(directory / "weights.npy", np.array([1.0, 0.0]))
    if inference is not None:
        (directory / "code" / "inference.py").write_text(inference)
    return directory


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    process, url = start(model_dir(tmp_path_factory.mktemp("defaults"), DEFAULTS), "--max-payload", "1024")
    yield url
    process.kill()
    process.wait()


def call(url: str, body: bytes, content_type: str | None, accept: str | None = None) -> tuple[int, str, bytes]:
    """POST /invocations with exactly these headers (urllib would add a form Content-Type)."""
    headers = {k: v for k, v in (("Content-Type", content_type), ("Accept", accept)) if v}
    connection = http.client.HTTPConnection(urllib.parse.urlparse(url).netloc, timeout=30)
    try:
        connection.request("POST", "/invocations", body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.headers["Content-Type"], response.read()
    finally:
        connection.close()


def test_ping_and_default_handlers_in_each_content_type(server: str) -> None:
    with urllib.request.urlopen(f"{server}/ping", timeout=10) as ping:
        assert ping.status == 200
    with pytest.raises(urllib.error.HTTPError, match="404"):  # no execution_parameters_fn: no such route
        urllib.request.urlopen(f"{server}/execution-parameters", timeout=10)
    assert call(server, b"[[1, 0], [0, 1]]", "application/json") == (200, "application/json", b"[1, 0]")
    # The toolkit's CSV encoder writes one value per line for a 1-D prediction.
    assert call(server, b"1,1\n0,0\n", "text/csv", "text/csv") == (200, "text/csv", b"1\n0\n")
    buffer = io.BytesIO()
    np.save(buffer, np.array([[1.0, 1.0]]))
    status, content_type, body = call(server, buffer.getvalue(), "application/x-npy", "application/x-npy")
    assert (status, content_type) == (200, "application/x-npy")
    assert np.load(io.BytesIO(body)).tolist() == [1]


def test_accept_negotiation(server: str) -> None:
    # No Accept, or */*, is the default accept (SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT, else JSON).
    assert call(server, b"1,0\n0,1", "text/csv", "*/*")[1] == "application/json"
    assert call(server, b"[[1, 0]]", None)[:2] == (200, "application/json")  # no Content-Type: JSON
    status, content_type, body = call(server, b"[[1, 0]]", "application/json", "application/xml")
    assert (status, content_type) == (406, "application/json")
    assert json.loads(body)["error"] == "UnsupportedFormatError"


def test_unsupported_content_type_and_payload_limit(server: str) -> None:
    status, _, body = call(server, b"<a/>", "application/xml")
    assert status == 415
    assert "Content type application/xml is not supported by this framework" in json.loads(body)["error-message"]
    assert call(server, b"[" + b"1," * 600 + b"1]", "application/json")[0] == 413
    # A pickled object array is refused (allow_pickle=False), as AWS patches the image's decoder.
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert call(server, buffer.getvalue(), "application/x-npy")[0] == 500


def test_transform_fn_from_the_submit_directory(tmp_path: Path) -> None:
    directory = model_dir(tmp_path, None)
    code = tmp_path / "sourcedir"
    code.mkdir()
    (code / "serve.py").write_text(TRANSFORM)
    process, url = start(directory, "--code-dir", str(code),
                         env={"SAGEMAKER_PROGRAM": "serve.py", "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": "text/csv"})
    try:
        status, content_type, body = call(url, b"[[1, 1]]", "application/json")
        assert (status, content_type) == (200, "application/vnd.kaos+json")
        assert json.loads(body) == {"labels": [1], "accept": "text/csv"}
        assert call(url, b"not json", "application/json")[0] == 500  # user code's error: the worker's 500
        with urllib.request.urlopen(f"{url}/execution-parameters", timeout=10) as answer:
            assert json.loads(answer.read())["MaxConcurrentTransforms"] == 2
    finally:
        process.kill()
        process.wait()


@pytest.mark.parametrize("inference, message", [
    ("", "Please provide a model_fn implementation"),
    (DEFAULTS + "def transform_fn(*a): pass\ndef input_fn(*a): pass\n", "Cannot use transform_fn"),
])
def test_a_model_that_cannot_load_fails_at_start(tmp_path: Path, inference: str, message: str) -> None:
    with pytest.raises(RuntimeError, match=message):
        start(model_dir(tmp_path, inference))


def test_the_server_ends_with_the_platform_that_started_it(tmp_path: Path) -> None:
    """A stack killed without stopping its endpoints (SIGKILL) leaves no model server behind."""
    directory = model_dir(tmp_path, DEFAULTS)
    launcher = subprocess.Popen([sys.executable, "-c", (
        "import os, subprocess, sys, time\n"
        f"server = subprocess.Popen([sys.executable, '-I', {str(SERVER)!r}, '--model-dir', {str(directory)!r}, "
        "'--parent-pid', str(os.getpid())])\n"
        "print(server.pid, flush=True)\n"
        "time.sleep(120)\n")], stdout=subprocess.PIPE, text=True)
    assert launcher.stdout is not None
    server = int(launcher.stdout.readline())
    launcher.kill()
    launcher.wait()
    deadline = time.monotonic() + 20
    while Path(f"/proc/{server}").exists() and "zombie" not in Path(f"/proc/{server}/status").read_text() \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{server}").exists() or "zombie" in Path(f"/proc/{server}/status").read_text()
