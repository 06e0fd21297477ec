"""The pynamodb models own the single-table schema (CDK creates the same keys: pk/sk and the gsi1 index).

Key layout (one table keeps every workspace operation a single-partition Query):
  WS#<ws>            META                    WorkspaceItem
  WS#<ws>            MEMBER#<user>           MemberItem      gsi1: USER#<user> / WS#<ws>
  WS#<ws>            SNAP#<snapshot id>      SnapshotItem
  WS#<ws>            LATEST#<kind>           LatestItem      (mutable pointer to the newest snapshot of a kind)
  WS#<ws>            LATEST#inputs           LatestInputsItem (the latest submission's code, data, params)
  WS#<ws>            JOB#<job id>            JobItem         gsi1: JOBS#<ws> / <created_at>#<job id>
  WS#<ws>            GRID#<grid id>          GridItem
  GRID#<ws>#<grid>   POINT#<index>           GridPointItem   (one per grid point: its job id)
  WS#<ws>            DERIVED#<key below ws/<ws>/>   DerivedItem (SHA-256 and size of an object kaos derived)
  WS#<ws>            BLOB#<sha256>           BlobItem        (a verified blob of the workspace: its size, and its pack)
  WS#<ws>            AUTORETRAIN#CONFIG      AutoRetrainItem (auto-retrain on or off)
  WS#<ws>            AUTORETRAIN#OPEN        OpenBatchItem   (pointer to the newest retrain batch, open or not)
  WS#<ws>            PENDING#<batch>         BatchItem       (a retrain batch: OPEN|CLOSED|DONE|FAILED)
  WS#<ws>            PENDINGFILE#<batch>#<file id>  PendingFileItem (a file of the batch)
  WS#<ws>            INCOMING#<file id>      IncomingFileItem (dedupe row: which batch took the file)
  WS#<ws>            ENDPOINT#<name>         EndpointItem    (a serving endpoint: status, settings, model, deployments)
  WS#<ws>            MODELGROUP#<group>      ModelGroupItem  (a registry group: latest version number, aliases)
  WS#<ws>            MODELVER#<group>#<6 digits>  ModelVersionItem (one registered version, approval status)
  WS#<ws>            MODELJOB#<group>#<job id>    ModelJobItem (dedupe row: which version a job registered as)
  NODE#<ws>#<node>   META                    NodeItem        gsi1: PROV#<ws> / <node>
  NODE#<ws>#<node>   OUT|IN#<rel>#<other>    EdgeItem        gsi1: PROV#<ws> / <node>#<sk>
Provenance edges are stored once per direction so each hop either way is one Query, and no item grows
with the number of edges (DynamoDB's 400 KB item limit).
"""
from __future__ import annotations

from typing import Any

from pynamodb.attributes import (
    BooleanAttribute,
    JSONAttribute,
    NumberAttribute,
    UnicodeAttribute,
    VersionAttribute,
)
from pynamodb.indexes import AllProjection, GlobalSecondaryIndex
from pynamodb.connection.table import TableConnection
from pynamodb.models import Model

from chalicelib import config


class _TableFromEnv(type):
    """Reads the table name at call time, so importing this module reads no environment."""

    @property
    def table_name(cls) -> str:
        return config.settings().table


class Gsi1(GlobalSecondaryIndex["_Item"]):  # type: ignore[no-untyped-call]  # pynamodb leaves this untyped
    class Meta:
        index_name = "gsi1"
        projection = AllProjection()

    gsi1pk = UnicodeAttribute(hash_key=True)
    gsi1sk = UnicodeAttribute(range_key=True)


class _Item(Model):
    class Meta(metaclass=_TableFromEnv):
        pass

    pk = UnicodeAttribute(hash_key=True)
    sk = UnicodeAttribute(range_key=True)
    gsi1pk = UnicodeAttribute(null=True)
    gsi1sk = UnicodeAttribute(null=True)
    gsi1 = Gsi1()

    @classmethod
    def _get_connection(cls) -> TableConnection:
        # pynamodb keeps one connection per Model subclass, each with a botocore session of its own, and a new
        # session re-parses botocore's endpoint and DynamoDB model JSON (~0.1-0.2 CPU-s per client): with 24 item
        # classes that was seconds of every cold start. Every item class is the same table with the same keys,
        # so they share one connection (botocore clients are thread-safe).
        shared = _Item.__dict__.get("_connection")
        if shared is None or shared.table_name != cls.Meta.table_name:
            shared = super(_Item, _Item)._get_connection()
        return shared


def ws_key(workspace: str) -> str:
    return f"WS#{workspace}"


def node_key(workspace: str, node: str) -> str:
    return f"NODE#{workspace}#{node}"


class WorkspaceItem(_Item):
    owner = UnicodeAttribute()
    created_at = UnicodeAttribute()  # also the workspace's incarnation (in every job's fingerprint)
    # Set when `kaos workspace kill` starts: from then on the row is a tombstone that keeps the name taken, and
    # every write on behalf of this incarnation is refused, until the kill has stopped and swept everything.
    killed_at = UnicodeAttribute(null=True)
    # Training and batch containers the kill stopped and still waits for ("sagemaker:<name>", "batch:<id>").
    kill_pending: JSONAttribute = JSONAttribute(null=True)
    # How many members the workspace has: adding one is a transaction conditioned on it (limits.MAX_MEMBERS).
    # Absent on rows written before it existed (chalicelib.repositories.workspaces starts it from a count).
    member_count = NumberAttribute(null=True)


class MemberItem(_Item):
    user = UnicodeAttribute()
    role = UnicodeAttribute()
    added_at = UnicodeAttribute()
    # Immutable facts of the workspace, copied so listing a user's workspaces is one index Query.
    owner = UnicodeAttribute(null=True)
    workspace_created_at = UnicodeAttribute(null=True)


class SnapshotItem(_Item):
    snapshot_id = UnicodeAttribute()
    kind = UnicodeAttribute()
    file_count = NumberAttribute()
    total_bytes = NumberAttribute()
    manifest_key = UnicodeAttribute()
    created_at = UnicodeAttribute()
    created_by = UnicodeAttribute()


class LatestItem(_Item):
    snapshot_id = UnicodeAttribute()
    updated_at = UnicodeAttribute()


class LatestInputsItem(_Item):
    """The inputs of the workspace's latest submission: what a deploy that omits an input reuses."""

    code = UnicodeAttribute()
    data: JSONAttribute = JSONAttribute()
    params: JSONAttribute = JSONAttribute()
    updated_at = UnicodeAttribute()


class JobItem(_Item):
    job_id = UnicodeAttribute()
    fingerprint = UnicodeAttribute()
    kind = UnicodeAttribute()
    status = UnicodeAttribute()
    spec: JSONAttribute = JSONAttribute()
    created_at = UnicodeAttribute()
    created_by = UnicodeAttribute()
    updated_at = UnicodeAttribute()
    execution_arn = UnicodeAttribute(null=True)
    training_job_name = UnicodeAttribute(null=True)
    started_at = UnicodeAttribute(null=True)
    ended_at = UnicodeAttribute(null=True)
    metrics: JSONAttribute = JSONAttribute(null=True)
    failure_reason = UnicodeAttribute(null=True)
    model_uri = UnicodeAttribute(null=True)
    # The params' values (the snapshot `spec.params` names holds them) and the summary of each metric logged over
    # time (chalicelib/metrics.py): a runs table shows both for hundreds of jobs without a read per job.
    hyperparameters: JSONAttribute = JSONAttribute(null=True)
    metric_series: JSONAttribute = JSONAttribute(null=True)
    history: JSONAttribute = JSONAttribute(null=True)
    attempt = NumberAttribute(default=1)
    attempts: JSONAttribute = JSONAttribute(null=True)
    sources: JSONAttribute = JSONAttribute(null=True)
    # What the job consumed as AWS bills it (chalicelib/cost.py): billable seconds, task Lambda durations.
    usage: JSONAttribute = JSONAttribute(null=True)
    version = VersionAttribute()


class NodeItem(_Item):
    node_type = UnicodeAttribute()
    attrs: JSONAttribute = JSONAttribute()
    created_at = UnicodeAttribute()


class EdgeItem(_Item):
    rel = UnicodeAttribute()
    direction = UnicodeAttribute()
    other = UnicodeAttribute()
    created_at = UnicodeAttribute()


def item_dict(item: Any, *names: str) -> dict[str, Any]:
    return {name: getattr(item, name) for name in names}


class GridItem(_Item):
    grid_id = UnicodeAttribute()
    fingerprint = UnicodeAttribute()
    status = UnicodeAttribute()
    spec: JSONAttribute = JSONAttribute()
    points = NumberAttribute()
    parallelism = NumberAttribute()
    points_key = UnicodeAttribute()
    execution_arn = UnicodeAttribute()
    sources: JSONAttribute = JSONAttribute(null=True)
    created_at = UnicodeAttribute()
    created_by = UnicodeAttribute()
    updated_at = UnicodeAttribute()
    version = VersionAttribute()


class GridPointItem(_Item):
    index = NumberAttribute()
    job_id = UnicodeAttribute()
    params: JSONAttribute = JSONAttribute()


def grid_key(workspace: str, grid_id: str) -> str:
    return f"GRID#{workspace}#{grid_id}"


class DerivedItem(_Item):
    """The SHA-256 and size of an object kaos derived and will reuse (a code snapshot's sourcedir.tar.gz, a batch
    datum's cache entry, a per-file job's plan), written by the Lambda that wrote the object. It lives in DynamoDB
    because no job role may write the table: whoever can overwrite the object cannot rewrite its record, so a reuse
    that compares the two notices. `workspace kill` deletes it with the workspace's other rows."""

    sha256 = UnicodeAttribute()
    size = NumberAttribute()
    written_at = UnicodeAttribute()


class BlobItem(_Item):
    """A blob the workspace holds, written by the API once its bytes were seen to hash to its name: S3's stored
    SHA-256 of `ws/<ws>/blobs/<sha256>` (a loose blob), or the blob's bytes at `offset` of the pack
    `ws/<ws>/packs/<pack>` hashed when the pack was taken. A snapshot commit reads these (BatchGetItem, 100 per
    request) instead of asking S3 about every file, and readers of blobs read where they place them. It lives in the
    workspace's partition, so one workspace's index never vouches for another's blob, and `workspace kill` deletes
    it with the workspace's other rows (blobs and packs are deleted only then)."""

    size = NumberAttribute()
    verified_at = UnicodeAttribute()
    pack = UnicodeAttribute(null=True)
    offset = NumberAttribute(null=True)


# --- auto-retrain (chalicelib/triggers.py) ---------------------------------------------------------------------
class AutoRetrainItem(_Item):
    enabled = BooleanAttribute()
    updated_by = UnicodeAttribute()
    updated_at = UnicodeAttribute()


class OpenBatchItem(_Item):
    batch_id = UnicodeAttribute()


class BatchItem(_Item):
    batch_id = UnicodeAttribute()
    status = UnicodeAttribute()
    opened_at = UnicodeAttribute()
    previous = UnicodeAttribute(null=True)
    started = BooleanAttribute(default=False)
    closed_at = UnicodeAttribute(null=True)
    ended_at = UnicodeAttribute(null=True)
    base: JSONAttribute = JSONAttribute(null=True)
    snapshot = UnicodeAttribute(null=True)
    previous_snapshot = UnicodeAttribute(null=True)
    job = UnicodeAttribute(null=True)
    files = NumberAttribute(default=0)
    skipped: JSONAttribute = JSONAttribute(null=True)
    reason = UnicodeAttribute(null=True)
    # When the latest file joined (set in the join's transaction): ProcessBatch waits for a quiet window.
    last_joined_at = UnicodeAttribute(null=True)
    # Its wait for the batch ahead outlasted the state machine's retries: the batch ahead processes it when done.
    stalled = BooleanAttribute(null=True)


class PendingFileItem(_Item):
    key = UnicodeAttribute()
    path = UnicodeAttribute()
    version = UnicodeAttribute(null=True)
    etag = UnicodeAttribute(null=True)
    sequencer = UnicodeAttribute(null=True)
    received_at = UnicodeAttribute()


class IncomingFileItem(_Item):
    key = UnicodeAttribute()
    batch_id = UnicodeAttribute()
    received_at = UnicodeAttribute()


# --- serving (chalicelib/serving.py) and the model registry (chalicelib/registry.py) ------------------------------
class EndpointItem(_Item):
    name = UnicodeAttribute()
    status = UnicodeAttribute()
    sagemaker_endpoint = UnicodeAttribute()
    kind = UnicodeAttribute()
    settings: JSONAttribute = JSONAttribute()
    model: JSONAttribute = JSONAttribute()
    # Newest first, at most serving.MAX_DEPLOYMENTS entries: the item never approaches the 400 KB limit.
    deployments: JSONAttribute = JSONAttribute()
    failure_reason = UnicodeAttribute(null=True)
    created_at = UnicodeAttribute()
    created_by = UnicodeAttribute()
    updated_at = UnicodeAttribute()
    version = VersionAttribute()


class ModelGroupItem(_Item):
    group = UnicodeAttribute()
    latest_version = NumberAttribute()
    aliases: JSONAttribute = JSONAttribute()
    created_at = UnicodeAttribute()
    version = VersionAttribute()


class ModelVersionItem(_Item):
    group = UnicodeAttribute()
    number = NumberAttribute()
    job_id = UnicodeAttribute()
    status = UnicodeAttribute()
    model_data = UnicodeAttribute()
    model_sha256 = UnicodeAttribute()
    image = UnicodeAttribute()
    framework = UnicodeAttribute()
    code = UnicodeAttribute()
    created_at = UnicodeAttribute()
    updated_at = UnicodeAttribute()
    # The SageMaker Model Package that carries the version's approval status on AWS (set once it is created).
    package_arn = UnicodeAttribute(null=True)


class ModelJobItem(_Item):
    number = NumberAttribute()
