"""DynamoDB reads answered at the speed of a JSON dump, on moto 5.2.5.

moto 5.2 serializes every response by walking the operation's output shape, member by member: for DynamoDB's
item-carrying reads that is each attribute of each item, nested maps and lists included. A Query of 50 job rows
spent ~1 s there (measured in-process: 1,316 ms stock, 401 ms here; 200 rows ~4 s and 664 ms), which made every
list of the offline API (the runs table of ``kaos ui``, ``kaos train list``) slow in proportion to its page.

DynamoDB's wire format is JSON whose items are already in their attribute-value form (moto keeps them that way,
``DynamoResult`` turns them into plain dicts), so for GetItem, BatchGetItem, Query and Scan this patch answers
``json.dumps`` of the same result, as moto itself did before its generic serializer
(``moto.dynamodb.models.utilities.dynamo_json_dump``, which base64-encodes binary values as the wire does). Errors
and every other action keep moto's serializer. ``tests/test_patches_dynamodb.py`` compares the answers with stock
moto's for every attribute type.

Registered by :mod:`kaos.local.patches` (``apply``/``remove``), installed through
:class:`kaos.local.patching.Patches` (a moto rename fails loudly).
"""
from __future__ import annotations

from typing import Any, Final

from kaos.local.patching import Patches

PATCH_POINTS: Final[tuple[str, ...]] = ("moto.dynamodb.responses.DynamoHandler.serialized",)
READS: Final = frozenset({"GetItem", "BatchGetItem", "Query", "Scan"})
CONTENT_TYPE: Final = "application/x-amz-json-1.0"

PATCHES = Patches()


def _serialized(self: Any, action_result: Any) -> Any:
    from moto.dynamodb.models.utilities import dynamo_json_dump
    from moto.dynamodb.responses import DynamoHandler, DynamoResult

    if type(action_result) is DynamoResult and self._get_action() in READS:
        return 200, {"Content-Type": CONTENT_TYPE, **self.response_headers}, dynamo_json_dump(action_result.result)
    return PATCHES.original(DynamoHandler, "serialized")(self, action_result)


def apply() -> None:
    """Install the patch (idempotent)."""
    from moto.dynamodb.responses import DynamoHandler

    if not PATCHES:
        PATCHES.replace(DynamoHandler, "serialized", _serialized)


def remove() -> None:
    PATCHES.remove()
