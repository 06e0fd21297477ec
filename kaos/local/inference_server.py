"""The model server of an offline endpoint: what the SageMaker scikit-learn container serves, stdlib and numpy only.

It runs INSIDE the endpoint's environment (``python -I inference_server.py ...``), beside the user's code, like the
serving stack inside the image; it imports nothing of kaos. What it implements, from
aws/sagemaker-scikit-learn-container ``src/sagemaker_sklearn_container/serving.py`` (single-model serving, which
the image runs with gunicorn + sagemaker-containers) and aws/sagemaker-containers ``_transformer.py``,
``_encoders.py``, ``_worker.py``, ``_env.py``:

* User code: the module ``SAGEMAKER_PROGRAM`` (default ``inference.py``) from ``<model dir>/code/`` when the archive
  has it, else from the unpacked ``SAGEMAKER_SUBMIT_DIRECTORY`` (``--code-dir``: the platform downloads it).
* Handlers: ``transform_fn`` XOR any of ``input_fn``/``predict_fn``/``output_fn`` (both: the model fails to load);
  ``model_fn`` is required (the framework's default raises), the others default to the framework's:
  decode (``application/json``, ``text/csv``, ``application/x-npy``; CSV and JSON as float32), ``model.predict``,
  encode in the negotiated Accept.
* The model is loaded before the port is bound, so ``/ping`` answers 200 only for a loaded model and a model that
  fails to load makes the process exit (the deploy fails, not the first request).
* ``POST /invocations``: the request Content-Type (``ContentType`` or ``Content-Type``, default JSON), Accept (absent
  or ``*/*``: ``SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT``, default JSON). Undecodable content type: 415, unencodable
  Accept: 406, both with the toolkit's JSON error body; any other error in user code: 500. A result tuple
  ``(body, content_type)`` sets the response type; a bare str/bytes is served as Flask serves it (text/html).
* ``GET /execution-parameters``: the user's ``execution_parameters_fn()`` if defined, else 404 (as the image).
* Payload: more than ``--max-payload`` bytes is refused with 413 before the body is read.

One deliberate difference: ``application/x-npy`` is decoded with ``allow_pickle=False``, as AWS patches the image's
decoder (CWE-502, docker/1.4-2/resources/patches/decoder.py); sagemaker-containers itself allows pickles.
"""
from __future__ import annotations

import argparse
import csv
import importlib
import io
import json
import os
import sys
import threading
import time
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from collections.abc import Callable
from typing import Any

import numpy as np

JSON = "application/json"
CSV = "text/csv"
NPY = "application/x-npy"
ANY = "*/*"
UTF8_TYPES = (JSON, CSV)
UNSUPPORTED = ("Content type {} is not supported by this framework.\n\n"
               "Please implement input_fn to to deserialize the request data or an output_fn to\n"
               "serialize the response. For more information, see the SageMaker Python SDK README.")
# Flask's body for an unhandled error in a view (the image's worker is a Flask app).
INTERNAL_ERROR = ("<!doctype html>\n<html lang=en>\n<title>500 Internal Server Error</title>\n"
                  "<h1>Internal Server Error</h1>\n<p>The server encountered an internal error and was unable to "
                  "complete your request. Either the server is overloaded or there is an error in the "
                  "application.</p>\n")
HTML = "text/html; charset=utf-8"
# The line that tells the platform (kaos.local.serving_runner) the model is loaded and on which port.
LISTENING = "Model loaded; listening on 127.0.0.1:"


class UnsupportedFormatError(Exception):
    def __init__(self, content_type: str) -> None:
        super().__init__(UNSUPPORTED.format(content_type))


class ClientError(Exception):
    """The toolkit wraps every user function's exception in this (framework vs user errors)."""


# -- encoders (sagemaker_containers._encoders) -------------------------------------------------------


def _json_to_numpy(text: Any) -> Any:
    return np.array(json.loads(text))


def _csv_to_numpy(text: Any) -> Any:
    try:
        rows = list(csv.reader(io.StringIO(text), delimiter=",", quotechar='"', doublequote=True, strict=True))
        array = np.array(rows).squeeze()
        try:
            return array.astype(None)  # float64, as the toolkit's astype(dtype=None)
        except ValueError:
            return array  # the toolkit swallows it when no dtype was asked for; input_fn's cast then fails
    except Exception as exc:
        raise ClientError(f"Error while decoding csv: {exc}") from exc


def _npy_to_numpy(data: Any) -> Any:
    return np.load(io.BytesIO(data), allow_pickle=False)


def _array_to_json(value: Any) -> str:
    def default(item: Any) -> Any:
        if hasattr(item, "tolist"):
            return item.tolist()
        return json.JSONEncoder().default(item)

    return json.dumps(value, default=default)


def _array_to_csv(value: Any) -> str:
    array = np.array(value)
    if len(array.shape) == 1:
        array = np.reshape(array, (array.shape[0], 1))
    stream = io.StringIO()
    csv.writer(stream, lineterminator="\n", delimiter=",", quotechar='"', doublequote=True,
               strict=True).writerows(array)
    return stream.getvalue()


def _array_to_npy(value: Any) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, value)
    return buffer.getvalue()


DECODERS: dict[str, Callable[[Any], Any]] = {NPY: _npy_to_numpy, CSV: _csv_to_numpy, JSON: _json_to_numpy}
ENCODERS: dict[str, Callable[[Any], Any]] = {NPY: _array_to_npy, CSV: _array_to_csv, JSON: _array_to_json}


def decode(data: Any, content_type: str) -> Any:
    decoder = DECODERS.get(content_type)
    if decoder is None:
        raise UnsupportedFormatError(content_type)
    return decoder(data)


def encode(value: Any, content_type: str) -> Any:
    encoder = ENCODERS.get(content_type)
    if encoder is None:
        raise UnsupportedFormatError(content_type)
    return encoder(value)


# -- the framework's default handlers (sagemaker_sklearn_container.serving) ---------------------------


def default_model_fn(model_dir: str) -> Any:
    raise NotImplementedError("\nPlease provide a model_fn implementation.\n"
                              "See documentation for model_fn at https://github.com/aws/sagemaker-python-sdk\n")


def default_input_fn(input_data: Any, content_type: str) -> Any:
    array = decode(input_data, content_type)
    return array.astype(np.float32) if content_type in UTF8_TYPES else array


def default_predict_fn(input_data: Any, model: Any) -> Any:
    return model.predict(input_data)


def default_output_fn(prediction: Any, accept: str) -> tuple[Any, str]:
    return encode(prediction, accept), accept


class Response:
    """What a view answers: status, body bytes, content type."""

    def __init__(self, body: Any, content_type: str, status: int = 200) -> None:
        self.status = status
        self.content_type = content_type
        self.body = body.encode("utf-8") if isinstance(body, str) else bytes(body or b"")


def _error_response(error: Exception, status: int) -> Response:
    body = json.dumps({"error": type(error).__name__, "error-message": str(error),
                       "stack-trace": traceback.format_exc()})
    return Response(body, JSON, status)


def _wrapped(function: Callable[..., Any]) -> Callable[..., Any]:
    """sagemaker_containers._functions.error_wrapper: a user function's exception becomes a ClientError."""
    def wrapper(*args: Any) -> Any:
        try:
            return function(*args)
        except Exception as exc:
            raise ClientError(exc) from exc

    return wrapper


def as_response(result: Any) -> Response:
    """A view's return value as Flask makes it a response: a (body, mimetype) tuple, or a bare body (text/html)."""
    if isinstance(result, Response):
        return result
    if isinstance(result, tuple):
        return Response(result[0], str(result[1]))
    return Response(result, HTML)


class Transformer:
    """sagemaker_containers._transformer.Transformer with the scikit-learn image's defaults."""

    def __init__(self, module: ModuleType, model_dir: str) -> None:
        user = {name: getattr(module, name, None) for name in
                ("model_fn", "input_fn", "predict_fn", "output_fn", "transform_fn")}
        if user["transform_fn"] and (user["input_fn"] or user["predict_fn"] or user["output_fn"]):
            raise ValueError("Cannot use transform_fn implementation with input_fn, predict_fn, and/or output_fn")
        self._model_fn = _wrapped(user["model_fn"]) if user["model_fn"] else default_model_fn
        self._transform_fn = _wrapped(user["transform_fn"]) if user["transform_fn"] else self._default_transform_fn
        self._input_fn = _wrapped(user["input_fn"]) if user["input_fn"] else default_input_fn
        self._predict_fn = _wrapped(user["predict_fn"]) if user["predict_fn"] else default_predict_fn
        self._output_fn = _wrapped(user["output_fn"]) if user["output_fn"] else default_output_fn
        self.execution_parameters_fn: Callable[[], Any] | None = getattr(module, "execution_parameters_fn", None)
        self.model = self._model_fn(model_dir)

    def transform(self, content: Any, content_type: str, accept: str) -> Response:
        return as_response(self._transform_fn(self.model, content, content_type, accept))

    def _default_transform_fn(self, model: Any, content: Any, content_type: str, accept: str) -> Any:
        try:
            data = self._input_fn(content, content_type)
        except UnsupportedFormatError as exc:
            return _error_response(exc, HTTPStatus.UNSUPPORTED_MEDIA_TYPE)
        prediction = self._predict_fn(data, model)
        try:
            return self._output_fn(prediction, accept)
        except UnsupportedFormatError as exc:
            return _error_response(exc, HTTPStatus.NOT_ACCEPTABLE)


def load_user_module(model_dir: Path, code_dir: Path | None, program: str) -> ModuleType:
    """The user's module: code/ of the model archive first, else the submit directory (the toolkit's order)."""
    packed = model_dir / "code"
    directory = packed if (packed / program).is_file() else code_dir
    if directory is None or not (directory / program).is_file():
        raise ImportError(f"{program} was found neither in {packed} nor in SAGEMAKER_SUBMIT_DIRECTORY")
    sys.path.insert(0, str(directory))
    return importlib.import_module(program[:-3] if program.endswith(".py") else program)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # a burst of clients connects at once (the default backlog is 5)

    def __init__(self, port: int, transformer: Transformer, default_accept: str, max_payload: int,
                 max_concurrency: int) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.transformer = transformer
        self.default_accept = default_accept
        self.max_payload = max_payload
        # Serverless MaxConcurrency: requests beyond it wait for a free slot.
        self.slots = threading.BoundedSemaphore(max_concurrency)


class Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"
    # Headers and body leave as one write, without Nagle's delay: two small writes on a kept-alive connection
    # wait for the client's delayed ACK (~40 ms per response).
    disable_nagle_algorithm = True
    wbufsize = -1

    def log_message(self, format: str, *args: Any) -> None:
        sys.stdout.write(f"{self.address_string()} - - {format % args}\n")

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        self.wfile.write(response.body)

    def do_GET(self) -> None:
        if self.path == "/ping":
            self._send(Response(b"", JSON))
        elif self.path == "/execution-parameters" and self.server.transformer.execution_parameters_fn:
            self._send(as_response(self.server.transformer.execution_parameters_fn()))
        else:
            self._send(Response(b"Not Found", HTML, HTTPStatus.NOT_FOUND))

    def do_POST(self) -> None:
        if self.path != "/invocations":
            self._send(Response(b"Not Found", HTML, HTTPStatus.NOT_FOUND))
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > self.server.max_payload:
            self.close_connection = True  # the body is not read
            self._send(Response(f"HTTP content length exceeded {self.server.max_payload} bytes.", "text/plain",
                                HTTPStatus.REQUEST_ENTITY_TOO_LARGE))
            return
        raw = self.rfile.read(length)
        content_type = self.headers.get("ContentType") or self.headers.get("Content-Type") or JSON
        accept = self.headers.get("Accept")
        if not accept or accept == ANY:
            accept = self.server.default_accept
        content: Any = raw.decode("utf-8") if content_type in UTF8_TYPES else raw
        with self.server.slots:
            try:
                response = self.server.transformer.transform(content, content_type, accept)
            except Exception:
                traceback.print_exc(file=sys.stdout)
                response = Response(INTERNAL_ERROR, HTML, HTTPStatus.INTERNAL_SERVER_ERROR)
        self._send(response)


def exit_with_parent(parent: int, interval: float = 1.0) -> None:
    """Ends this process when the platform that started it (process `parent`) is gone: this process was
    re-parented. A stack killed without stopping its endpoints leaves no server behind (a container dies with its
    host)."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, default=0, help="0: a free port, printed in the listening line")
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--code-dir", type=Path, default=None)
    parser.add_argument("--max-payload", type=int, default=6 * 1024 * 1024)
    parser.add_argument("--max-concurrency", type=int, default=5)
    parser.add_argument("--parent-pid", type=int, default=None, help="exit when this process is gone")
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # a text stream
    exit_with_parent(args.parent_pid or os.getppid())
    program = os.environ.get("SAGEMAKER_PROGRAM") or "inference.py"
    try:
        module = load_user_module(args.model_dir, args.code_dir, program)
        transformer = Transformer(module, str(args.model_dir))
    except Exception:
        print("Error loading the model:", flush=True)
        traceback.print_exc(file=sys.stdout)
        return 1
    server = Server(args.port, transformer, os.environ.get("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT") or JSON,
                    args.max_payload, args.max_concurrency)
    print(f"{LISTENING}{server.server_address[1]}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
