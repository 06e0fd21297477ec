"""`kaos cloud prices refresh`: the SageMaker instance prices of chalicelib/prices.json, re-read from the AWS Price
List Query API (`pricing:GetProducts`) with the user's credentials.

Only the instance-hour prices are refreshed: they are what a job's cost is made of. The serverless unit prices
(Lambda, Step Functions, Fargate, DynamoDB, S3) change rarely and stay as transcribed from their pricing pages.

SageMaker's products are found by region and instance, and told apart by their usage type, which ends in
`Train:<instance>` for training and `Host:<instance>` for real-time hosting (other usage types of the same instance,
such as notebooks or processing, are skipped). A product's on-demand price is its price dimension in `Hrs`.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from kaos.client import ApiError, botocore_session

PRICES_FILE = Path(__file__).resolve().parents[1] / "chalicelib" / "prices.json"
# The Price List Query API is served from us-east-1 (and ap-south-1, eu-central-1), whatever region it prices.
API_REGION = "us-east-1"
SERVICE_CODE = "AmazonSageMaker"
# chalicelib/prices.json table -> the usage type's component.
TABLES = {"training_hour": "Train", "hosting_hour": "Host"}
_USAGE = re.compile(r"(?:^|-)(Train|Host):(ml\.[a-z0-9.]+)$")


@dataclass(frozen=True)
class Change:
    table: str
    instance_type: str
    old: float | None
    new: float


class PriceList:
    """The AWS Price List Query API, narrowed to SageMaker's on-demand instance-hour prices."""

    def __init__(self, pricing: Any) -> None:
        self._pricing = pricing

    def hourly(self, region: str, instance_type: str) -> dict[str, float]:
        """{"Train": USD per hour, "Host": USD per hour} of the instance type, as far as the list has them."""
        found: dict[str, float] = {}
        for product in self._products(region, instance_type):
            usage = _USAGE.search(str(product.get("product", {}).get("attributes", {}).get("usagetype", "")))
            if usage is None or usage[2] != instance_type:
                continue
            price = _on_demand_hourly(product)
            if price is not None:
                found[usage[1]] = price
        return found

    def _products(self, region: str, instance_type: str) -> Iterator[dict[str, Any]]:
        pages = self._pricing.get_paginator("get_products").paginate(
            ServiceCode=SERVICE_CODE, FormatVersion="aws_v1",
            Filters=[{"Type": "TERM_MATCH", "Field": "regionCode", "Value": region},
                     {"Type": "TERM_MATCH", "Field": "instanceName", "Value": instance_type}])
        for page in pages:
            for entry in page.get("PriceList", []):
                yield json.loads(entry) if isinstance(entry, str) else entry


def _on_demand_hourly(product: dict[str, Any]) -> float | None:
    for term in product.get("terms", {}).get("OnDemand", {}).values():
        for dimension in term.get("priceDimensions", {}).values():
            usd = dimension.get("pricePerUnit", {}).get("USD")
            if dimension.get("unit") == "Hrs" and usd is not None and float(usd) > 0:
                return float(usd)
    return None


def refresh(price_list: PriceList, path: Path = PRICES_FILE, today: date | None = None) -> list[Change]:
    """Rewrites the instance prices of the table at `path` that the Price List has (and the table's date);
    instance types it does not list keep their price. Returns what changed."""
    document = json.loads(path.read_text())
    region = str(document["region"])
    wanted = sorted({t for table in TABLES for t in document[table]})
    changes: list[Change] = []
    for instance_type in wanted:
        hourly = price_list.hourly(region, instance_type)
        for table, component in TABLES.items():
            new = hourly.get(component)
            old = document[table].get(instance_type)
            if new is not None and instance_type in document[table] and new != old:
                document[table][instance_type] = new
                changes.append(Change(table, instance_type, old, new))
    document["date"] = (today or date.today()).isoformat()
    path.write_text(json.dumps(document, indent=2) + "\n")
    return changes


def refresh_with(profile: str, path: Path = PRICES_FILE) -> list[Change]:
    """`refresh` signed with `profile` (the Price List needs an AWS account; the offline stack has none); a missing
    profile, missing credentials or a refused call is one message."""
    try:
        return refresh(PriceList(botocore_session(profile).create_client("pricing", region_name=API_REGION)), path)
    except (BotoCoreError, ClientError) as exc:
        raise ApiError(0, "PriceList", f"the AWS Price List API with profile {profile!r}: {exc}") from None
