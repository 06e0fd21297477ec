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

TransactWriteItems kept a deep copy of every table it touches, taken before each transaction to roll back a
cancelled one: O(all items of the table) per transaction, so every workspace, job and membership write grew slower as
the stack's state grew (4 % of the stack's busy CPU on a fresh stack, and in proportion to the rows after). The patch
keeps a deep copy of only the items the transaction names (at most 100) and puts them back on the same failures
moto rolls back on; the table copy moto asks for is the live table, which its rollback then assigns to itself.
``tests/test_patches_dynamodb.py`` compares commits and cancellations with stock moto.

A Query of the base table sorted every item of the table (``Table.all_items``) and then kept the queried partition's:
O(n log n) in the table's size per Query, with moto's DynamoType comparisons. In the stacks the tests run for ten
minutes that was 12 % of the stack's busy CPU, growing with every job. The patch hands moto's own Query a view of the
table whose ``all_items`` is that one partition (moto then filters and sorts it exactly as before). An index Query
does read every item, but moto sorted them all first and then sorted its matches again by the index's keys and the
table's (a total order): it gets them unsorted, and without the restored items that cannot match (below). The
gsi1 Query of a jobs page on a table of 30,006 items: 0.46-0.74 s -> 0.05 s.
Scans are unchanged. ``tests/test_patches_dynamodb.py`` compares the answers with stock moto's (conditions, order,
pages, filters, projections, for both).

Every item written (PutItem, each item of a BatchWriteItem, a transaction's Put) was built attribute by attribute,
and moto's size check summed the sizes of all attributes already set before adding each one: O(attributes²) size
walks per item, nested maps walked again each time. A 1,001-file bundle's blob index (six attributes a row) spent
about half of moto's put in it. The patch sets the attributes and checks the item's total size once, against the
same limit (the running sums moto compared are each at most the total, so an item is refused exactly when stock
moto refuses it); later changes to an item (UpdateItem) keep moto's check. ``tests/test_patches_dynamodb.py``
compares items and refusals with stock moto.

A restart restored every stored item through moto's PutItem: key and type validation, a lookup of the item it
replaces, and every attribute typed, nested values included (~80 us an item; 30,006 items took 2.2-3.0 s of the
``up``). :func:`insert_restored` puts each item straight into its table's partition, keyed as PutItem keys it, and
parses (base64 binary values decoded, as moto's request parser does) and types its attributes on first use. Until
then the item answers ``to_json`` with the parsed stored values, which are what ``to_json`` of the typed item gives
(the state files are written from it), so the first snapshot after a restart types nothing. Every other read (Query
filters, projections, updates, transactions) goes through ``attrs`` and sees exactly the item PutItem would have
stored. The items were validated when they were first written. ``tests/test_patches_dynamodb.py`` compares restored
items with the items they were stored from, for every attribute type.

Registered by :mod:`kaos.local.patches` (``apply``/``remove``), installed through
:class:`kaos.local.patching.Patches` (a moto rename fails loudly).
"""
from __future__ import annotations

import base64
import contextvars
import copy
import functools
import json
import threading
import types
from collections.abc import Iterable
from typing import Any, Final, NamedTuple

from kaos.local.patching import Patches

PATCH_POINTS: Final[tuple[str, ...]] = ("moto.dynamodb.responses.DynamoHandler.serialized",
                                        "moto.dynamodb.models.DynamoDBBackend.transact_write_items",
                                        "moto.dynamodb.models.copy",
                                        "moto.dynamodb.models.table.Table.query",
                                        "moto.dynamodb.models.dynamo_type.Item.__init__")
READS: Final = frozenset({"GetItem", "BatchGetItem", "Query", "Scan"})
CONTENT_TYPE: Final = "application/x-amz-json-1.0"
ITEM_SIZE_LIMIT: Final = 405_000  # moto's (LimitedSizeDict): between the documented 400 KB and the measured 409 KB

PATCHES = Patches()


def _serialized(self: Any, action_result: Any) -> Any:
    from moto.dynamodb.models.utilities import dynamo_json_dump
    from moto.dynamodb.responses import DynamoHandler, DynamoResult

    if type(action_result) is DynamoResult and self._get_action() in READS:
        return 200, {"Content-Type": CONTENT_TYPE, **self.response_headers}, dynamo_json_dump(action_result.result)
    return PATCHES.original(DynamoHandler, "serialized")(self, action_result)


# Set while a patched transaction runs in this thread: moto's table copy is then the live table.
_IN_TRANSACTION: contextvars.ContextVar[bool] = contextvars.ContextVar("kaos_in_transaction", default=False)


def _deepcopy(value: Any, memo: Any = None) -> Any:
    from moto.dynamodb.models.table import Table

    if isinstance(value, Table) and _IN_TRANSACTION.get():
        return value
    return copy.deepcopy(value, memo)


# moto.dynamodb.models' `copy` module, with deepcopy as above (the module uses nothing else of it).
_COPY = types.SimpleNamespace(deepcopy=_deepcopy, copy=copy.copy)


def _targets(backend: Any, transact_items: list[dict[str, Any]]) -> list[tuple[Any, Any, Any, Any]]:
    """(table, hash, range, a deep copy of the item or None) for each item the transaction names."""
    from moto.dynamodb.models.dynamo_type import DynamoType

    found = []
    for entry in transact_items:
        op = next(iter(entry.values()), None)
        table: Any = backend.tables.get(op.get("TableName")) if isinstance(op, dict) else None
        key = (op.get("Item") if "Put" in entry else op.get("Key")) if isinstance(op, dict) else None
        if table is None or not isinstance(key, dict) or table.hash_key_attr not in key:
            continue  # moto reports it as the transaction's error
        hash_value = DynamoType(key[table.hash_key_attr])
        range_value = DynamoType(key[table.range_key_attr]) if table.range_key_attr in key else None
        if table.has_range_key and range_value is None:
            continue
        current = table.items.get(hash_value)
        if table.has_range_key:
            current = (current or {}).get(range_value)
        found.append((table, hash_value, range_value, copy.deepcopy(current)))
    return found


def _restore(targets: list[tuple[Any, Any, Any, Any]]) -> None:
    for table, hash_value, range_value, item in reversed(targets):
        if table.has_range_key:
            if item is None:
                table.items.get(hash_value, {}).pop(range_value, None)
            else:
                table.items[hash_value][range_value] = item
        elif item is None:
            table.items.pop(hash_value, None)
        else:
            table.items[hash_value] = item


def _transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
    from moto.dynamodb.exceptions import (MockValidationException, MultipleTransactionsException,
                                          TransactionCanceledException)
    from moto.dynamodb.models import DynamoDBBackend

    targets = _targets(self, transact_items) if len(transact_items) <= 100 else []
    token = _IN_TRANSACTION.set(True)
    try:
        PATCHES.original(DynamoDBBackend, "transact_write_items")(self, transact_items)
    except (TransactionCanceledException, MultipleTransactionsException, MockValidationException):
        _restore(targets)  # the failures moto rolls back on
        raise
    finally:
        _IN_TRANSACTION.reset(token)


class _Partition:
    """A table as one Query sees it: ``all_items`` is the queried partition of the base table, or for an index
    Query (``hash_key`` None) every item unsorted; the rest is the table's."""

    def __init__(self, table: Any, hash_key: Any, conditions: list[tuple[str, Any]] | None = None) -> None:
        self._table = table
        self._hash_key = hash_key
        # An index Query's hash key conditions as stored string attributes: a restored item nothing has typed yet
        # whose attribute differs is one moto would drop (see _may_match), so it is not handed over to be typed.
        self._wanted = [(name, {"S": value.value}) for name, value in conditions or () if value.type == "S"]
        # The same, as a state file's line spells them (json.dumps, compact): a line without one of them holds no
        # such top-level attribute, so it is passed over without being parsed.
        self._wanted_text = [json.dumps(name) + ":" + json.dumps(wanted, separators=(",", ":"))
                             for name, wanted in self._wanted]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._table, name)

    def all_items(self) -> list[Any]:
        # moto's Query keeps the items whose hash key matches and sorts them itself: by range key, or for an index
        # by the index's keys then the table's (a total order, so the order of all_items never shows).
        if self._hash_key is None:
            items = unsorted_items(self._table)
        else:
            partition = self._table.items.get(self._hash_key)  # .get: the defaultdict must not grow a partition
            items = [] if partition is None else _partition_items(self._table, partition)
        return [item for item in items if self._may_match(item)] if self._wanted else items

    def _may_match(self, item: Any) -> bool:
        """False only for a restored, untyped item lacking a wanted string attribute or holding another value: moto
        drops such an item (its hash check reads the attribute, which would type the whole item first: the first
        jobs page after a restart typed every item of the table, 1.56 s on 30,006 items). Typed items, and every
        condition on a number or binary (equal values may be spelled differently), are left to moto."""
        text = stored_text(item)
        if text is not None and not all(wanted in text for wanted in self._wanted_text):
            return False
        stored = stored_attributes(item)
        return stored is None or all(stored.get(name) == attribute for name, attribute in self._wanted)


def unsorted_items(table: Any) -> list[Any]:
    """Every item of a moto table, partition by partition: moto's all_items sorts them all with its DynamoType
    comparisons, which a reader that sorts (an index Query) or needs no order (a snapshot) does not need."""
    return [item for partition in list(table.items.values()) for item in _partition_items(table, partition)]


def _partition_items(table: Any, partition: Any) -> list[Any]:
    """With a range key a partition maps range key -> item; without one it is the item (a list: a copy, as writers
    may add to the partition meanwhile)."""
    return list(partition.values()) if table.range_key_attr else [partition]


def _query(self: Any, hash_key: Any, range_comparison: Any, range_objs: Any, limit: Any, exclusive_start_key: Any,
           scan_index_forward: Any, projection_expressions: Any, index_name: str | None = None, *args: Any,
           **kwargs: Any) -> Any:
    """moto's Table.query (its parameters up to index_name named as moto names them), on the partition alone when
    it queries the base table, and without moto's sort of the whole table first when it queries an index (the sort
    took ~1 s of every jobs page on a table of 30,000 items)."""
    from moto.dynamodb.models.table import Table

    if index_name:
        table = _Partition(self, None, kwargs.get("hash_key_conditions"))
    else:
        table = self if hash_key is None else _Partition(self, hash_key)
    return PATCHES.original(Table, "query")(table, hash_key, range_comparison, range_objs, limit, exclusive_start_key,
                                            scan_index_forward, projection_expressions, index_name, *args, **kwargs)


def _item_init(self: Any, hash_key: Any, range_key: Any, attrs: dict[str, Any]) -> None:
    from moto.dynamodb.exceptions import ItemSizeTooLarge
    from moto.dynamodb.models.dynamo_type import DynamoType, LimitedSizeDict
    from moto.dynamodb.models.utilities import bytesize

    self.hash_key = hash_key
    self.range_key = range_key
    self.attrs = LimitedSizeDict()
    for key, value in attrs.items():
        dict.__setitem__(self.attrs, key, DynamoType(value))
    if sum(bytesize(key) + value.size() for key, value in self.attrs.items()) > ITEM_SIZE_LIMIT:
        raise ItemSizeTooLarge


def apply() -> None:
    """Install the patches (idempotent)."""
    from moto.dynamodb import models
    from moto.dynamodb.responses import DynamoHandler

    if not PATCHES:
        PATCHES.replace(DynamoHandler, "serialized", _serialized)
        PATCHES.replace(models.DynamoDBBackend, "transact_write_items", _transact_write_items)
        PATCHES.replace(models, "copy", _COPY)
        from moto.dynamodb.models.table import Table

        PATCHES.replace(Table, "query", _query)
        from moto.dynamodb.models.dynamo_type import Item

        PATCHES.replace(Item, "__init__", _item_init)


def remove() -> None:
    PATCHES.remove()


class StoredText(NamedTuple):
    """An item as a state file's line holds it (the wire's JSON, binary values base64), parsed only when used. The
    key's attributes (name -> (type, value)) were read from the start of the line by their layout (persistence's
    load_stored), so restoring the item parses nothing of it."""

    key: dict[str, tuple[str, str]]
    text: str


def insert_restored(table: Any, items: Iterable[dict[str, Any] | StoredText]) -> None:
    """Puts items read back from the state files (the wire's JSON form, binary values base64) into a moto table,
    keyed as PutItem keys them, their attributes parsed and typed when first used. Each partition's key is typed and
    looked up once: moto's DynamoType hashes and compares by a computed value, four times per item otherwise."""
    made = _restored_item()
    partitions: dict[tuple[str, str], tuple[Any, Any]] = {}
    hash_name, range_name = table.hash_key_attr, table.range_key_attr
    for stored in items:
        if isinstance(stored, StoredText):
            item = made(None, None, stored.text)
            hash_attribute, range_attribute = stored.key[hash_name], stored.key.get(range_name)
        else:
            item = made(None, None, stored)
            hash_attribute = _only(stored[hash_name])
            range_attribute = None if range_name is None else _only(stored[range_name])
        if range_attribute is None:
            item.hash_key = _key(*hash_attribute)
            table.items[item.hash_key] = item
            continue
        found = partitions.get(hash_attribute)
        if found is None:
            hash_key = _key(*hash_attribute)
            found = partitions[hash_attribute] = (hash_key, table.items[hash_key])
        item.hash_key = found[0]
        item.range_key = _key(*range_attribute)
        found[1][item.range_key] = item


def stored_attributes(item: Any) -> dict[str, Any] | None:
    """An item's attributes as they were stored, if it was restored and nothing has used it since (the wire's JSON,
    binary values base64: the caller copies before changing them), else None (ask ``to_json``)."""
    stored = _stored_form(item)
    return None if stored is None else _as_dict(stored)


def stored_text(item: Any) -> str | None:
    """The state file's line an item was restored from, if nothing has used the item since, else None."""
    stored = _stored_form(item)
    return stored if isinstance(stored, str) else None


def _stored_form(item: Any) -> dict[str, Any] | str | None:
    """A restored item's stored attributes or line until something uses it; None for any other item."""
    return item._stored if isinstance(item, _restored_item()) else None


def _only(attribute: dict[str, Any]) -> tuple[str, str]:
    ((kind, value),) = attribute.items()
    return kind, value


def _key(kind: str, value: str) -> Any:
    """A key attribute (S, N or B) as PutItem types it (DynamoType, binary decoded), without its generic walk."""
    dynamo_type = _dynamo_type()
    key = dynamo_type.__new__(dynamo_type)
    key.type, key.value = kind, base64.b64decode(value) if kind == "B" else value
    return key


@functools.cache
def _dynamo_type() -> Any:
    """moto's DynamoType, imported once: an import statement in `_key` cost 2 µs a call, 0.2 s of a start that
    restores 100,000 items."""
    from moto.dynamodb.models.dynamo_type import DynamoType

    return DynamoType


def _parsed(attribute: dict[str, Any]) -> dict[str, Any]:
    """A stored attribute value as moto's request parser hands it to PutItem (binary values decoded), copied."""
    ((kind, value),) = attribute.items()
    if kind == "B":
        return {kind: base64.b64decode(value)}
    if kind == "BS":
        return {kind: [base64.b64decode(v) for v in value]}
    if kind == "M":
        return {kind: {name: _parsed(v) for name, v in value.items()}}
    if kind == "L":
        return {kind: [_parsed(v) for v in value]}
    return {kind: list(value) if isinstance(value, list) else value}


def _as_dict(stored: dict[str, Any] | str | None) -> dict[str, Any]:
    return json.loads(stored) if isinstance(stored, str) else stored or {}


@functools.cache
def _restored_item() -> type[Any]:
    """moto's Item, typed on first use (made once: moto is imported only when the emulator starts)."""
    from moto.dynamodb.models.dynamo_type import DynamoType, Item, LimitedSizeDict

    class RestoredItem(Item):
        # Items are read from many request threads at once: the first reader types the attributes.
        _typing = threading.Lock()

        def __init__(self, hash_key: Any, range_key: Any, stored: dict[str, Any] | str) -> None:  # no super()
            self.hash_key = hash_key
            self.range_key = range_key
            self._stored: dict[str, Any] | str | None = stored  # a dict, or its line of a state file
            self._typed: Any = None

        @property
        def attrs(self) -> Any:
            if self._typed is None:
                with self._typing:
                    if self._typed is None:
                        typed = LimitedSizeDict.__new__(LimitedSizeDict)
                        dict.__init__(typed)
                        for name, value in _as_dict(self._stored).items():
                            dict.__setitem__(typed, name, DynamoType(_parsed(value)))
                        self._typed, self._stored = typed, None
            return self._typed

        @attrs.setter
        def attrs(self, value: Any) -> None:
            with self._typing:
                self._typed, self._stored = value, None

        def to_json(self, root_attr_name: str = "Attributes") -> dict[str, Any]:
            stored = self._stored
            if stored is None:
                return super().to_json(root_attr_name)
            # What to_json of the typed item gives: the parsed values (a copy: the caller's to change).
            return {root_attr_name: {name: _parsed(value) for name, value in _as_dict(stored).items()}}

    return RestoredItem
