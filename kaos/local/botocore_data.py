"""botocore's data files parsed once per process, however many sessions and moto dispatchers read them.

botocore gives every Session a loader of its own, each of which parses the JSON files it is asked for and keeps
them; moto parses the model a request needs with a loader it makes per call (moto.core.utils._load_service_model,
kept by its callers' caches). In the embedded stack this kept each file two or three times: every session held
`endpoints` (~7 MB of Python objects), and moto and the sessions each held SageMaker's model (~9.5 MB), DynamoDB's,
Step Functions', Batch's and Lambda's. A Lambda environment's sessions share its warm parent's loader the same way
(kaos/local/lambda_runtime.py), so the data is in the pages the environments share.

The shared loaders parse into plain dicts (:func:`with_plain_dicts`), not botocore's OrderedDicts.
"""
from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from typing import IO, Any

from botocore.loaders import JSONFileLoader, Loader, create_loader


def registering(loader: Loader) -> Callable[[Any], None]:
    """A Session._register_data_loader that gives the session `loader`, unless the session names data paths of its
    own (AWS_DATA_PATH, the `data_path` setting): the loader such a session would make reads only those."""
    def register(session: Any) -> None:
        def data_loader() -> Loader:
            data_path = session.get_config_variable("data_path")
            return loader if data_path is None else create_loader(data_path)

        session._components.lazy_register_component("data_loader", data_loader)

    return register


class _PlainJsonFiles(JSONFileLoader):
    """botocore's JSON file loader, its objects plain dicts. botocore parses into OrderedDicts (from before dicts
    kept their order): SageMaker's model is 9.5 MB of objects that way and 6.2 MB as dicts, `endpoints` 7.0 and
    4.1 MB, and the parse takes half the time. Nothing in botocore, boto3 or moto asks a model for more than a
    dict's order (no move_to_end, popitem(last=...) or OrderedDict check). Denser objects also mean fewer pages
    for a forked Lambda environment to copy when it reads them (every read writes a reference count)."""

    def _load_file(self, full_path: str, open_method: Callable[[str, str], IO[bytes]]) -> Any:
        if not os.path.isfile(full_path):
            return None
        with open_method(full_path, "rb") as handle:
            return json.loads(handle.read().decode("utf-8"))


def with_plain_dicts(loader: Loader) -> Loader:
    """`loader`, reading its files into plain dicts (:class:`_PlainJsonFiles`)."""
    loader.file_loader = _PlainJsonFiles()
    return loader


def _has_extras(loader: Loader, service_name: str, type_name: str, api_version: str) -> bool:
    # botocore's own search for the `<type>.<extras>-extras` files a loader merges into the model (moto's loader
    # looks for `moto` extras under moto's package, botocore's for `sdk` extras under its data).
    found = loader._find_extras(service_name, type_name, api_version)  # type: ignore[attr-defined]
    return next(found, None) is not None


class SharedModels:
    """The models moto reads, shared with botocore's sessions where they are the same file with nothing merged.

    moto's loader merges moto's extras into a few models (S3's) and botocore's its `sdk` extras into others: those
    differ, so moto keeps a copy of its own (parsed once, not per call). Every other model moto asks for is the
    sessions' object itself. Neither side writes into a loaded model."""

    def __init__(self, botocore_loader: Loader, moto_loader: Loader) -> None:
        self.botocore = botocore_loader
        self._moto = moto_loader
        # The loaders' caches are unlocked: two first readers of a model would each parse it (and keep both).
        self._lock = threading.Lock()

    def load(self, service_name: str, type_name: str) -> dict[str, Any]:
        """moto.core.utils._load_service_model."""
        with self._lock:
            version = self._moto.determine_latest_version(service_name, type_name)
            same = (version == self.botocore.determine_latest_version(service_name, type_name)
                    and not _has_extras(self._moto, service_name, type_name, version)
                    and not _has_extras(self.botocore, service_name, type_name, version))
            model: dict[str, Any] = (self.botocore if same else self._moto).load_service_model(
                service_name, type_name, version)
            return model
