"""kaos/local/patches_dynamodb.py answers DynamoDB's reads exactly as stock moto does (every attribute type, keys,
counts, pages, headers), only without moto's shape-walking serializer."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
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
