"""kaos/local/patches_dynamodb.py answers DynamoDB's reads exactly as stock moto does (every attribute type, keys,
counts, pages, headers), only without moto's shape-walking serializer."""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.dynamodb.responses import DynamoHandler

from kaos.local import patches_dynamodb

ITEM = {"pk": {"S": "p"}, "s": {"S": "text é"}, "n": {"N": "-12.50"}, "b": {"B": b"\x00\xffbytes"},
        "t": {"BOOL": True}, "z": {"NULL": True}, "ss": {"SS": ["a", "b"]}, "ns": {"NS": ["1", "2.5"]},
        "bs": {"BS": [b"\x01", b"\x02"]},
        "m": {"M": {"l": {"L": [{"S": "x"}, {"N": "3"}, {"M": {"deep": {"B": b"\x03"}}}]}}}}


@pytest.fixture
def dynamodb() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(
            TableName="t", BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": a, "AttributeType": "S"} for a in ("pk", "sk", "g")],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
            GlobalSecondaryIndexes=[{"IndexName": "gsi1", "Projection": {"ProjectionType": "ALL"}, "KeySchema": [
                {"AttributeName": "g", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}]}])
        for i in range(5):
            client.put_item(TableName="t", Item={**ITEM, "sk": {"S": f"{i:03}"}, "g": {"S": "all"}})
        patches_dynamodb.apply()
        try:
            yield client
        finally:
            patches_dynamodb.remove()


def answers(call: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The call's answer with the patch and on stock moto, without the per-request metadata and the body's length
    and CRC32 (the same JSON, spaced differently: botocore checked the CRC32 against the body it got)."""
    def strip(answer: dict[str, Any]) -> dict[str, Any]:
        headers = {k: v for k, v in answer.pop("ResponseMetadata")["HTTPHeaders"].items()
                   if k not in ("x-amzn-requestid", "date", "content-length", "x-amz-crc32")}
        return {**answer, "headers": headers}

    patched = strip(call())
    with patches_dynamodb.PATCHES.stock(DynamoHandler, "serialized"):
        stock = strip(call())
    return patched, stock


def test_reads_answer_as_stock_moto(dynamodb: Any) -> None:
    key = {"pk": {"S": "p"}, "sk": {"S": "001"}}
    calls: list[Callable[[], dict[str, Any]]] = [
        lambda: dynamodb.get_item(TableName="t", Key=key),
        lambda: dynamodb.get_item(TableName="t", Key={"pk": {"S": "none"}, "sk": {"S": "x"}}),
        lambda: dynamodb.get_item(TableName="t", Key=key, ProjectionExpression="m.l[2], ns",
                                  ReturnConsumedCapacity="TOTAL"),
        lambda: dynamodb.batch_get_item(RequestItems={"t": {"Keys": [key, {"pk": {"S": "p"}, "sk": {"S": "004"}}]}}),
        lambda: dynamodb.query(TableName="t", KeyConditionExpression="pk = :p", Limit=2, ScanIndexForward=False,
                               ExpressionAttributeValues={":p": {"S": "p"}}),
        lambda: dynamodb.query(TableName="t", IndexName="gsi1", KeyConditionExpression="g = :g", Select="COUNT",
                               ExpressionAttributeValues={":g": {"S": "all"}}),
        lambda: dynamodb.scan(TableName="t", FilterExpression="sk > :s",
                              ExpressionAttributeValues={":s": {"S": "002"}}),
    ]
    for call in calls:
        patched, stock = answers(call)
        assert patched == stock
    page = dynamodb.query(TableName="t", KeyConditionExpression="pk = :p", Limit=2,
                          ExpressionAttributeValues={":p": {"S": "p"}})
    assert page["Items"][0]["b"] == {"B": b"\x00\xffbytes"} and page["LastEvaluatedKey"]["sk"] == {"S": "001"}


def test_errors_and_writes_keep_motos_serializer(dynamodb: Any) -> None:
    with pytest.raises(dynamodb.exceptions.ResourceNotFoundException):
        dynamodb.query(TableName="none", KeyConditionExpression="pk = :p", ExpressionAttributeValues={":p": {"S": "p"}})
    same = {**ITEM, "sk": {"S": "001"}, "g": {"S": "all"}}  # as stored: both puts answer the same old item
    patched, stock = answers(lambda: dynamodb.put_item(TableName="t", Item=same, ReturnValues="ALL_OLD"))
    assert patched == stock


def scan_all(dynamodb: Any) -> list[dict[str, Any]]:
    return sorted(dynamodb.scan(TableName="t")["Items"], key=lambda item: (item["pk"]["S"], item["sk"]["S"]))


def transaction_outcome(dynamodb: Any, items: list[dict[str, Any]]) -> tuple[Any, list[dict[str, Any]]]:
    """The cancellation reasons (None when it committed) and the table afterwards."""
    reasons: Any = None
    try:
        dynamodb.transact_write_items(TransactItems=items)
    except dynamodb.exceptions.TransactionCanceledException as exc:
        reasons = exc.response["CancellationReasons"]
    except ClientError as exc:  # one item twice: a ValidationException before anything is written
        reasons = exc.response["Error"]
    return reasons, scan_all(dynamodb)


def test_transactions_commit_and_roll_back_as_stock_moto(dynamodb: Any) -> None:
    from moto.dynamodb import models

    def key(sk: str) -> dict[str, Any]:
        return {"pk": {"S": "p"}, "sk": {"S": sk}}

    put_new = {"Put": {"TableName": "t", "Item": {**key("new"), "v": {"N": "1"}},
                       "ConditionExpression": "attribute_not_exists(pk)"}}
    update = {"Update": {"TableName": "t", "Key": key("001"), "UpdateExpression": "SET n = :n, m.l[0] = :x",
                         "ExpressionAttributeValues": {":n": {"N": "7"}, ":x": {"S": "changed"}}}}
    delete = {"Delete": {"TableName": "t", "Key": key("002")}}
    failing = {"ConditionCheck": {"TableName": "t", "Key": key("003"),
                                  "ConditionExpression": "attribute_not_exists(pk)",
                                  "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}}
    cases = [[put_new, update, delete, failing],  # cancelled by the last: the first three are undone
             [update, {"Put": {"TableName": "t", "Item": {**key("001"), "v": {"N": "2"}}}}],  # one item twice
             [put_new, update, delete]]  # commits
    before = scan_all(dynamodb)
    outcomes = []
    for items in cases:
        outcomes.append(transaction_outcome(dynamodb, items))
    assert outcomes[0][0] is not None and outcomes[0][1] == before  # cancelled, nothing changed
    assert outcomes[1][0]["Code"] == "ValidationException" and outcomes[1][1] == before
    assert outcomes[2][0] is None and outcomes[2][1] != before
    # The two failures on stock moto, from the same starting table, end the same way.
    with patches_dynamodb.PATCHES.stock(models.DynamoDBBackend, "transact_write_items"), \
            patches_dynamodb.PATCHES.stock(models, "copy"):
        dynamodb.transact_write_items(TransactItems=[
            {"Delete": {"TableName": "t", "Key": key("new")}},
            {"Put": {"TableName": "t", "Item": next(i for i in before if i["sk"] == {"S": "001"})}},
            {"Put": {"TableName": "t", "Item": next(i for i in before if i["sk"] == {"S": "002"})}}])
        assert scan_all(dynamodb) == before
        stock = [transaction_outcome(dynamodb, items) for items in cases[:2]]
    assert outcomes[:2] == stock


def test_a_transaction_copies_only_the_items_it_names(dynamodb: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stock moto deep-copies the whole table before each transaction (every attribute of every item); the patch
    copies the one item this transaction names."""
    from moto.dynamodb import models
    from moto.dynamodb.models.dynamo_type import DynamoType

    for i in range(300):
        dynamodb.put_item(TableName="t", Item={**ITEM, "pk": {"S": "bulk"}, "sk": {"S": f"{i:04}"}})
    copies = [0]
    original = DynamoType.__deepcopy__

    def counted(self: Any, memo: Any) -> Any:
        copies[0] += 1
        return original(self, memo)

    monkeypatch.setattr(DynamoType, "__deepcopy__", counted)
    one = [{"Update": {"TableName": "t", "Key": {"pk": {"S": "p"}, "sk": {"S": "001"}},
                       "UpdateExpression": "SET n = :n", "ExpressionAttributeValues": {":n": {"N": "1"}}}}]
    dynamodb.transact_write_items(TransactItems=one)
    patched = copies[0]
    with patches_dynamodb.PATCHES.stock(models.DynamoDBBackend, "transact_write_items"), \
            patches_dynamodb.PATCHES.stock(models, "copy"):
        copies[0] = 0
        dynamodb.transact_write_items(TransactItems=one)
    assert patched < 100 and copies[0] > 3000, (patched, copies[0])


def test_base_table_queries_read_one_partition_and_answer_as_stock_moto(dynamodb: Any,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Stock moto sorts every item of the table for a Query of one partition; the patch gives it that partition
    only, and an index Query the items unsorted (moto sorts the matches by the index's and the table's keys). The
    answers are the same for key conditions, order, pages, filters, projections and counts."""
    from moto.dynamodb.models.table import Table

    for pk in ("a", "q", "z"):  # partitions besides "p", sorting before and after it
        for i in range(4):
            dynamodb.put_item(TableName="t", Item={"pk": {"S": pk}, "sk": {"S": f"{i:03}"}, "n": {"N": str(i)},
                                                   "g": {"S": "all"}})

    def query(**extra: Any) -> Callable[[], dict[str, Any]]:
        return lambda: dynamodb.query(TableName="t", **{"KeyConditionExpression": "pk = :p",
                                                        "ExpressionAttributeValues": {":p": {"S": "p"}}, **extra})

    def index(**extra: Any) -> Callable[[], dict[str, Any]]:
        return lambda: dynamodb.query(TableName="t", IndexName="gsi1", **{
            "KeyConditionExpression": "g = :g", "ExpressionAttributeValues": {":g": {"S": "all"}}, **extra})

    calls = [
        query(),
        query(ScanIndexForward=False, Limit=2),
        query(Limit=2, ExclusiveStartKey={"pk": {"S": "p"}, "sk": {"S": "001"}}),
        query(KeyConditionExpression="pk = :p AND sk BETWEEN :a AND :b",
              ExpressionAttributeValues={":p": {"S": "q"}, ":a": {"S": "001"}, ":b": {"S": "002"}}),
        query(KeyConditionExpression="pk = :p AND begins_with(sk, :s)",
              ExpressionAttributeValues={":p": {"S": "p"}, ":s": {"S": "00"}}, ProjectionExpression="sk, n"),
        query(FilterExpression="n > :n", ExpressionAttributeValues={":p": {"S": "z"}, ":n": {"N": "1"}}),
        query(Select="COUNT", ExpressionAttributeValues={":p": {"S": "a"}}),
        query(ExpressionAttributeValues={":p": {"S": "absent"}}),
        index(),
        index(Limit=3),
        index(ScanIndexForward=False, Limit=4),
        index(Limit=3, ExclusiveStartKey={"g": {"S": "all"}, "sk": {"S": "001"}, "pk": {"S": "p"}}),
        index(KeyConditionExpression="g = :g AND sk BETWEEN :a AND :b", FilterExpression="n > :n",
              ExpressionAttributeValues={":g": {"S": "all"}, ":a": {"S": "001"}, ":b": {"S": "003"}, ":n": {"N": "1"}}),
    ]
    for call in calls:
        patched = call()
        with patches_dynamodb.PATCHES.stock(Table, "query"):
            stock = call()
        for answer in (patched, stock):
            answer.pop("ResponseMetadata")
        assert patched == stock
    # Neither a base-table Query nor an index Query has moto list (and sort) the whole table any more.
    listed: list[str] = []
    original = Table.all_items
    monkeypatch.setattr(Table, "all_items", lambda table: listed.append(table.name) or original(table))
    calls[0]()
    calls[-1]()
    assert listed == []
    with patches_dynamodb.PATCHES.stock(Table, "query"):
        calls[-1]()
    assert listed == ["t"]
    assert dynamodb.query(TableName="t", KeyConditionExpression="pk = :p",
                          ExpressionAttributeValues={":p": {"S": "nowhere"}})["Count"] == 0
    assert len(dynamodb.scan(TableName="t")["Items"]) == 5 + 12  # no partition was created by the lookups


def test_items_are_sized_once_and_kept_or_refused_as_stock_moto(dynamodb: Any,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Stock moto sized every attribute already set before adding each one (O(attributes²) per item); the patch
    sizes an item once. Items are stored the same way, and refused at the same size, by every writing action."""
    from moto.dynamodb.models.dynamo_type import DynamoType, Item

    wide = {"pk": {"S": "w"}, **{f"a{i:02}": {"M": {"k": {"S": "v" * 40}, "n": {"N": str(i)}}} for i in range(30)}}

    def big(sk: str, over: int) -> dict[str, Any]:
        """The item {pk, sk, big} at exactly moto's limit (names and values summed) plus `over` bytes."""
        return {"pk": {"S": "e"}, "sk": {"S": sk}, "big": {"S": "x" * (405_000 - 3 - (2 + len(sk)) - 3 + over)}}

    def writes(sk: str) -> list[tuple[str, Callable[[], Any]]]:
        return [
            ("put", lambda: dynamodb.put_item(TableName="t", Item={**ITEM, **wide, "sk": {"S": sk}})),
            ("batch", lambda: dynamodb.batch_write_item(RequestItems={"t": [{"PutRequest": {"Item": {
                **wide, "sk": {"S": sk + "b"}}}}]})),
            ("transact", lambda: dynamodb.transact_write_items(TransactItems=[{"Put": {"TableName": "t", "Item": {
                **ITEM, "sk": {"S": sk + "t"}}}}])),
            ("at the limit", lambda: dynamodb.put_item(TableName="t", Item=big(sk, 0))),
            ("past it", lambda: dynamodb.put_item(TableName="t", Item=big(sk + "+", 1))),
        ]

    def outcome(call: Callable[[], Any]) -> str:
        try:
            call()
        except ClientError as exc:
            return f"{exc.response['Error']['Code']}: {exc.response['Error']['Message']}"
        return "stored"

    patched = [(name, outcome(call)) for name, call in writes("patched")]
    with patches_dynamodb.PATCHES.stock(Item, "__init__"):
        stock = [(name, outcome(call)) for name, call in writes("stock")]
    assert patched == stock
    assert [o for _, o in patched][-2:] == ["stored", "ValidationException: Item size has exceeded the maximum "
                                                      "allowed size"]
    items = {item["sk"]["S"]: item for item in dynamodb.scan(TableName="t")["Items"]}
    for suffix in ("", "b", "t"):
        assert items[f"patched{suffix}"] == {**items[f"stock{suffix}"], "sk": {"S": f"patched{suffix}"}}

    sized: list[int] = []
    original = DynamoType.size
    monkeypatch.setattr(DynamoType, "size", lambda value: sized.append(1) or original(value))
    dynamodb.put_item(TableName="t", Item={**wide, "sk": {"S": "counted"}})
    patched_walks = len(sized)
    sized.clear()
    with patches_dynamodb.PATCHES.stock(Item, "__init__"):
        dynamodb.put_item(TableName="t", Item={**wide, "sk": {"S": "counted-stock"}})
    assert patched_walks < 200 < len(sized), (patched_walks, len(sized))


def test_a_restored_item_answers_as_the_item_put_item_stored(dynamodb: Any) -> None:
    """An item restored from the state files (persistence: a snapshot holds to_json of each item, binary values
    base64) is keyed, read, filtered, indexed, updated and transacted on exactly as the item PutItem stored, and is
    typed only when something reads its attributes."""
    from moto.dynamodb.models import dynamodb_backends
    from moto.dynamodb.models.dynamo_type import DynamoType
    from moto.dynamodb.models.table import Table

    from kaos.local.persistence import StoredTable, _base64, item_line

    table = dynamodb_backends["123456789012"]["us-east-1"].get_table("t")
    partition = table.items[DynamoType({"S": "p"})]
    original = partition[DynamoType({"S": "001"})]
    stored = json.loads(json.dumps(original.to_json()["Attributes"], default=_base64))
    # Both forms a start restores: an item parsed from the journal, and a snapshot's line left unparsed.
    lines = StoredTable()
    lines.read([item_line({**stored, "sk": {"S": sk}}, ["pk", "sk"]) for sk in ("t1", "t2")]
               + [item_line({**stored, "sk": {"S": "t3"}, "g": {"S": "all but"}}, ["pk", "sk"])], ["pk", "sk"])
    assert all(isinstance(entry, patches_dynamodb.StoredText) for entry in lines.entries.values())
    patches_dynamodb.insert_restored(table, [{**stored, "sk": {"S": sk}} for sk in ("r1", "r2", "r3")]
                                     + [{**stored, "sk": {"S": "r4"}, "g": {"S": "elsewhere"}},
                                        *lines.entries.values()])
    elsewhere, elsewhere_text = partition[DynamoType({"S": "r4"})], partition[DynamoType({"S": "t3"})]
    restored, restored_text = partition[DynamoType({"S": "r1"})], partition[DynamoType({"S": "t1"})]
    for sk, item in (("r1", restored), ("t1", restored_text)):
        assert item.to_json() == {"Attributes": {**original.to_json()["Attributes"], "sk": {"S": sk}}}
        assert patches_dynamodb.stored_attributes(item) == {**stored, "sk": {"S": sk}}  # what a snapshot reads
        item.to_json()["Attributes"]["m"]["M"]["l"]["L"].clear()  # a copy: the caller's to change
    assert patches_dynamodb.stored_attributes(original) is None
    assert patches_dynamodb.stored_text(restored_text) == lines.entries['{"pk":{"S":"p"},"sk":{"S":"t1"}}'].text

    by_index = dynamodb.query(TableName="t", IndexName="gsi1", KeyConditionExpression="g = :g",
                              ExpressionAttributeValues={":g": {"S": "all"}})
    assert [found["sk"]["S"] for found in by_index["Items"]] == ["000", "001", "002", "003", "004", "r1", "r2", "r3",
                                                                 "t1", "t2"]
    # Not in the index's partition: never typed (the line is not even parsed; its "all but" holds "all").
    assert patches_dynamodb.stored_attributes(elsewhere) is not None
    assert patches_dynamodb.stored_text(elsewhere_text) is not None
    with patches_dynamodb.PATCHES.stock(Table, "query"):
        assert dynamodb.query(TableName="t", IndexName="gsi1", KeyConditionExpression="g = :g",
                              ExpressionAttributeValues={":g": {"S": "all"}})["Items"] == by_index["Items"]
    # stock moto types every item of the table
    assert patches_dynamodb.stored_attributes(elsewhere) is None
    assert patches_dynamodb.stored_text(elsewhere_text) is None

    def item(sk: str) -> dict[str, Any]:
        found = dynamodb.get_item(TableName="t", Key={"pk": {"S": "p"}, "sk": {"S": sk}})["Item"]
        return {name: value for name, value in found.items() if name != "sk"}

    assert item("r1") == item("001") and patches_dynamodb.stored_attributes(restored) is None  # typed by the read
    assert restored.to_json() == {"Attributes": {**original.to_json()["Attributes"], "sk": {"S": "r1"}}}
    assert restored.attrs == original.attrs | {"sk": DynamoType({"S": "r1"})}
    filtered = dynamodb.query(TableName="t", KeyConditionExpression="pk = :p",
                              FilterExpression="m.l[1] = :three AND n < :n AND contains(ss, :a)",
                              ExpressionAttributeValues={":p": {"S": "p"}, ":three": {"N": "3"}, ":n": {"N": "0"},
                                                         ":a": {"S": "a"}})
    assert [found["sk"]["S"] for found in filtered["Items"]] == ["000", "001", "002", "003", "004", "r1", "r2", "r3",
                                                                 "r4", "t1", "t2", "t3"]
    assert item("t2") == item("001")
    for sk in ("r2", "002", "t2"):
        dynamodb.update_item(TableName="t", Key={"pk": {"S": "p"}, "sk": {"S": sk}},
                             UpdateExpression="SET n = n + :one, m.l[2].deep = :b",
                             ExpressionAttributeValues={":one": {"N": "1"}, ":b": {"B": b"\x04"}})
    assert item("r2") == item("002") == item("t2") != item("001")
    with pytest.raises(ClientError, match="TransactionCanceledException"):
        dynamodb.transact_write_items(TransactItems=[
            {"Put": {"TableName": "t", "Item": {"pk": {"S": "p"}, "sk": {"S": "r3"}},
                     "ConditionExpression": "attribute_not_exists(pk)"}}])
    assert item("r3") == item("001")
